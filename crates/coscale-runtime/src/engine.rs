//! [`Engine`]: ONNX models loaded with tract, addressed by name, run on V2 requests.
//!
//! Each model is optimised once with a symbolic size for every dimension the ONNX file leaves
//! open (normally the batch dimension), so one plan serves any batch size. Loading is blocking
//! (call it from `spawn_blocking`); `infer` is CPU-bound and thread-safe, and
//! `infer_on_worker` is how async code runs it (see [`crate::cost`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow as format_err, bail};
use coscale_api::pb::inference as pb;
use coscale_api::v2::{Datatype, InferRequest, InferResponse, Tensor, TensorData};
use serde::Serialize;
use tokio::sync::Semaphore;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::cost::{input_elements, Cost, INLINE_BUDGET};
use crate::error::RuntimeError;

/// The only version a runtime model has.
pub const MODEL_VERSION: &str = "1";

/// Name, datatype and shape of one model input or output (`-1` = any size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
}

/// V2 model metadata (`GET /v2/models/{m}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

impl ModelMetadata {
    /// The gRPC form.
    pub fn to_proto(&self) -> pb::ModelMetadataResponse {
        let tensors = |ts: &[TensorMetadata]| {
            ts.iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name.clone(),
                    datatype: t.datatype.to_string(),
                    shape: t.shape.clone(),
                })
                .collect()
        };
        pb::ModelMetadataResponse {
            name: self.name.clone(),
            versions: self.versions.clone(),
            platform: self.platform.clone(),
            inputs: tensors(&self.inputs),
            outputs: tensors(&self.outputs),
        }
    }
}

/// Repository state of a model, as V2 repository index entries spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    Ready,
    Unavailable,
}

impl ModelState {
    /// `"READY"` / `"UNAVAILABLE"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub state: ModelState,
    pub reason: String,
}

struct LoadedModel {
    metadata: ModelMetadata,
    /// tract element type of each input, in `metadata.inputs` order.
    input_types: Vec<DatumType>,
    plan: Arc<TypedRunnableModel>,
    /// What its inferences have cost so far (fresh for every load).
    cost: Cost,
}

enum Slot {
    Ready(Arc<LoadedModel>),
    /// Known but not servable: the reason (load failure, "unloaded").
    Unavailable(String),
}

/// Loaded models by name. Share it as `Arc<Engine>`; every method takes `&self`.
pub struct Engine {
    models: RwLock<HashMap<String, Slot>>,
    /// Inline slots of [`Engine::infer_on_worker`]: one fewer than the async runtime's workers
    /// (none on a runtime with one worker), made on first use from the runtime that calls it.
    inline: OnceLock<Option<Semaphore>>,
    /// The longest predicted inference [`Engine::infer_on_worker`] runs inline.
    inline_budget: Duration,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::with_inline_budget(INLINE_BUDGET)
    }
}

/// What `f` returns and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

/// Checks a V2 model name: `[A-Za-z0-9._-]`, 1–255 characters, not `.` or `..`.
pub fn validate_model_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::BadName(name.to_string()))
    }
}

impl Engine {
    /// An engine with no models.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// An engine with no models that runs inferences predicted to take at most `budget`
    /// inline (see [`Engine::infer_on_worker`]; the default is [`INLINE_BUDGET`]).
    pub fn with_inline_budget(budget: Duration) -> Engine {
        Engine {
            models: RwLock::default(),
            inline: OnceLock::new(),
            inline_budget: budget,
        }
    }

    /// Loads (or reloads) model `name` from `artifact`: a `.onnx` file, or a folder holding
    /// `model.onnx` or exactly one `.onnx` file. Blocking. On success the model serves requests
    /// and its metadata is returned; a reload replaces the old plan only once the new one is
    /// ready. On failure a previously loaded version keeps serving, otherwise the model is
    /// listed as UNAVAILABLE with the reason.
    pub fn load(&self, name: &str, artifact: &Path) -> Result<ModelMetadata, RuntimeError> {
        validate_model_name(name)?;
        let result = find_onnx(artifact).and_then(|file| {
            compile(name, &file).map_err(|e| RuntimeError::Artifact {
                path: file.clone(),
                reason: format!("{e:#}"),
            })
        });
        let mut models = self.write();
        match result {
            Ok(model) => {
                let metadata = model.metadata.clone();
                models.insert(name.to_string(), Slot::Ready(Arc::new(model)));
                tracing::info!(model = name, path = %artifact.display(), "model loaded");
                Ok(metadata)
            }
            Err(e) => {
                if !matches!(models.get(name), Some(Slot::Ready(_))) {
                    models.insert(name.to_string(), Slot::Unavailable(e.to_string()));
                }
                tracing::warn!(model = name, error = %e, "model load failed");
                Err(e)
            }
        }
    }

