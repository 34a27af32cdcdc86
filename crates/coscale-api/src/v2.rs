//! Open Inference Protocol (V2) tensors, requests and responses, with their codecs.
//!
//! One in-memory form ([`InferRequest`], [`InferResponse`], [`Tensor`]) and four wire forms:
//! REST JSON (with the binary tensor data extension: `Inference-Header-Content-Length` splits the
//! body into a JSON header and appended little-endian tensor bytes), and gRPC
//! (`pb::inference::ModelInferRequest`/`ModelInferResponse`, typed `contents` or
//! `raw_*_contents`). Numeric `data` arrays (flat or nested) are parsed straight into typed
//! vectors, never through a `serde_json::Value` tree. Pure data: no I/O, no tokio.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::ser::{Serialize, Serializer};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::pb::inference as pb;

pub use half::f16;

/// Free-form V2 `parameters`: name → any JSON value.
pub type Parameters = serde_json::Map<String, Value>;

/// Parameter naming the byte size of a tensor's block in the binary extension.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// HTTP header giving the byte length of the JSON part of a binary-extension body.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// What is wrong with a V2 body, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum V2Error {
    #[error("invalid JSON body: {0}")]
    Json(String),
    #[error("{tensor}: invalid `data`: {message}")]
    Data { tensor: String, message: String },
    #[error("unknown datatype '{0}' (expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES)")]
    UnknownDatatype(String),
    #[error("{tensor}: datatype is {declared} but the data is {found}")]
    DatatypeMismatch {
        tensor: String,
        declared: Datatype,
        found: Datatype,
    },
    #[error("{tensor}: shape {shape:?} holds {expected} elements but the data has {actual}")]
    ShapeMismatch {
        tensor: String,
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    #[error("{tensor}: invalid shape {shape:?} (dimensions must be >= 0)")]
    BadShape { tensor: String, shape: Vec<i64> },
    #[error("{tensor}: has neither `data` nor a `binary_data_size` parameter")]
    MissingData { tensor: String },
    #[error("{tensor}: {message}")]
    Binary { tensor: String, message: String },
    #[error("binary tensor data: {0}")]
    Framing(String),
    #[error("{tensor}: {message}")]
    Proto { tensor: String, message: String },
}

