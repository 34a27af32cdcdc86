//! coscale's built-in ONNX runtime (tract), running in the agent's process.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use coscale_api::pb::inference as pb;
use coscale_api::v2::{InferRequest, InferResponse};
use coscale_runtime::{Engine, RuntimeError};

use super::{artifact_size, Backend};

/// coscale's built-in ONNX runtime, in process.
///
/// Inferences run at most `parallelism` at a time (one per core); the others wait for a
/// permit *inside* the request handler, in arrival order (the semaphore is fair), so they count
/// as in flight: the inference lag the autoscaler reads includes the queue, as it would for a
/// remote inference server. A permitted inference runs as the runtime alone runs it
/// ([`Engine::infer_on_worker`]): inline once it has an inline slot (one fewer than the
/// workers) when its model's recent cost predicts it fits the engine's inline budget, else
/// through `block_in_place`.
pub struct Builtin {
    engine: Arc<Engine>,
    parallelism: usize,
    permits: tokio::sync::Semaphore,
    /// Requests waiting for a permit.
    queued: AtomicUsize,
    /// Tests only: the ids of requests in the order they got a slot.
    #[cfg(test)]
    granted: std::sync::Mutex<Vec<Option<String>>>,
}

impl Builtin {
    /// At most `parallelism` inferences at a time (at least one) on `engine`.
    pub fn new(parallelism: usize, engine: Engine) -> Self {
        Self {
            engine: Arc::new(engine),
            parallelism: parallelism.max(1),
            permits: tokio::sync::Semaphore::new(parallelism.max(1)),
            queued: AtomicUsize::new(0),
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
        Ok(size)
    }

    async fn unload(&self, internal: &str) -> Result<(), RuntimeError> {
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
        self.engine.infer_on_worker(internal, request).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::{Duration, Instant};

    fn iris_request() -> InferRequest {
        let body = br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}"#;
        InferRequest::from_json(body, None).unwrap()
    }

    /// A backend with one inference slot and the example iris model loaded as `iris_1`.
    async fn iris_on_one_slot() -> Arc<Builtin> {
        let iris = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/models/iris/model.onnx");
        let backend = Arc::new(Builtin::new(1, Engine::new()));
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
        let backend = Builtin::new(1, Engine::new());
        let err = backend.infer("nope_1", &iris_request()).await.unwrap_err();
        assert!(matches!(err, RuntimeError::NotFound(_)), "{err:?}");
    }
}
