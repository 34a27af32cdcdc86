//! From text to resources: split YAML/JSON into documents, dispatch each on
//! (`apiVersion`, `kind`), deserialize it into the raw CRD mirrors collecting every
//! shape error with its field path, then validate it into typed settings.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::raw::{RawModelSpec, RawObject, RawServerConfigSpec, RawServerSpec};
use super::{suggest, validate, ManifestError, ManifestErrors, Resource, SELDON_API_VERSION};

/// A problem inside one document, before the source and document number are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// How many shape errors one document may report before we stop looking.
const MAX_ERRORS_PER_DOCUMENT: usize = 64;

/// Parses every manifest in `text` (multi-document YAML separated by `---`, or JSON: one
/// object, a JSON array of objects, or a `kind: List` with `items`) and validates it.
///
/// `source` names the text in messages (usually the file name). Either every document is
/// valid and all resources come back in file order, or the result lists every problem in
/// every document and no resource at all.
pub fn parse_manifests(source: &str, text: &str) -> Result<Vec<Resource>, ManifestErrors> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for piece in split_documents(text) {
        match piece {
            Piece::Document { number, value } => {
                let mut found = Vec::new();
                parse_document(&value, "", &mut resources, &mut found);
                errors.extend(found.into_iter().map(|(object, e)| ManifestError {
                    source: source.to_owned(),
                    document: number,
                    object,
                    path: e.path,
                    message: e.message,
                }));
            }
            Piece::Unreadable { number, message } => errors.push(ManifestError {
                source: source.to_owned(),
                document: number,
                object: None,
                path: String::new(),
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ManifestErrors(errors))
    }
}

enum Piece {
    Document { number: usize, value: Value },
    Unreadable { number: usize, message: String },
}

/// JSON when the text starts with `{` or `[`, else a YAML stream. Empty YAML documents
/// are skipped but still counted, so numbers match positions in the file.
fn split_documents(text: &str) -> Vec<Piece> {
    let start = text.trim_start_matches('\u{feff}').trim_start();
    if start.starts_with('{') || start.starts_with('[') {
        return match serde_json::from_str::<Value>(start) {
            Ok(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, value)| Piece::Document {
                    number: i + 1,
                    value,
                })
                .collect(),
            Ok(value) => vec![Piece::Document { number: 1, value }],
            Err(e) => vec![Piece::Unreadable {
                number: 1,
                message: format!("invalid JSON: {e}"),
            }],
        };
    }
    let mut pieces = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => {}
            // Well-formed YAML that JSON cannot hold (e.g. a non-string key): this
            // document is bad, the following ones are still read.
            Ok(yaml) => pieces.push(match serde_json::to_value(&yaml) {
                Ok(value) => Piece::Document { number, value },
                Err(e) => Piece::Unreadable {
                    number,
                    message: format!("unsupported YAML: {e}"),
                },
            }),
            // A syntax error ends the stream: serde_yaml cannot resynchronise after it.
            Err(e) => {
                pieces.push(Piece::Unreadable {
                    number,
                    message: format!("invalid YAML: {e}"),
                });
                break;
            }
        }
    }
    pieces
}

/// Parses one document (or, for a `List`, each of its items) into `resources`, adding
/// problems to `errors` together with the object they belong to.
fn parse_document(
    value: &Value,
    prefix: &str,
    resources: &mut Vec<Resource>,
    errors: &mut Vec<(Option<String>, FieldError)>,
) {
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        match value.get("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let item_prefix = join_path(prefix, &format!("items[{i}]"));
                    parse_document(item, &item_prefix, resources, errors);
                }
            }
            _ => errors.push((
                Some("List".to_owned()),
                FieldError::new(join_path(prefix, "items"), "a List needs an `items` list"),
            )),
        }
        return;
    }
    match parse_object(value) {
        Ok(resource) => resources.push(resource),
        Err(found) => {
            let object = describe(value);
            errors.extend(found.into_iter().map(|e| {
                let path = join_path(prefix, &e.path);
                (object.clone(), FieldError::new(path, e.message))
            }));
        }
    }
}