    /// Stops serving `name`; it stays in the index as UNAVAILABLE. NotFound if not loaded.
    pub fn unload(&self, name: &str) -> Result<(), RuntimeError> {
        let mut models = self.write();
        match models.get(name) {
            Some(Slot::Ready(_)) => {
                models.insert(name.to_string(), Slot::Unavailable("unloaded".into()));
                Ok(())
            }
            _ => Err(RuntimeError::NotFound(name.to_string())),
        }
    }

    /// True when `name` is loaded and serving.
    pub fn ready(&self, name: &str) -> bool {
        self.get(name).is_ok()
    }

    /// Metadata of a loaded model.
    pub fn metadata(&self, name: &str) -> Option<ModelMetadata> {
        self.get(name).ok().map(|m| m.metadata.clone())
    }

    /// NotFound / VersionNotFound unless `name` is loaded and `version` (if given) is one of its
    /// versions.
    pub fn check_version(&self, name: &str, version: Option<&str>) -> Result<(), RuntimeError> {
        let model = self.get(name)?;
        match version {
            Some(v) if !model.metadata.versions.iter().any(|x| x == v) => {
                Err(RuntimeError::VersionNotFound {
                    model: name.to_string(),
                    version: v.to_string(),
                    available: model.metadata.versions.join(", "),
                })
            }
            _ => Ok(()),
        }
    }