/// The V2 element types (BF16 is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    /// Every datatype, in protocol table order.
    pub const ALL: [Datatype; 13] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bytes,
    ];

    /// The wire name (`"FP32"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary/raw encoding; `None` for variable-size BYTES.
    pub fn element_size(self) -> Option<usize> {
        match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => Some(1),
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => Some(2),
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => Some(4),
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => Some(8),
            Datatype::Bytes => None,
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Datatype {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Datatype {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl FromStr for Datatype {
    type Err = V2Error;
    fn from_str(s: &str) -> Result<Self, V2Error> {
        Datatype::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| V2Error::UnknownDatatype(s.to_string()))
    }
}

/// Tensor elements in row-major order, one variant per [`Datatype`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Invokes macro `$m!(Variant, element_type)` once per plain numeric variant (not BOOL, FP16
/// or BYTES, which need special handling).
macro_rules! numeric_variants {
    ($m:ident) => {
        $m!(Uint8, u8);
        $m!(Uint16, u16);
        $m!(Uint32, u32);
        $m!(Uint64, u64);
        $m!(Int8, i8);
        $m!(Int16, i16);
        $m!(Int32, i32);
        $m!(Int64, i64);
        $m!(Fp32, f32);
        $m!(Fp64, f64);
    };
}

impl TensorData {
    /// The datatype these elements have.
    pub fn datatype(&self) -> Datatype {
        match self {
            TensorData::Bool(_) => Datatype::Bool,
            TensorData::Uint8(_) => Datatype::Uint8,
            TensorData::Uint16(_) => Datatype::Uint16,
            TensorData::Uint32(_) => Datatype::Uint32,
            TensorData::Uint64(_) => Datatype::Uint64,
            TensorData::Int8(_) => Datatype::Int8,
            TensorData::Int16(_) => Datatype::Int16,
            TensorData::Int32(_) => Datatype::Int32,
            TensorData::Int64(_) => Datatype::Int64,
            TensorData::Fp16(_) => Datatype::Fp16,
            TensorData::Fp32(_) => Datatype::Fp32,
            TensorData::Fp64(_) => Datatype::Fp64,
            TensorData::Bytes(_) => Datatype::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Uint16(v) => v.len(),
            TensorData::Uint32(v) => v.len(),
            TensorData::Uint64(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Int16(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Fp16(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the binary-extension / gRPC raw encoding (little-endian; BYTES elements are
    /// each prefixed by a u32 LE length). The error message says what does not fit.
    pub fn from_raw(datatype: Datatype, bytes: &[u8]) -> Result<TensorData, String> {
        if let Some(size) = datatype.element_size() {
            if !bytes.len().is_multiple_of(size) {
                return Err(format!(
                    "{} bytes is not a whole number of {datatype} elements ({size} bytes each)",
                    bytes.len()
                ));
            }
        }
        macro_rules! fixed {
            ($t:ty, $n:literal) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        let mut a = [0u8; $n];
                        a.copy_from_slice(c);
                        <$t>::from_le_bytes(a)
                    })
                    .collect()
            };
        }
        Ok(match datatype {
            Datatype::Bool => TensorData::Bool(bytes.iter().map(|b| *b != 0).collect()),
            Datatype::Uint8 => TensorData::Uint8(bytes.to_vec()),
            Datatype::Uint16 => TensorData::Uint16(fixed!(u16, 2)),
            Datatype::Uint32 => TensorData::Uint32(fixed!(u32, 4)),
            Datatype::Uint64 => TensorData::Uint64(fixed!(u64, 8)),
            Datatype::Int8 => TensorData::Int8(fixed!(i8, 1)),
            Datatype::Int16 => TensorData::Int16(fixed!(i16, 2)),
            Datatype::Int32 => TensorData::Int32(fixed!(i32, 4)),
            Datatype::Int64 => TensorData::Int64(fixed!(i64, 8)),
            Datatype::Fp16 => TensorData::Fp16(fixed!(f16, 2)),
            Datatype::Fp32 => TensorData::Fp32(fixed!(f32, 4)),
            Datatype::Fp64 => TensorData::Fp64(fixed!(f64, 8)),
            Datatype::Bytes => {
                let mut out = Vec::new();
                let mut rest = bytes;
                while !rest.is_empty() {
                    let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(format!(
                            "BYTES element {} has a truncated length prefix",
                            out.len()
                        ));
                    };
                    let len = u32::from_le_bytes(*len) as usize;
                    if tail.len() < len {
                        return Err(format!(
                            "BYTES element {} announces {len} bytes but only {} remain",
                            out.len(),
                            tail.len()
                        ));
                    }
                    let (elem, tail) = tail.split_at(len);
                    out.push(elem.to_vec());
                    rest = tail;
                }
                TensorData::Bytes(out)
            }
        })
    }

    /// Encodes in the binary-extension / gRPC raw form (see [`TensorData::from_raw`]).
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            TensorData::Bool(v) => v.iter().map(|b| u8::from(*b)).collect(),
            TensorData::Uint8(v) => v.clone(),
            TensorData::Fp16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Bytes(v) => {
                let mut out = Vec::with_capacity(v.iter().map(|e| e.len() + 4).sum());
                for e in v {
                    // Elements longer than u32::MAX cannot be framed; the protocol forbids them.
                    out.extend_from_slice(
                        &u32::try_from(e.len()).unwrap_or(u32::MAX).to_le_bytes(),
                    );
                    out.extend_from_slice(e);
                }
                out
            }
            other => {
                let mut out = Vec::new();
                macro_rules! arm {
                    ($var:ident, $t:ty) => {
                        if let TensorData::$var(v) = other {
                            out.reserve(v.len() * std::mem::size_of::<$t>());
                            v.iter()
                                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                        }
                    };
                }
                numeric_variants!(arm);
                out
            }
        }
    }
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Bool(v) => v.serialize(s),
            TensorData::Uint8(v) => v.serialize(s),
            TensorData::Uint16(v) => v.serialize(s),
            TensorData::Uint32(v) => v.serialize(s),
            TensorData::Uint64(v) => v.serialize(s),
            TensorData::Int8(v) => v.serialize(s),
            TensorData::Int16(v) => v.serialize(s),
            TensorData::Int32(v) => v.serialize(s),
            TensorData::Int64(v) => v.serialize(s),
            // FP16 has no standard JSON form; we write its exact value as a number.
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Fp32(v) => v.serialize(s),
            TensorData::Fp64(v) => v.serialize(s),
            // JSON BYTES are text; non-UTF-8 bytes need the binary extension.
            TensorData::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

/// One named tensor (a request input or a response output).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
    pub parameters: Parameters,
    pub data: TensorData,
}

impl Tensor {
    /// A tensor whose datatype is taken from `data`.
    pub fn new(name: impl Into<String>, shape: Vec<i64>, data: TensorData) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: data.datatype(),
            shape,
            parameters: Parameters::new(),
            data,
        }
    }

    /// Element count of `shape` (1 for `[]`), or `None` for a negative or overflowing shape.
    pub fn element_count(shape: &[i64]) -> Option<usize> {
        shape.iter().try_fold(1usize, |acc, d| {
            usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
        })
    }

    /// Checks that the datatype matches the data and that the shape covers every element.
    /// `what` names the tensor in errors, e.g. `input 'x'`.
    pub fn validate(&self, what: &str) -> Result<(), V2Error> {
        if self.data.datatype() != self.datatype {
            return Err(V2Error::DatatypeMismatch {
                tensor: what.to_string(),
                declared: self.datatype,
                found: self.data.datatype(),
            });
        }
        let expected = Tensor::element_count(&self.shape).ok_or_else(|| V2Error::BadShape {
            tensor: what.to_string(),
            shape: self.shape.clone(),
        })?;
        if expected != self.data.len() {
            return Err(V2Error::ShapeMismatch {
                tensor: what.to_string(),
                shape: self.shape.clone(),
                expected,
                actual: self.data.len(),
            });
        }
        Ok(())
    }
}

/// An output the client asks for, with its parameters (`binary_data`, ...).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Parameters,
}

/// A V2 inference request (model name and version travel in the URL / gRPC fields).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    /// Requested outputs; empty means "every model output".
    pub outputs: Vec<RequestedOutput>,
}

/// A V2 inference response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: Option<String>,
    pub id: Option<String>,
    pub parameters: Parameters,
    pub outputs: Vec<Tensor>,
}

/// An encoded REST body. When `json_len` is set, binary tensor blocks follow the JSON: send
/// `Inference-Header-Content-Length: json_len` and `Content-Type: application/octet-stream`;
/// otherwise the body is plain `application/json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpBody {
    pub bytes: Vec<u8>,
    pub json_len: Option<usize>,
}

/// The V2 error body `{"error":"<msg>"}`.
pub fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// JSON decoding