/// An `autoscaling/v2` HorizontalPodAutoscaler: upstream defaults and validation
/// (`crate::hpa::api`), then coscale's rule that it scales a Model or a Server.
fn hpa(value: &Value) -> Result<Resource, Vec<FieldError>> {
    use crate::hpa::HpaError;
    let yaml = serde_yaml::to_value(value).map_err(|e| {
        vec![FieldError::new(
            "",
            format!("not representable as YAML: {e}"),
        )]
    })?;
    let hpa = crate::hpa::api::hpa_from_value(yaml).map_err(|e| match e {
        HpaError::Syntax(m) => vec![FieldError::new("", m)],
        HpaError::Field { path, message } => vec![FieldError::new(path, message)],
        HpaError::Invalid(list) => list
            .into_iter()
            .map(|f| FieldError::new(f.path, f.message))
            .collect(),
    })?;
    let mut errors = Vec::new();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError::new("metadata.name", "name is required"));
    }
    let target = &hpa.spec.scale_target_ref;
    if !matches!(target.kind.as_str(), "Model" | "Server") {
        errors.push(FieldError::new(
            "spec.scaleTargetRef.kind",
            format!(
                "coscale scales a Model or a Server, found {:?}",
                target.kind
            ),
        ));
    }
    if let Some(api) = target
        .api_version
        .as_deref()
        .filter(|a| *a != SELDON_API_VERSION)
    {
        errors.push(FieldError::new(
            "spec.scaleTargetRef.apiVersion",
            format!("must be {SELDON_API_VERSION:?}, found {api:?}"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let string_map = |key: &str| -> std::collections::BTreeMap<String, String> {
        hpa.metadata
            .other
            .get(key)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let meta = super::Meta {
        name,
        namespace: hpa.metadata.namespace.clone(),
        labels: string_map("labels"),
        annotations: string_map("annotations"),
        generation: None,
    };
    Ok(Resource::Hpa(Box::new(super::Hpa { meta, hpa })))
}

/// The one place that decides what each (`apiVersion`, `kind`) becomes.
fn parse_object(value: &Value) -> Result<Resource, Vec<FieldError>> {
    let Some(map) = value.as_object() else {
        return Err(vec![FieldError::new(
            "",
            format!(
                "expected a mapping with apiVersion, kind, metadata and spec, found {}",
                type_name(value)
            ),
        )]);
    };
    let api_version = required_string(map, "apiVersion");
    let kind = required_string(map, "kind");
    let (api_version, kind) = match (api_version, kind) {
        (Ok(a), Ok(k)) => (a, k),
        (a, k) => return Err(a.err().into_iter().chain(k.err()).collect()),
    };
    match (api_version, kind) {
        (SELDON_API_VERSION, "Model") => {
            typed::<RawModelSpec, _>(value, validate::model).map(Resource::Model)
        }
        (SELDON_API_VERSION, "Server") => {
            typed::<RawServerSpec, _>(value, validate::server).map(Resource::Server)
        }
        (SELDON_API_VERSION, "ServerConfig") => {
            typed::<RawServerConfigSpec, _>(value, validate::server_config)
                .map(Resource::ServerConfig)
        }
        (SELDON_API_VERSION, "Pipeline" | "Experiment" | "SeldonRuntime" | "SeldonConfig") => {
            Err(vec![FieldError::new(
                "kind",
                format!("{kind} is not supported by coscale yet (coscale reads Model, Server and ServerConfig)"),
            )])
        }
        (crate::hpa::api::API_VERSION, crate::hpa::api::KIND) => hpa(value),
        (
            _,
            "Model" | "Server" | "ServerConfig" | "Pipeline" | "Experiment" | "SeldonRuntime"
            | "SeldonConfig",
        ) => Err(vec![FieldError::new(
            "apiVersion",
            format!("apiVersion of a {kind} must be {SELDON_API_VERSION:?}, found {api_version:?}"),
        )]),
        (_, "HorizontalPodAutoscaler") => Err(vec![FieldError::new(
            "apiVersion",
            format!(
                "apiVersion of a HorizontalPodAutoscaler must be \"autoscaling/v2\", found {api_version:?}"
            ),
        )]),
        _ => Err(vec![FieldError::new(
            "kind",
            format!(
                "unknown kind {kind:?} (apiVersion {api_version:?}): coscale reads Model, Server and ServerConfig of {SELDON_API_VERSION}"
            ),
        )]),
    }
}

fn required_string<'a>(
    map: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a str, FieldError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(FieldError::new(key, format!("{key} is required")))
        }
        Some(other) => Err(FieldError::new(
            key,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

/// Deserializes `value` as `RawObject<S>` and validates it. Validation problems under a
/// path that already had a shape error, or that a typo suggestion points at, are dropped
/// (they would only repeat it).
fn typed<S, T>(
    value: &Value,
    validate: impl FnOnce(&Value, RawObject<S>) -> Result<T, Vec<FieldError>>,
) -> Result<T, Vec<FieldError>>
where
    S: DeserializeOwned,
{
    let Collected {
        value: raw,
        mut errors,
        covered,
    } = deserialize_collecting::<RawObject<S>>(value);
    let Some(raw) = raw else {
        return Err(errors);
    };
    match validate(value, raw) {
        Ok(typed) if errors.is_empty() => Ok(typed),
        Ok(_) => Err(errors),
        Err(found) => {
            errors.extend(
                found
                    .into_iter()
                    .filter(|e| !covered.iter().any(|p| path_is_under(&e.path, p))),
            );
            Err(errors)
        }
    }
}

struct Collected<T> {
    value: Option<T>,
    errors: Vec<FieldError>,
    /// Paths already explained by `errors`: their own, and the fields typos point at.
    covered: Vec<String>,
}

/// serde stops at the first error; to report them all, record it, remove the offending
/// field from a working copy and try again. Returns the value if the (pruned) copy
/// finally deserializes.
fn deserialize_collecting<T: DeserializeOwned>(value: &Value) -> Collected<T> {
    let mut work = value.clone();
    let mut errors = Vec::new();
    let mut covered = Vec::new();
    for _ in 0..MAX_ERRORS_PER_DOCUMENT {
        let error = match serde_path_to_error::deserialize::<_, T>(&work) {
            Ok(t) => {
                return Collected {
                    value: Some(t),
                    errors,
                    covered,
                }
            }
            Err(e) => e,
        };
        let mut segments = to_segments(error.path());
        let message = error.inner().to_string();
        if let Some((name, expected)) = parse_unknown_field(&message) {
            let known: Vec<&str> = expected.iter().map(String::as_str).collect();
            let near = suggest::nearest(&name, &known);
            if let Some(segs) = &mut segments {
                if segs.last() == Some(&Seg::Key(name.clone())) {
                    segs.pop();
                }
                if let Some(near) = near {
                    let mut suggested = segs.clone();
                    suggested.push(Seg::Key(near.to_owned()));
                    covered.push(render_path(Some(&suggested)));
                }
                segs.push(Seg::Key(name));
            }
            errors.push(FieldError::new(
                render_path(segments.as_deref()),
                unknown_field_message(near, &known),
            ));
        } else {
            errors.push(FieldError::new(render_path(segments.as_deref()), message));
            // A bad list element: drop the whole list so later indices are not shifted.
            if let Some(segs) = &mut segments {
                while matches!(segs.last(), Some(Seg::Index(_))) {
                    segs.pop();
                }
            }
        }
        if let Some(last) = errors.last() {
            covered.push(last.path.clone());
        }
        let removed = segments.is_some_and(|segs| remove_at(&mut work, &segs));
        if !removed {
            break;
        }
    }
    Collected {
        value: None,
        errors,
        covered,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `None` when serde could not tell where it was.
fn to_segments(path: &serde_path_to_error::Path) -> Option<Vec<Seg>> {
    path.iter()
        .map(|s| match s {
            Segment::Map { key } | Segment::Enum { variant: key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            _ => None,
        })
        .collect()
}

fn render_path(segments: Option<&[Seg]>) -> String {
    let Some(segments) = segments else {
        return "?".to_owned();
    };
    let mut out = String::new();
    for s in segments {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes the value at `segments` from `value`; false if there is nothing to remove.
fn remove_at(value: &mut Value, segments: &[Seg]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = value;
    for s in parents {
        let next = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// Reads serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or
/// `b`", "expected `a`", "there are no fields") into (x, [a, b]).
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    if let Some(i) = rest.rfind("`, expected ") {
        let expected = rest[i + "`, expected ".len()..]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        Some((rest[..i].to_owned(), expected))
    } else {
        let i = rest.rfind("`, there are no fields")?;
        Some((rest[..i].to_owned(), Vec::new()))
    }
}

fn unknown_field_message(near: Option<&str>, known: &[&str]) -> String {
    match near {
        Some(near) => format!("unknown field; did you mean {near:?}?"),
        None if known.is_empty() => "unknown field; this object has no fields".to_owned(),
        None => format!("unknown field; expected one of: {}", known.join(", ")),
    }
}

fn path_is_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.is_empty() || rest.is_empty() || rest.starts_with(['.', '[']),
        None => false,
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_owned()
    } else if path.is_empty() {
        prefix.to_owned()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

/// `Model "iris"`, or just the kind when the name is unknown.
fn describe(value: &Value) -> Option<String> {
    let kind = value.get("kind").and_then(Value::as_str)?;
    match value.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) => Some(format!("{kind} {name:?}")),
        None => Some(kind.to_owned()),
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn unknown_field_messages_are_read_in_every_serde_form() {
        assert_eq!(
            parse_unknown_field(
                "unknown field `storagUri`, expected one of `storageUri`, `memory`"
            ),
            Some((
                "storagUri".into(),
                vec!["storageUri".into(), "memory".into()]
            ))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, expected `agent` or `rclone`"),
            Some(("x".into(), vec!["agent".into(), "rclone".into()]))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, expected `percent`"),
            Some(("x".into(), vec!["percent".into()]))
        );
        assert_eq!(
            parse_unknown_field("unknown field `x`, there are no fields"),
            Some(("x".into(), vec![]))
        );
        assert_eq!(parse_unknown_field("invalid type: string"), None);
    }

    #[test]
    fn paths_join_keys_with_dots_and_indices_with_brackets() {
        assert_eq!(join_path("", "spec.x"), "spec.x");
        assert_eq!(join_path("items[1]", "spec.x"), "items[1].spec.x");
        assert_eq!(join_path("items[1]", ""), "items[1]");
        assert_eq!(join_path("a", "[2]"), "a[2]");
        let segs = [
            Seg::Key("spec".into()),
            Seg::Key("requirements".into()),
            Seg::Index(1),
        ];
        assert_eq!(render_path(Some(&segs)), "spec.requirements[1]");
    }

    #[test]
    fn path_is_under_respects_segment_boundaries() {
        assert!(path_is_under("spec.replicas", "spec"));
        assert!(path_is_under("spec", "spec"));
        assert!(path_is_under("spec.requirements[0]", "spec.requirements"));
        assert!(!path_is_under("spec.replicasX", "spec.replicas"));
        assert!(!path_is_under("metadata.name", "spec"));
    }
}