    /// Every model the engine knows, sorted by name.
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.read();
        let mut out: Vec<IndexEntry> = models
            .iter()
            .map(|(name, slot)| match slot {
                Slot::Ready(_) => IndexEntry {
                    name: name.clone(),
                    version: Some(MODEL_VERSION.to_string()),
                    state: ModelState::Ready,
                    reason: String::new(),
                },
                Slot::Unavailable(reason) => IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: reason.clone(),
                },
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Runs `request` on model `name`. Inputs must match the model's inputs by name, datatype
    /// and shape (BadInput otherwise); requested outputs are returned in the requested order,
    /// all outputs when none are requested. CPU-bound: async code calls [`Engine::infer_on_worker`].
    pub fn infer(&self, name: &str, request: &InferRequest) -> Result<InferResponse, RuntimeError> {
        self.get(name)?.infer(name, request)
    }

    /// [`Engine::infer`] from async code on a tokio worker. An inference that its model's
    /// measured cost predicts to fit the inline budget runs inline, on the worker that read the
    /// request, once it has one of the engine's inline slots: one fewer than the runtime's
    /// workers (none with a single worker), so one worker is always free to read requests while
    /// the others compute, and a request waiting for a slot waits in its handler, where it
    /// counts as in flight (the inference lag), not unread in a socket buffer. A longer or
    /// unmeasured one, or any with no slot to wait for, hands its worker over
    /// (`block_in_place`) for as long as it runs. On a current-thread runtime, which has no
    /// other worker, every inference runs inline.
    pub async fn infer_on_worker(
        &self,
        name: &str,
        request: &InferRequest,
    ) -> Result<InferResponse, RuntimeError> {
        let model = self.get(name)?;
        let elements = input_elements(request);
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let (result, took) = match handle {
            None => timed(|| model.infer(name, request)),
            Some(h) => match self.inline_slots(&h) {
                Some(slots) if model.cost.fits(elements, self.inline_budget) => {
                    let _slot = slots.acquire().await.map_err(|_| {
                        RuntimeError::Internal("the inline slots are closed".to_owned())
                    })?;
                    timed(|| model.infer(name, request))
                }
                _ => tokio::task::block_in_place(|| timed(|| model.infer(name, request))),
            },
        };
        if result.is_ok() {
            model.cost.record(elements, took);
        }
        result
    }

    /// The inline slots, counted on first use from the workers of `runtime` (see `inline`).
    fn inline_slots(&self, runtime: &tokio::runtime::Handle) -> Option<&Semaphore> {
        self.inline
            .get_or_init(|| {
                let n = runtime.metrics().num_workers().saturating_sub(1);
                (n > 0).then(|| Semaphore::new(n))
            })
            .as_ref()
    }

    fn get(&self, name: &str) -> Result<Arc<LoadedModel>, RuntimeError> {
        match self.read().get(name) {
            Some(Slot::Ready(m)) => Ok(m.clone()),
            _ => Err(RuntimeError::NotFound(name.to_string())),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock cannot leave the map half-written: recover it.
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Slot>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl LoadedModel {
    fn infer(&self, name: &str, request: &InferRequest) -> Result<InferResponse, RuntimeError> {
        let inputs = self.prepare_inputs(request)?;
        let selected = self.select_outputs(request)?;
        let results = self
            .plan
            .run(inputs)
            .map_err(|e| RuntimeError::Internal(format!("model '{name}': {e:#}")))?;
        let mut outputs = Vec::with_capacity(selected.len());
        for ix in selected {
            let meta = &self.metadata.outputs[ix];
            let value = results.get(ix).ok_or_else(|| {
                RuntimeError::Internal(format!("model '{name}' produced no output {ix}"))
            })?;
            outputs.push(to_v2(&meta.name, value).map_err(|e| {
                RuntimeError::Internal(format!("model '{name}' output '{}': {e:#}", meta.name))
            })?);
        }
        Ok(InferResponse {
            model_name: name.to_string(),
            model_version: Some(MODEL_VERSION.to_string()),
            id: request.id.clone(),
            parameters: Default::default(),
            outputs,
        })
    }

    /// Validates the request's inputs against the metadata and orders them as the model wants.
    fn prepare_inputs(&self, request: &InferRequest) -> Result<TVec<TValue>, RuntimeError> {
        let meta = &self.metadata;
        if let Some(extra) = request
            .inputs
            .iter()
            .find(|t| !meta.inputs.iter().any(|m| m.name == t.name))
        {
            return Err(RuntimeError::BadInput(format!(
                "unknown input '{}'; model '{}' takes {}",
                extra.name,
                meta.name,
                describe(&meta.inputs)
            )));
        }
        let mut out = TVec::new();
        for (m, dt) in meta.inputs.iter().zip(&self.input_types) {
            let mut found = request.inputs.iter().filter(|t| t.name == m.name);
            let (Some(t), None) = (found.next(), found.next()) else {
                return Err(RuntimeError::BadInput(format!(
                    "model '{}' needs exactly one input '{}' ({} {:?})",
                    meta.name, m.name, m.datatype, m.shape
                )));
            };
            if t.datatype != m.datatype {
                return Err(RuntimeError::BadInput(format!(
                    "input '{}' must be {} but is {}",
                    m.name, m.datatype, t.datatype
                )));
            }
            let fits = t.shape.len() == m.shape.len()
                && t.shape
                    .iter()
                    .zip(&m.shape)
                    .all(|(got, want)| *want < 0 || got == want);
            if !fits {
                return Err(RuntimeError::BadInput(format!(
                    "input '{}' has shape {:?} but the model expects {:?} (-1 = any size)",
                    m.name, t.shape, m.shape
                )));
            }
            t.validate(&format!("input '{}'", t.name))?;
            out.push(to_tract(t, *dt)?.into());
        }
        Ok(out)
    }

    /// Indices of the outputs to return.
    fn select_outputs(&self, request: &InferRequest) -> Result<Vec<usize>, RuntimeError> {
        let outs = &self.metadata.outputs;
        if request.outputs.is_empty() {
            return Ok((0..outs.len()).collect());
        }
        request
            .outputs
            .iter()
            .map(|r| {
                outs.iter().position(|o| o.name == r.name).ok_or_else(|| {
                    RuntimeError::BadInput(format!(
                        "unknown output '{}'; model '{}' has {}",
                        r.name,
                        self.metadata.name,
                        describe(outs)
                    ))
                })
            })
            .collect()
    }
}

fn describe(ts: &[TensorMetadata]) -> String {
    ts.iter()
        .map(|t| format!("'{}' {} {:?}", t.name, t.datatype, t.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves an artifact path to one `.onnx` file.
fn find_onnx(artifact: &Path) -> Result<PathBuf, RuntimeError> {
    let err = |reason: String| RuntimeError::Artifact {
        path: artifact.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(artifact).map_err(|e| err(e.to_string()))?;
    if meta.is_file() {
        return Ok(artifact.to_path_buf());
    }
    let preferred = artifact.join("model.onnx");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(artifact)
        .map_err(|e| err(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(err("the folder holds no .onnx file".into())),
        n => Err(err(format!(
            "the folder holds {n} .onnx files and no model.onnx; keep exactly one"
        ))),
    }
}

/// Parses, types and optimises an ONNX file, with a symbol for every open dimension.
fn compile(name: &str, file: &Path) -> TractResult<LoadedModel> {
    let mut model = tract_onnx::onnx().model_for_path(file)?;
    let input_names: Vec<String> = model
        .input_outlets()?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let output_names: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .unwrap_or(&model.node(o.node).name)
                .to_string()
        })
        .collect();
    let mut input_types = Vec::new();
    for (ix, input_name) in input_names.iter().enumerate() {
        let fact = model.input_fact(ix)?.clone();
        let dt = fact
            .datum_type
            .concretize()
            .ok_or_else(|| format_err!("input '{input_name}' declares no element type"))?;
        let rank = fact
            .shape
            .rank()
            .concretize()
            .ok_or_else(|| format_err!("input '{input_name}' declares no shape"))?;
        let dims: TVec<TDim> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(d, dim)| {
                dim.concretize().unwrap_or_else(|| {
                    let sym = if d == 0 {
                        "N".to_string()
                    } else {
                        format!("{input_name}_{d}")
                    };
                    model.symbols.sym(&sym).into()
                })
            })
            .collect();
        if dims.len() as i64 != rank {
            bail!("input '{input_name}' has an incomplete shape");
        }
        model.set_input_fact(ix, InferenceFact::dt_shape(dt, dims))?;
        input_types.push(dt);
    }
    let typed = model.into_optimized()?;
    let dims_of = |shape: &ShapeFact| {
        shape
            .iter()
            .map(|d| d.as_i64().unwrap_or(-1))
            .collect::<Vec<i64>>()
    };
    let inputs = input_names
        .iter()
        .zip(&input_types)
        .enumerate()
        .map(|(ix, (n, dt))| {
            Ok(TensorMetadata {
                name: n.clone(),
                datatype: v2_datatype(*dt)?,
                shape: dims_of(&typed.input_fact(ix)?.shape),
            })
        })
        .collect::<TractResult<Vec<_>>>()?;
    let outputs = output_names
        .iter()
        .enumerate()
        .map(|(ix, n)| {
            let fact = typed.output_fact(ix)?;
            Ok(TensorMetadata {
                name: n.clone(),
                datatype: v2_datatype(fact.datum_type)?,
                shape: dims_of(&fact.shape),
            })
        })
        .collect::<TractResult<Vec<_>>>()?;
    let plan = typed.into_runnable()?;
    Ok(LoadedModel {
        metadata: ModelMetadata {
            name: name.to_string(),
            versions: vec![MODEL_VERSION.to_string()],
            platform: "onnx".to_string(),
            inputs,
            outputs,
        },
        input_types,
        plan,
        cost: Cost::new(),
    })
}

/// The V2 datatype a tract element type is served as (symbolic dims come out as INT64).
fn v2_datatype(dt: DatumType) -> TractResult<Datatype> {
    Ok(match dt {
        DatumType::Bool => Datatype::Bool,
        DatumType::U8 => Datatype::Uint8,
        DatumType::U16 => Datatype::Uint16,
        DatumType::U32 => Datatype::Uint32,
        DatumType::U64 => Datatype::Uint64,
        DatumType::I8 => Datatype::Int8,
        DatumType::I16 => Datatype::Int16,
        DatumType::I32 => Datatype::Int32,
        DatumType::I64 | DatumType::TDim => Datatype::Int64,
        DatumType::F16 => Datatype::Fp16,
        DatumType::F32 => Datatype::Fp32,
        DatumType::F64 => Datatype::Fp64,
        DatumType::String => Datatype::Bytes,
        other => bail!("element type {other:?} has no V2 datatype"),
    })
}

/// Builds the tract tensor for a validated V2 input.
fn to_tract(t: &Tensor, dt: DatumType) -> Result<tract_onnx::prelude::Tensor, RuntimeError> {
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(0))
        .collect();
    fn build<T: Datum>(shape: &[usize], v: Vec<T>) -> TractResult<tract_onnx::prelude::Tensor> {
        Ok(tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(shape), v)?.into_tensor())
    }
    let tensor = match &t.data {
        TensorData::Bool(v) => build(&shape, v.clone()),
        TensorData::Uint8(v) => build(&shape, v.clone()),
        TensorData::Uint16(v) => build(&shape, v.clone()),
        TensorData::Uint32(v) => build(&shape, v.clone()),
        TensorData::Uint64(v) => build(&shape, v.clone()),
        TensorData::Int8(v) => build(&shape, v.clone()),
        TensorData::Int16(v) => build(&shape, v.clone()),
        TensorData::Int32(v) => build(&shape, v.clone()),
        TensorData::Int64(v) => build(&shape, v.clone()),
        TensorData::Fp16(v) => build(&shape, v.clone()),
        TensorData::Fp32(v) => build(&shape, v.clone()),
        TensorData::Fp64(v) => build(&shape, v.clone()),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .map(|b| String::from_utf8(b.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    RuntimeError::BadInput(format!("input '{}' holds non-UTF-8 BYTES", t.name))
                })?;
            build(&shape, strings)
        }
    }
    .map_err(|e| RuntimeError::BadInput(format!("input '{}': {e}", t.name)))?;
    // An INT64 input may feed a TDim-typed model input; tract wants the exact type.
    if tensor.datum_type() == dt {
        Ok(tensor)
    } else {
        tensor
            .cast_to_dt(dt)
            .map(|c| c.into_owned())
            .map_err(|e| RuntimeError::BadInput(format!("input '{}': {e}", t.name)))
    }
}

/// Converts one tract output into a V2 tensor.
fn to_v2(name: &str, value: &TValue) -> TractResult<Tensor> {
    let shape: Vec<i64> = value.shape().iter().map(|d| *d as i64).collect();
    fn vec_of<T: Datum>(t: &tract_onnx::prelude::Tensor) -> TractResult<Vec<T>> {
        Ok(t.to_plain_array_view::<T>()?.iter().cloned().collect())
    }
    let t: &tract_onnx::prelude::Tensor = value;
    let data = match t.datum_type() {
        DatumType::Bool => TensorData::Bool(vec_of(t)?),
        DatumType::U8 => TensorData::Uint8(vec_of(t)?),
        DatumType::U16 => TensorData::Uint16(vec_of(t)?),
        DatumType::U32 => TensorData::Uint32(vec_of(t)?),
        DatumType::U64 => TensorData::Uint64(vec_of(t)?),
        DatumType::I8 => TensorData::Int8(vec_of(t)?),
        DatumType::I16 => TensorData::Int16(vec_of(t)?),
        DatumType::I32 => TensorData::Int32(vec_of(t)?),
        DatumType::I64 => TensorData::Int64(vec_of(t)?),
        DatumType::TDim => TensorData::Int64(vec_of(&*t.cast_to::<i64>()?)?),
        DatumType::F16 => TensorData::Fp16(vec_of(t)?),
        DatumType::F32 => TensorData::Fp32(vec_of(t)?),
        DatumType::F64 => TensorData::Fp64(vec_of(t)?),
        DatumType::String => TensorData::Bytes(
            vec_of::<String>(t)?
                .into_iter()
                .map(String::into_bytes)
                .collect(),
        ),
        other => bail!("element type {other:?} has no V2 datatype"),
    };
    Ok(Tensor::new(name, shape, data))
}
