//! Artifact fetching: turns a Model's `storageUri` into a local path.
//!
//! Local mode supports `file://` URIs and plain paths (absolute, or relative to the
//! agent's working directory). A URI may name the artifact file or a folder holding it.

use std::path::PathBuf;

/// Why an artifact cannot be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("storageUri {uri:?}: scheme {scheme:?} is not supported in local mode (use file:// or a local path)")]
    UnsupportedScheme { uri: String, scheme: String },
    #[error("storageUri {uri:?}: {path} does not exist")]
    Missing { uri: String, path: String },
}

/// Resolves a storage URI to an existing local path.
pub fn resolve(uri: &str) -> Result<PathBuf, ArtifactError> {
    let path = if let Some(rest) = uri.strip_prefix("file://") {
        // file:///abs/path, file://relative/path (coscale: relative to the working dir)
        PathBuf::from(rest)
    } else if let Some((scheme, _)) = uri.split_once("://") {
        return Err(ArtifactError::UnsupportedScheme {
            uri: uri.to_owned(),
            scheme: scheme.to_owned(),
        });
    } else {
        PathBuf::from(uri)
    };
    if path.exists() {
        Ok(path)
    } else {
        Err(ArtifactError::Missing {
            uri: uri.to_owned(),
            path: path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_uris_and_paths_resolve_when_they_exist() {
        let dir = std::env::temp_dir();
        let d = dir.display().to_string();
        assert_eq!(resolve(&format!("file://{d}")).unwrap(), dir);
        assert_eq!(resolve(&d).unwrap(), dir);
    }

    #[test]
    fn remote_schemes_are_refused_with_the_scheme_named() {
        let e = resolve("gs://seldon-models/iris").unwrap_err();
        assert!(e.to_string().contains("\"gs\""), "{e}");
    }

    #[test]
    fn missing_paths_are_reported() {
        let e = resolve("file:///nonexistent/coscale/model.onnx").unwrap_err();
        assert!(matches!(e, ArtifactError::Missing { .. }), "{e}");
    }
}
