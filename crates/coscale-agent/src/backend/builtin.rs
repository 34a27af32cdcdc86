//! coscale's built-in ONNX runtime (tract), running in the agent's process.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use coscale_api::pb::inference as pb;
use coscale_api::v2::{InferRequest, InferResponse};
use coscale_runtime::{Engine, RuntimeError};

use super::{artifact_size, Backend};

/// An inference expected to take at most this long runs on the async worker that received
/// the request; a longer one hands the worker over (`block_in_place`) so that requests that
/// arrive meanwhile are still accepted and counted as in flight. The hand-over wakes another
/// thread to take the worker's place and switches context at least twice: in a profile of the
/// agent serving iris-mlp (~124 µs per inference) at 8 connections, 14 runtime threads took
/// turns and 22 % of the samples were in the kernel. That is most of the work of a small model
/// and a few per cent of a 1 ms one. Meanwhile requests on the busy worker's connections wait
/// unread for at most about this long (the other workers keep accepting).
const INLINE_BUDGET: Duration = Duration::from_millis(1);

/// coscale's built-in ONNX runtime, in process.
///
/// Inferences run at most `parallelism` at a time (one per core); the others wait for a
/// permit *inside* the request handler, in arrival order (the semaphore is fair), so they count
/// as in flight: the inference lag the autoscaler reads includes the queue, as it would for a
/// remote inference server. A permitted inference runs inline when its model's recent cost
/// predicts it fits [`INLINE_BUDGET`], else through `block_in_place`.
pub struct Builtin {
    engine: Arc<Engine>,
    parallelism: usize,
    permits: tokio::sync::Semaphore,
    /// Requests waiting for a permit.
    queued: AtomicUsize,
    /// Per loaded model (internal name): its measured cost.
    costs: RwLock<HashMap<String, Arc<Cost>>>,
    /// Tests only: the ids of requests in the order they got a slot.
    #[cfg(test)]
    granted: std::sync::Mutex<Vec<Option<String>>>,
}

/// The measured cost of one model's inferences: a moving average of nanoseconds per input
/// element, so that a large batch is predicted to take longer than the single rows before it.
#[derive(Debug)]
struct Cost {
    nanos_per_element: AtomicU64,
}

impl Cost {
    /// Nothing measured yet: the first inference is not assumed to be short.
    const UNMEASURED: u64 = u64::MAX;

    fn new() -> Self {
        Cost {
            nanos_per_element: AtomicU64::new(Self::UNMEASURED),
        }
    }

    /// Whether an inference over `elements` input elements is predicted to fit the budget.
    fn fits(&self, elements: u64, budget: Duration) -> bool {
        match self.nanos_per_element.load(Ordering::Relaxed) {
            Self::UNMEASURED => false,
            per => {
                let budget = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
                per.saturating_mul(elements.max(1)) <= budget
            }
        }
    }

