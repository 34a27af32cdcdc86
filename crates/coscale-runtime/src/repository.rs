//! The model repository: a folder whose sub-folders (or `<name>.onnx` files) are models that
//! `load` can bring into the [`Engine`]. Shared by the REST and gRPC repository APIs.

use std::path::Path;

use crate::engine::{validate_model_name, Engine, IndexEntry, ModelMetadata, ModelState};
use crate::error::RuntimeError;

/// Loads model `name` from `<repository>/<name>` (a folder) or `<repository>/<name>.onnx`.
/// NotFound when neither exists. Blocking.
pub fn load_from_repository(
    engine: &Engine,
    repository: &Path,
    name: &str,
) -> Result<ModelMetadata, RuntimeError> {
    validate_model_name(name)?;
    let folder = repository.join(name);
    let file = repository.join(format!("{name}.onnx"));
    let artifact = if folder.exists() {
        folder
    } else if file.is_file() {
        file
    } else {
        return Err(RuntimeError::NotFound(name.to_string()));
    };
    engine.load(name, &artifact)
}

/// The engine's models plus every model in the repository that was never loaded (listed as
/// UNAVAILABLE, reason "not loaded"), sorted by name; only READY ones when `ready_only`.
pub fn repository_index(engine: &Engine, repository: &Path, ready_only: bool) -> Vec<IndexEntry> {
    let mut entries = engine.index();
    if let Ok(dir) = std::fs::read_dir(repository) {
        for entry in dir.flatten() {
            let path = entry.path();
            let name = if path.is_dir() {
                entry.file_name().to_string_lossy().into_owned()
            } else if path.extension().is_some_and(|x| x == "onnx") {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                continue;
            };
            if validate_model_name(&name).is_ok() && !entries.iter().any(|e| e.name == name) {
                entries.push(IndexEntry {
                    name,
                    version: None,
                    state: ModelState::Unavailable,
                    reason: "not loaded".into(),
                });
            }
        }
    }
    entries.retain(|e| !ready_only || e.state == ModelState::Ready);
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}