#[derive(Deserialize)]
struct JsonTensor<'a> {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JsonRequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<JsonTensor<'a>>,
    #[serde(default)]
    outputs: Option<Vec<JsonRequestedOutput>>,
}

#[derive(Deserialize)]
struct JsonResponse<'a> {
    model_name: String,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    outputs: Vec<JsonTensor<'a>>,
}

/// Splits a REST body into its JSON part and the appended binary blocks.
fn split_body(body: &[u8], header_len: Option<usize>) -> Result<(&[u8], &[u8]), V2Error> {
    match header_len {
        None => Ok((body, &[])),
        Some(0) => Err(V2Error::Framing(
            "Inference-Header-Content-Length 0 (raw binary request) is not supported".into(),
        )),
        Some(n) if n > body.len() => Err(V2Error::Framing(format!(
            "Inference-Header-Content-Length {n} exceeds the body size {}",
            body.len()
        ))),
        Some(n) => Ok(body.split_at(n)),
    }
}

/// Turns parsed JSON tensors into [`Tensor`]s, taking binary blocks from `binary` in order.
fn decode_json_tensors(
    raw: Vec<JsonTensor<'_>>,
    mut binary: &[u8],
    kind: &str,
) -> Result<Vec<Tensor>, V2Error> {
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        let what = format!("{kind} '{}'", t.name);
        let datatype: Datatype = t.datatype.parse()?;
        let mut parameters = t.parameters.unwrap_or_default();
        let data = match (parameters.remove(BINARY_DATA_SIZE), t.data) {
            (Some(_), Some(_)) => {
                return Err(V2Error::Binary {
                    tensor: what,
                    message: "has both `data` and `binary_data_size`".into(),
                })
            }
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| V2Error::Binary {
                        tensor: what.clone(),
                        message: format!(
                            "binary_data_size must be a non-negative integer, got {size}"
                        ),
                    })?;
                if size > binary.len() {
                    return Err(V2Error::Binary {
                        tensor: what,
                        message: format!(
                            "binary_data_size {size} but only {} binary bytes remain",
                            binary.len()
                        ),
                    });
                }
                let (block, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_raw(datatype, block).map_err(|message| V2Error::Binary {
                    tensor: what.clone(),
                    message,
                })?
            }
            (None, Some(raw)) => {
                parse_json_data(datatype, raw.get()).map_err(|message| V2Error::Data {
                    tensor: what.clone(),
                    message,
                })?
            }
            (None, None) => return Err(V2Error::MissingData { tensor: what }),
        };
        let tensor = Tensor {
            name: t.name,
            datatype,
            shape: t.shape,
            parameters,
            data,
        };
        tensor.validate(&what)?;
        out.push(tensor);
    }
    if !binary.is_empty() {
        return Err(V2Error::Framing(format!(
            "{} trailing bytes after the last binary tensor",
            binary.len()
        )));
    }
    Ok(out)
}

fn json_error(e: serde_json::Error) -> V2Error {
    V2Error::Json(e.to_string())
}