    /// Folds one measured inference into the average (weight 1/8; concurrent updates may
    /// lose one sample, which only makes the average a little slower to move).
    fn record(&self, elements: u64, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let sample = nanos / elements.max(1);
        let old = self.nanos_per_element.load(Ordering::Relaxed);
        let new = if old == Self::UNMEASURED {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.nanos_per_element.store(new, Ordering::Relaxed);
    }
}

/// Input elements of a request (what its inference time grows with).
fn input_elements(request: &InferRequest) -> u64 {
    let n: usize = request.inputs.iter().map(|t| t.data.len()).sum();
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Builtin {
    pub fn new() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_parallelism(parallelism)
    }

    /// At most `parallelism` inferences at a time (at least one).
    pub fn with_parallelism(parallelism: usize) -> Self {
        Self {
            engine: Arc::new(Engine::new()),
            parallelism: parallelism.max(1),
            permits: tokio::sync::Semaphore::new(parallelism.max(1)),
            queued: AtomicUsize::new(0),
            costs: RwLock::new(HashMap::new()),
            #[cfg(test)]
            granted: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Most inferences at a time.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// Requests waiting for an inference slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn cost(&self, internal: &str) -> Option<Arc<Cost>> {
        self.costs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(internal)
            .cloned()
    }
}

impl Default for Builtin {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a request in [`Builtin::queued`] until it has its permit (or is dropped waiting).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Queued(counter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Backend for Builtin {
    fn kind(&self) -> &'static str {
        "builtin"
    }

    fn unavailable_reason(&self) -> Option<String> {
        None
    }

    async fn load(&self, internal: &str, artifact: &Path) -> Result<u64, RuntimeError> {
        let engine = self.engine.clone();
        let name = internal.to_owned();
        let path = artifact.to_owned();
        let size = artifact_size(&path);
        tokio::task::spawn_blocking(move || engine.load(&name, &path))
            .await
            .map_err(|e| RuntimeError::Internal(format!("load task failed: {e}")))??;
        self.costs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(internal.to_owned(), Arc::new(Cost::new()));
        Ok(size)
    }

    async fn unload(&self, internal: &str) -> Result<(), RuntimeError> {
        self.costs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(internal);
        self.engine.unload(internal)
    }

    fn ready(&self, internal: &str) -> bool {
        self.engine.ready(internal)
    }

    fn metadata(&self, internal: &str) -> Result<pb::ModelMetadataResponse, RuntimeError> {
        self.engine
            .metadata(internal)
            .map(|m| m.to_proto())
            .ok_or_else(|| RuntimeError::NotFound(internal.to_owned()))
    }

    async fn infer(
        &self,
        internal: &str,
        request: &InferRequest,
    ) -> Result<InferResponse, RuntimeError> {
        let queued = Queued::enter(&self.queued);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RuntimeError::Internal("runtime is shutting down".to_owned()))?;
        drop(queued);
        #[cfg(test)]
        self.granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request.id.clone());
        let Some(cost) = self.cost(internal) else {
            // Not loaded (or unloaded meanwhile): the engine says so.
            return self.engine.infer(internal, request);
        };
        let elements = input_elements(request);
        let started = Instant::now();
        let result = if cost.fits(elements, INLINE_BUDGET) {
            self.engine.infer(internal, request)
        } else {
            // CPU-bound for a while: tell tokio so the worker's other tasks (accepting and
            // counting new requests) move to another thread meanwhile.
            tokio::task::block_in_place(|| self.engine.infer(internal, request))
        };
        if result.is_ok() {
            cost.record(elements, started.elapsed());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_unmeasured_model_is_not_run_inline() {
        assert!(!Cost::new().fits(1, Duration::from_secs(1)));
    }

    #[test]
    fn the_prediction_grows_with_the_batch_and_follows_the_measurements() {
        let cost = Cost::new();
        cost.record(4, Duration::from_micros(20)); // 5 µs per element
        assert!(cost.fits(4, Duration::from_micros(100)));
        assert!(cost.fits(20, Duration::from_micros(100)));
        assert!(!cost.fits(21, Duration::from_micros(100)));
        // A model that became slow (e.g. the machine is loaded) stops running inline after a
        // few inferences; one slow outlier alone does not flip it.
        cost.record(4, Duration::from_micros(400));
        assert!(cost.fits(4, Duration::from_micros(100)));
        for _ in 0..8 {
            cost.record(4, Duration::from_micros(400));
        }
        assert!(!cost.fits(4, Duration::from_micros(100)));
    }

    #[test]
    fn an_empty_request_counts_as_one_element() {
        let cost = Cost::new();
        cost.record(0, Duration::from_micros(10));
        assert!(cost.fits(0, Duration::from_micros(10)));
        assert!(!cost.fits(0, Duration::from_micros(9)));
    }

    fn iris_request() -> InferRequest {
        let body = br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}"#;
        InferRequest::from_json(body, None).unwrap()
    }

    /// A backend with one inference slot and the example iris model loaded as `iris_1`.
    async fn iris_on_one_slot() -> Arc<Builtin> {
        let iris = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/models/iris/model.onnx");
        let backend = Arc::new(Builtin::with_parallelism(1));
        backend.load("iris_1", &iris).await.unwrap();
        backend
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_for_a_slot_are_in_flight_and_served_in_arrival_order() {
        use crate::stats::{Protocol, Stats};
        let backend = iris_on_one_slot().await;
        let stats = Stats::new("s", 0, 1 << 30, 0);
        stats.model_loaded("iris", 1, "iris_1", 0);

        // Warm up: the first inference (unmeasured) goes through block_in_place, the next
        // ones run inline once the model is measured as fast.
        for _ in 0..3 {
            backend.infer("iris_1", &iris_request()).await.unwrap();
        }

        // Hold the only slot; requests queue behind it and are counted as in flight.
        let held = backend.permits.acquire().await.unwrap();
        backend.granted.lock().unwrap().clear();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..4 {
            let inflight = stats.begin("iris_1", Protocol::Rest).unwrap();
            let (task_backend, done_tx) = (backend.clone(), done_tx.clone());
            let mut request = iris_request();
            request.id = Some(i.to_string());
            tokio::spawn(async move {
                let result = task_backend.infer("iris_1", &request).await;
                inflight.finish("200", result.is_ok());
                done_tx.send((i, result)).unwrap();
            });
            wait_for("the request to queue", || backend.queued() == i + 1).await;
        }
        assert_eq!(stats.in_flight("iris_1"), 4);
        drop(held);
        for _ in 0..4 {
            let (_, result) = done_rx.recv().await.unwrap();
            let response = result.unwrap();
            assert_eq!(response.outputs.len(), 2, "{response:?}");
        }
        // The order in which they got the slot (the order in which they report back can
        // differ: a request may finish before the one ahead of it has sent its answer).
        let granted = backend.granted.lock().unwrap().clone();
        assert_eq!(
            granted,
            ["0", "1", "2", "3"].map(|i| Some(i.to_owned())).to_vec()
        );
        assert_eq!(backend.queued(), 0);
        wait_for("no request in flight", || stats.in_flight("iris_1") == 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_stops_waiting_leaves_the_queue() {
        let backend = iris_on_one_slot().await;
        let held = backend.permits.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let backend = backend.clone();
            async move { backend.infer("iris_1", &iris_request()).await }
        });
        wait_for("the request to queue", || backend.queued() == 1).await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(backend.queued(), 0);
        drop(held);
        backend.infer("iris_1", &iris_request()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_models_are_not_found() {
        let backend = Builtin::with_parallelism(1);
        let err = backend.infer("nope_1", &iris_request()).await.unwrap_err();
        assert!(matches!(err, RuntimeError::NotFound(_)), "{err:?}");
    }
}