impl InferRequest {
    /// Parses a REST infer body. `inference_header_content_length` is the value of the
    /// `Inference-Header-Content-Length` header, if present (binary tensor extension).
    pub fn from_json(
        body: &[u8],
        inference_header_content_length: Option<usize>,
    ) -> Result<InferRequest, V2Error> {
        let (json, binary) = split_body(body, inference_header_content_length)?;
        let raw: JsonRequest<'_> = serde_json::from_slice(json).map_err(json_error)?;
        Ok(InferRequest {
            id: raw.id,
            parameters: raw.parameters.unwrap_or_default(),
            inputs: decode_json_tensors(raw.inputs, binary, "input")?,
            outputs: raw
                .outputs
                .unwrap_or_default()
                .into_iter()
                .map(|o| RequestedOutput {
                    name: o.name,
                    parameters: o.parameters.unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// Encodes as a plain JSON body (`data` arrays; BYTES as UTF-8 text).
    pub fn to_json(&self) -> Vec<u8> {
        self.to_http(false).bytes
    }

    /// Encodes a REST body; with `binary_inputs` every input travels as a binary block.
    pub fn to_http(&self, binary_inputs: bool) -> HttpBody {
        let mut blocks = Vec::new();
        let inputs: Vec<JsonTensorOut<'_>> = self
            .inputs
            .iter()
            .map(|t| JsonTensorOut::new(t, binary_inputs.then_some(&mut blocks)))
            .collect();
        let outputs: Vec<serde_json::Value> = self
            .outputs
            .iter()
            .map(|o| {
                let mut v = serde_json::json!({ "name": o.name });
                if !o.parameters.is_empty() {
                    v["parameters"] = Value::Object(o.parameters.clone());
                }
                v
            })
            .collect();
        let body = JsonRequestOut {
            id: self.id.as_deref(),
            parameters: &self.parameters,
            inputs,
            outputs,
        };
        finish_http(&body, blocks, binary_inputs && !self.inputs.is_empty())
    }

    /// Whether the client asked for output `name` in binary form: a listed output uses its own
    /// `binary_data` parameter, unlisted ones the request's `binary_data_output`.
    pub fn binary_output(&self, name: &str) -> bool {
        let flag = |p: &Parameters, key: &str| p.get(key).and_then(Value::as_bool).unwrap_or(false);
        match self.outputs.iter().find(|o| o.name == name) {
            Some(o) => flag(&o.parameters, "binary_data"),
            None => flag(&self.parameters, "binary_data_output"),
        }
    }

    /// Decodes a gRPC request (typed `contents` or `raw_input_contents`, one per input).
    pub fn from_proto(req: pb::ModelInferRequest) -> Result<InferRequest, V2Error> {
        let raw = req.raw_input_contents;
        if !raw.is_empty() && raw.len() != req.inputs.len() {
            return Err(V2Error::Framing(format!(
                "{} raw_input_contents for {} inputs (need one per input)",
                raw.len(),
                req.inputs.len()
            )));
        }
        let mut raw = raw.into_iter();
        let mut inputs = Vec::with_capacity(req.inputs.len());
        for t in req.inputs {
            let what = format!("input '{}'", t.name);
            let datatype: Datatype = t.datatype.parse()?;
            let data = match raw.next() {
                Some(bytes) => {
                    if t.contents.is_some() {
                        return Err(V2Error::Proto {
                            tensor: what,
                            message: "contents must not be set when raw_input_contents is used"
                                .into(),
                        });
                    }
                    TensorData::from_raw(datatype, &bytes).map_err(|message| V2Error::Proto {
                        tensor: what.clone(),
                        message,
                    })?
                }
                None => {
                    from_contents(datatype, t.contents.unwrap_or_default()).map_err(|message| {
                        V2Error::Proto {
                            tensor: what.clone(),
                            message,
                        }
                    })?
                }
            };
            let tensor = Tensor {
                name: t.name,
                datatype,
                shape: t.shape,
                parameters: params_from_proto(t.parameters),
                data,
            };
            tensor.validate(&what)?;
            inputs.push(tensor);
        }
        Ok(InferRequest {
            id: (!req.id.is_empty()).then_some(req.id),
            parameters: params_from_proto(req.parameters),
            inputs,
            outputs: req
                .outputs
                .into_iter()
                .map(|o| RequestedOutput {
                    name: o.name,
                    parameters: params_from_proto(o.parameters),
                })
                .collect(),
        })
    }

    /// Encodes a gRPC request. With `raw` (or any FP16 input, which has no typed field) all
    /// inputs go to `raw_input_contents`.
    pub fn to_proto(
        &self,
        model_name: &str,
        model_version: Option<&str>,
        raw: bool,
    ) -> pb::ModelInferRequest {
        let raw = raw || self.inputs.iter().any(|t| t.datatype == Datatype::Fp16);
        let mut req = pb::ModelInferRequest {
            model_name: model_name.to_string(),
            model_version: model_version.unwrap_or_default().to_string(),
            id: self.id.clone().unwrap_or_default(),
            parameters: params_to_proto(&self.parameters),
            ..Default::default()
        };
        for t in &self.inputs {
            req.inputs.push(pb::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.to_string(),
                shape: t.shape.clone(),
                parameters: params_to_proto(&t.parameters),
                contents: (!raw).then(|| to_contents(&t.data)),
            });
            if raw {
                req.raw_input_contents.push(t.data.to_raw());
            }
        }
        req.outputs = self
            .outputs
            .iter()
            .map(|o| pb::model_infer_request::InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: params_to_proto(&o.parameters),
            })
            .collect();
        req
    }
}

impl InferResponse {
    /// Encodes as a plain JSON body (no binary outputs).
    pub fn to_json(&self) -> Vec<u8> {
        self.to_http(|_| false).bytes
    }

    /// Encodes a REST body; outputs for which `binary(name)` holds travel as binary blocks
    /// (see [`InferRequest::binary_output`]).
    pub fn to_http(&self, binary: impl Fn(&str) -> bool) -> HttpBody {
        let mut blocks = Vec::new();
        let mut any_binary = false;
        let outputs: Vec<JsonTensorOut<'_>> = self
            .outputs
            .iter()
            .map(|t| {
                let b = binary(&t.name);
                any_binary |= b;
                JsonTensorOut::new(t, b.then_some(&mut blocks))
            })
            .collect();
        let body = JsonResponseOut {
            model_name: &self.model_name,
            model_version: self.model_version.as_deref(),
            id: self.id.as_deref(),
            parameters: &self.parameters,
            outputs,
        };
        finish_http(&body, blocks, any_binary)
    }

    /// Parses a REST response body (for clients).
    pub fn from_json(
        body: &[u8],
        inference_header_content_length: Option<usize>,
    ) -> Result<InferResponse, V2Error> {
        let (json, binary) = split_body(body, inference_header_content_length)?;
        let raw: JsonResponse<'_> = serde_json::from_slice(json).map_err(json_error)?;
        Ok(InferResponse {
            model_name: raw.model_name,
            model_version: raw.model_version,
            id: raw.id,
            parameters: raw.parameters.unwrap_or_default(),
            outputs: decode_json_tensors(raw.outputs, binary, "output")?,
        })
    }

    /// Encodes a gRPC response: raw in → raw out (`raw_output_contents`, one per output, as
    /// tritonclient requires); typed otherwise. FP16 outputs force raw.
    pub fn to_proto(&self, raw: bool) -> pb::ModelInferResponse {
        let raw = raw || self.outputs.iter().any(|t| t.datatype == Datatype::Fp16);
        let mut resp = pb::ModelInferResponse {
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone().unwrap_or_default(),
            id: self.id.clone().unwrap_or_default(),
            parameters: params_to_proto(&self.parameters),
            ..Default::default()
        };
        for t in &self.outputs {
            resp.outputs
                .push(pb::model_infer_response::InferOutputTensor {
                    name: t.name.clone(),
                    datatype: t.datatype.to_string(),
                    shape: t.shape.clone(),
                    parameters: params_to_proto(&t.parameters),
                    contents: (!raw).then(|| to_contents(&t.data)),
                });
            if raw {
                resp.raw_output_contents.push(t.data.to_raw());
            }
        }
        resp
    }

    /// Decodes a gRPC response (for clients): `raw_output_contents` by position, else typed.
    pub fn from_proto(resp: pb::ModelInferResponse) -> Result<InferResponse, V2Error> {
        let mut raw = resp.raw_output_contents.into_iter();
        let mut outputs = Vec::with_capacity(resp.outputs.len());
        for t in resp.outputs {
            let what = format!("output '{}'", t.name);
            let datatype: Datatype = t.datatype.parse()?;
            let data = match raw.next() {
                Some(bytes) => TensorData::from_raw(datatype, &bytes),
                None => from_contents(datatype, t.contents.unwrap_or_default()),
            }
            .map_err(|message| V2Error::Proto {
                tensor: what.clone(),
                message,
            })?;
            let tensor = Tensor {
                name: t.name,
                datatype,
                shape: t.shape,
                parameters: params_from_proto(t.parameters),
                data,
            };
            tensor.validate(&what)?;
            outputs.push(tensor);
        }
        Ok(InferResponse {
            model_name: resp.model_name,
            model_version: (!resp.model_version.is_empty()).then_some(resp.model_version),
            id: (!resp.id.is_empty()).then_some(resp.id),
            parameters: params_from_proto(resp.parameters),
            outputs,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// JSON encoding

#[derive(serde::Serialize)]
struct JsonTensorOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<std::borrow::Cow<'a, Parameters>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorData>,
}

impl<'a> JsonTensorOut<'a> {
    /// JSON view of `t`; when `blocks` is given the data is appended there as a binary block.
    fn new(t: &'a Tensor, blocks: Option<&mut Vec<u8>>) -> JsonTensorOut<'a> {
        let mut parameters =
            (!t.parameters.is_empty()).then_some(std::borrow::Cow::Borrowed(&t.parameters));
        let data = match blocks {
            Some(blocks) => {
                let raw = t.data.to_raw();
                parameters
                    .get_or_insert_with(Default::default)
                    .to_mut()
                    .insert(BINARY_DATA_SIZE.into(), Value::from(raw.len()));
                blocks.extend_from_slice(&raw);
                None
            }
            None => Some(&t.data),
        };
        JsonTensorOut {
            name: &t.name,
            datatype: t.datatype.as_str(),
            shape: &t.shape,
            parameters,
            data,
        }
    }
}

#[derive(serde::Serialize)]
struct JsonRequestOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    parameters: &'a Parameters,
    inputs: Vec<JsonTensorOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<Value>,
}

#[derive(serde::Serialize)]
struct JsonResponseOut<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: &'a Parameters,
    outputs: Vec<JsonTensorOut<'a>>,
}

fn finish_http(body: &impl serde::Serialize, blocks: Vec<u8>, binary: bool) -> HttpBody {
    // Serialising these structs cannot fail: every map key is a string.
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    let json_len = binary.then_some(bytes.len());
    bytes.extend_from_slice(&blocks);
    HttpBody { bytes, json_len }
}

// ---------------------------------------------------------------------------------------------
// `data` arrays: flat or nested JSON arrays parsed straight into typed vectors.

/// An element type that can be read from one JSON scalar.
trait JsonElem: Sized {
    const EXPECTED: &'static str;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl JsonElem for bool {
    const EXPECTED: &'static str = "a boolean";
    fn from_bool(b: bool) -> Option<bool> {
        Some(b)
    }
}

impl JsonElem for Vec<u8> {
    const EXPECTED: &'static str = "a string";
    fn from_str(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }
}

macro_rules! json_int {
    ($t:ty, $e:literal) => {
        impl JsonElem for $t {
            const EXPECTED: &'static str = $e;
            fn from_i64(v: i64) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
            fn from_u64(v: u64) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
        }
    };
}
json_int!(u8, "an integer in 0..=255");
json_int!(u16, "an integer in 0..=65535");
json_int!(u32, "an integer in 0..=4294967295");
json_int!(u64, "a non-negative integer");
json_int!(i8, "an integer in -128..=127");
json_int!(i16, "an integer in -32768..=32767");
json_int!(i32, "a 32-bit integer");
json_int!(i64, "a 64-bit integer");

macro_rules! json_float {
    ($t:ty, $conv:expr) => {
        impl JsonElem for $t {
            const EXPECTED: &'static str = "a number";
            fn from_i64(v: i64) -> Option<$t> {
                Some($conv(v as f64))
            }
            fn from_u64(v: u64) -> Option<$t> {
                Some($conv(v as f64))
            }
            fn from_f64(v: f64) -> Option<$t> {
                Some($conv(v))
            }
        }
    };
}
json_float!(f32, |v: f64| v as f32);
json_float!(f64, |v: f64| v);
json_float!(f16, f16::from_f64);

/// Appends every scalar of a (possibly nested) JSON array to the vector.
struct Flat<'v, T>(&'v mut Vec<T>);

impl<'de, T: JsonElem> DeserializeSeed<'de> for Flat<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T: JsonElem> Flat<'_, T> {
    fn push<E: de::Error>(self, v: Option<T>, unexpected: Unexpected<'_>) -> Result<(), E> {
        match v {
            Some(v) => {
                self.0.push(v);
                Ok(())
            }
            None => Err(E::invalid_value(unexpected, &T::EXPECTED)),
        }
    }
}

impl<'de, T: JsonElem> Visitor<'de> for Flat<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} or an array of them", T::EXPECTED)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), Unexpected::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), Unexpected::Signed(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), Unexpected::Unsigned(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), Unexpected::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v), Unexpected::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.0.reserve(n);
        }
        while seq.next_element_seed(Flat(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

fn parse_flat<T: JsonElem>(json: &str) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(json);
    Flat(&mut out)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(out)
}

fn parse_json_data(datatype: Datatype, json: &str) -> Result<TensorData, String> {
    Ok(match datatype {
        Datatype::Bool => TensorData::Bool(parse_flat(json)?),
        Datatype::Uint8 => TensorData::Uint8(parse_flat(json)?),
        Datatype::Uint16 => TensorData::Uint16(parse_flat(json)?),
        Datatype::Uint32 => TensorData::Uint32(parse_flat(json)?),
        Datatype::Uint64 => TensorData::Uint64(parse_flat(json)?),
        Datatype::Int8 => TensorData::Int8(parse_flat(json)?),
        Datatype::Int16 => TensorData::Int16(parse_flat(json)?),
        Datatype::Int32 => TensorData::Int32(parse_flat(json)?),
        Datatype::Int64 => TensorData::Int64(parse_flat(json)?),
        Datatype::Fp16 => TensorData::Fp16(parse_flat(json)?),
        Datatype::Fp32 => TensorData::Fp32(parse_flat(json)?),
        Datatype::Fp64 => TensorData::Fp64(parse_flat(json)?),
        Datatype::Bytes => TensorData::Bytes(parse_flat(json)?),
    })
}

// ---------------------------------------------------------------------------------------------
// gRPC typed contents and parameters

fn narrow<W: Copy + fmt::Display, T: TryFrom<W>>(
    v: Vec<W>,
    datatype: Datatype,
) -> Result<Vec<T>, String> {
    v.into_iter()
        .map(|x| T::try_from(x).map_err(|_| format!("value {x} does not fit {datatype}")))
        .collect()
}

fn from_contents(datatype: Datatype, c: pb::InferTensorContents) -> Result<TensorData, String> {
    Ok(match datatype {
        Datatype::Bool => TensorData::Bool(c.bool_contents),
        Datatype::Uint8 => TensorData::Uint8(narrow(c.uint_contents, datatype)?),
        Datatype::Uint16 => TensorData::Uint16(narrow(c.uint_contents, datatype)?),
        Datatype::Uint32 => TensorData::Uint32(c.uint_contents),
        Datatype::Uint64 => TensorData::Uint64(c.uint64_contents),
        Datatype::Int8 => TensorData::Int8(narrow(c.int_contents, datatype)?),
        Datatype::Int16 => TensorData::Int16(narrow(c.int_contents, datatype)?),
        Datatype::Int32 => TensorData::Int32(c.int_contents),
        Datatype::Int64 => TensorData::Int64(c.int64_contents),
        Datatype::Fp16 => {
            return Err("FP16 has no typed contents field; send it in raw contents".into())
        }
        Datatype::Fp32 => TensorData::Fp32(c.fp32_contents),
        Datatype::Fp64 => TensorData::Fp64(c.fp64_contents),
        Datatype::Bytes => TensorData::Bytes(c.bytes_contents),
    })
}

fn to_contents(data: &TensorData) -> pb::InferTensorContents {
    let mut c = pb::InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::Uint8(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
        TensorData::Uint16(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
        TensorData::Uint32(v) => c.uint_contents = v.clone(),
        TensorData::Uint64(v) => c.uint64_contents = v.clone(),
        TensorData::Int8(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
        TensorData::Int16(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
        TensorData::Int32(v) => c.int_contents = v.clone(),
        TensorData::Int64(v) => c.int64_contents = v.clone(),
        // No typed field exists; callers switch to raw contents when FP16 is present.
        TensorData::Fp16(_) => {}
        TensorData::Fp32(v) => c.fp32_contents = v.clone(),
        TensorData::Fp64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(v) => c.bytes_contents = v.clone(),
    }
    c
}

/// Converts gRPC parameters to JSON values (an unset choice becomes `null`).
pub fn params_from_proto(p: std::collections::HashMap<String, pb::InferParameter>) -> Parameters {
    use pb::infer_parameter::ParameterChoice as C;
    p.into_iter()
        .map(|(k, v)| {
            let v = match v.parameter_choice {
                Some(C::BoolParam(b)) => Value::from(b),
                Some(C::Int64Param(i)) => Value::from(i),
                Some(C::StringParam(s)) => Value::from(s),
                Some(C::DoubleParam(d)) => Value::from(d),
                Some(C::Uint64Param(u)) => Value::from(u),
                None => Value::Null,
            };
            (k, v)
        })
        .collect()
}

/// Converts JSON parameters to gRPC: integers → int64 (uint64 above i64::MAX), other numbers →
/// double, arrays/objects → their JSON text as a string, `null` → unset.
pub fn params_to_proto(p: &Parameters) -> std::collections::HashMap<String, pb::InferParameter> {
    use pb::infer_parameter::ParameterChoice as C;
    p.iter()
        .map(|(k, v)| {
            let choice = match v {
                Value::Null => None,
                Value::Bool(b) => Some(C::BoolParam(*b)),
                Value::Number(n) => Some(match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => C::Int64Param(i),
                    (None, Some(u)) => C::Uint64Param(u),
                    _ => C::DoubleParam(n.as_f64().unwrap_or(f64::NAN)),
                }),
                Value::String(s) => Some(C::StringParam(s.clone())),
                other => Some(C::StringParam(other.to_string())),
            };
            (
                k.clone(),
                pb::InferParameter {
                    parameter_choice: choice,
                },
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Two elements of every datatype, including edge values.
    fn sample(dt: Datatype) -> TensorData {
        match dt {
            Datatype::Bool => TensorData::Bool(vec![true, false]),
            Datatype::Uint8 => TensorData::Uint8(vec![0, 255]),
            Datatype::Uint16 => TensorData::Uint16(vec![1, u16::MAX]),
            Datatype::Uint32 => TensorData::Uint32(vec![2, u32::MAX]),
            Datatype::Uint64 => TensorData::Uint64(vec![3, u64::MAX]),
            Datatype::Int8 => TensorData::Int8(vec![i8::MIN, 7]),
            Datatype::Int16 => TensorData::Int16(vec![i16::MIN, -5]),
            Datatype::Int32 => TensorData::Int32(vec![i32::MIN, 9]),
            Datatype::Int64 => TensorData::Int64(vec![i64::MIN, i64::MAX]),
            Datatype::Fp16 => TensorData::Fp16(vec![f16::from_f32(1.5), f16::from_f32(-0.25)]),
            Datatype::Fp32 => TensorData::Fp32(vec![6.7, -1e-3]),
            Datatype::Fp64 => TensorData::Fp64(vec![0.1, 1e300]),
            Datatype::Bytes => TensorData::Bytes(vec![b"ab".to_vec(), "é".as_bytes().to_vec()]),
        }
    }

    fn request_with_every_datatype() -> InferRequest {
        let mut req = InferRequest {
            id: Some("r1".into()),
            ..Default::default()
        };
        req.parameters.insert("priority".into(), Value::from(3));
        for dt in Datatype::ALL {
            let mut t = Tensor::new(format!("in_{dt}"), vec![1, 2], sample(dt));
            t.parameters
                .insert("content_type".into(), Value::from("np"));
            req.inputs.push(t);
        }
        req.outputs.push(RequestedOutput {
            name: "out".into(),
            parameters: Parameters::new(),
        });
        req
    }

    #[test]
    fn datatypes_parse_and_display_as_their_wire_names() {
        for dt in Datatype::ALL {
            assert_eq!(dt.to_string().parse::<Datatype>().unwrap(), dt);
        }
        let err = "BF16".parse::<Datatype>().unwrap_err();
        assert!(err.to_string().contains("unknown datatype 'BF16'"), "{err}");
    }

    #[test]
    fn nested_and_flat_data_parse_to_the_same_tensor() {
        let flat =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3.5,4]}]}"#;
        let nested =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}"#;
        let a = InferRequest::from_json(flat, None).unwrap();
        let b = InferRequest::from_json(nested, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.5, 4.0]));
    }

    #[test]
    fn unknown_top_level_keys_and_missing_optional_fields_are_accepted() {
        let body = br#"{"model_name":"iris","inputs":[{"name":"x","shape":[],"datatype":"INT64","data":5}]}"#;
        let req = InferRequest::from_json(body, None).unwrap();
        assert_eq!(req.id, None);
        assert_eq!(req.inputs[0].data, TensorData::Int64(vec![5]));
        assert!(req.outputs.is_empty());
    }

    #[test]
    fn every_datatype_round_trips_through_json() {
        let req = request_with_every_datatype();
        let back = InferRequest::from_json(&req.to_json(), None).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn every_datatype_round_trips_through_the_binary_extension() {
        let req = request_with_every_datatype();
        let body = req.to_http(true);
        let json_len = body
            .json_len
            .expect("binary body announces its JSON length");
        let back = InferRequest::from_json(&body.bytes, Some(json_len)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn every_datatype_round_trips_through_typed_and_raw_proto() {
        let req = request_with_every_datatype();
        for raw in [false, true] {
            let pb = req.to_proto("m", Some("1"), raw);
            // FP16 has no typed field, so the whole request goes raw.
            assert_eq!(pb.raw_input_contents.len(), pb.inputs.len());
            assert_eq!(pb.model_name, "m");
            assert_eq!(InferRequest::from_proto(pb).unwrap(), req);
        }
        let no_fp16 = InferRequest {
            inputs: req
                .inputs
                .iter()
                .filter(|t| t.datatype != Datatype::Fp16)
                .cloned()
                .collect(),
            ..req.clone()
        };
        let typed = no_fp16.to_proto("m", None, false);
        assert!(typed.raw_input_contents.is_empty());
        assert_eq!(InferRequest::from_proto(typed).unwrap(), no_fp16);
    }

    #[test]
    fn responses_round_trip_through_json_binary_and_proto() {
        let mut resp = InferResponse {
            model_name: "iris".into(),
            model_version: Some("1".into()),
            id: Some("r1".into()),
            ..Default::default()
        };
        for dt in Datatype::ALL {
            resp.outputs
                .push(Tensor::new(format!("o_{dt}"), vec![2], sample(dt)));
        }
        assert_eq!(
            InferResponse::from_json(&resp.to_json(), None).unwrap(),
            resp
        );
        let http = resp.to_http(|name| name.ends_with("FP32") || name.ends_with("BYTES"));
        let back = InferResponse::from_json(&http.bytes, http.json_len).unwrap();
        assert_eq!(back, resp);
        for raw in [false, true] {
            let pb = resp.to_proto(raw);
            assert_eq!(pb.raw_output_contents.len(), resp.outputs.len());
            assert_eq!(InferResponse::from_proto(pb).unwrap(), resp);
        }
    }

    #[test]
    fn typed_requests_get_typed_responses_and_raw_requests_get_raw_ones() {
        let resp = InferResponse {
            model_name: "iris".into(),
            outputs: vec![Tensor::new("label", vec![1], TensorData::Int64(vec![2]))],
            ..Default::default()
        };
        let typed = resp.to_proto(false);
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(
            typed.outputs[0].contents.as_ref().unwrap().int64_contents,
            vec![2]
        );
        let raw = resp.to_proto(true);
        assert_eq!(raw.raw_output_contents, vec![2i64.to_le_bytes().to_vec()]);
        assert!(raw.outputs[0].contents.is_none());
    }

    #[test]
    fn tritonclient_binary_request_is_decoded() {
        // Wire capture from v2-protocol.md §3.6.
        let json = br#"{"id":"r1","inputs":[{"name":"IN","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},{"name":"S","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = json.to_vec();
        for x in [1.0f32, 2.0, 3.0, 4.0] {
            body.extend_from_slice(&x.to_le_bytes());
        }
        body.extend_from_slice(&[2, 0, 0, 0, b'a', b'b', 1, 0, 0, 0, b'c']);
        let req = InferRequest::from_json(&body, Some(json.len())).unwrap();
        assert_eq!(
            req.inputs[0].data,
            TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(
            req.inputs[1].data,
            TensorData::Bytes(vec![b"ab".to_vec(), b"c".to_vec()])
        );
        assert!(
            req.inputs[0].parameters.is_empty(),
            "framing parameter is consumed"
        );
        assert!(req.binary_output("anything"));
    }

    #[test]
    fn binary_framing_errors_say_what_is_wrong() {
        let json = br#"{"inputs":[{"name":"IN","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[0; 4]);
        let short = InferRequest::from_json(&body, Some(json.len())).unwrap_err();
        assert!(
            short.to_string().contains("binary_data_size 8 but only 4"),
            "{short}"
        );
        body.extend_from_slice(&[0; 8]);
        let trailing = InferRequest::from_json(&body, Some(json.len())).unwrap_err();
        assert!(
            trailing.to_string().contains("4 trailing bytes"),
            "{trailing}"
        );
        let too_long = InferRequest::from_json(&body, Some(body.len() + 1)).unwrap_err();
        assert!(
            too_long.to_string().contains("exceeds the body size"),
            "{too_long}"
        );
    }

    #[test]
    fn shape_that_does_not_match_the_element_count_is_rejected_with_both_numbers() {
        let body = br#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let err = InferRequest::from_json(body, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input 'x': shape [2, 4] holds 8 elements but the data has 4"
        );
    }

    #[test]
    fn malformed_json_error_says_where() {
        let err = InferRequest::from_json(br#"{"inputs":[{"name":"x","shape":[1,"a"]}]}"#, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid JSON body:") && err.contains("column"),
            "{err}"
        );
        let missing =
            InferRequest::from_json(br#"{"inputs":[{"name":"x","shape":[1],"data":[1]}]}"#, None)
                .unwrap_err()
                .to_string();
        assert!(missing.contains("missing field `datatype`"), "{missing}");
    }

    #[test]
    fn data_of_the_wrong_element_type_names_the_tensor_and_the_value() {
        let cases: [(&[u8], &str); 3] = [
            (
                br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT8","data":[1,300]}]}"#,
                "input 'x': invalid `data`: invalid value: integer `300`",
            ),
            (
                br#"{"inputs":[{"name":"b","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
                "input 'b': invalid `data`: invalid value: integer `1`, expected a boolean",
            ),
            (
                br#"{"inputs":[{"name":"f","shape":[1],"datatype":"FP32","data":["1"]}]}"#,
                "input 'f': invalid `data`: invalid value: string \"1\", expected a number",
            ),
        ];
        for (body, want) in cases {
            let err = InferRequest::from_json(body, None).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn input_without_data_is_rejected() {
        let err = InferRequest::from_json(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            V2Error::MissingData {
                tensor: "input 'x'".into()
            }
        );
    }

    #[test]
    fn proto_raw_contents_must_match_the_inputs() {
        let mut pb = request_with_every_datatype().to_proto("m", None, true);
        pb.raw_input_contents.pop();
        let err = InferRequest::from_proto(pb).unwrap_err();
        assert!(
            err.to_string()
                .contains("12 raw_input_contents for 13 inputs"),
            "{err}"
        );
    }

    #[test]
    fn proto_typed_values_out_of_range_are_rejected() {
        let pb = pb::ModelInferRequest {
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "UINT8".into(),
                shape: vec![1],
                contents: Some(pb::InferTensorContents {
                    uint_contents: vec![256],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = InferRequest::from_proto(pb).unwrap_err();
        assert_eq!(err.to_string(), "input 'x': value 256 does not fit UINT8");
    }

    #[test]
    fn requested_output_binary_flag_follows_triton_precedence() {
        let body = br#"{"inputs":[],"outputs":[{"name":"a","parameters":{"binary_data":true}},{"name":"b"}],"parameters":{"binary_data_output":true}}"#;
        let req = InferRequest::from_json(body, None).unwrap();
        assert!(req.binary_output("a"));
        assert!(!req.binary_output("b"));
        assert!(req.binary_output("unlisted"));
    }

    #[test]
    fn parameters_convert_between_json_and_proto() {
        let params: Parameters =
            serde_json::from_str(r#"{"b":true,"i":-3,"u":18446744073709551615,"d":0.5,"s":"x"}"#)
                .unwrap();
        assert_eq!(params_from_proto(params_to_proto(&params)), params);
    }

    #[test]
    fn error_body_is_a_json_object_with_an_error_key() {
        let body: Value = serde_json::from_slice(&error_body("model \"m\" not found")).unwrap();
        assert_eq!(body, serde_json::json!({"error": "model \"m\" not found"}));
    }
}
