//! The router end to end on 127.0.0.1: real TCP, fake agents (an axum REST server, and a tonic
//! gRPC service served as the agent serves its own, by `coscale_runtime::serve_http` of
//! `grpc_app`) that record what they received and can be told to fail, hang or hold requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coscale_api::pb::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use coscale_api::pb::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use coscale_api::pb::inference::*;
use coscale_api::routing::{Endpoint, ModelRoute, RoutingTable};
use coscale_router::{serve, RouterConfig, RouterHandle};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

const DEADLINE: Duration = Duration::from_secs(10);

/// What a fake agent does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer 200 with a JSON body naming the agent.
    Ok,
    /// Answer 500 with a plain-text body.
    Fail500,
    /// Wait for a permit of the agent's gate, then answer like `Ok`.
    Hold,
}

/// One request as an agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    model: Option<String>,
    internal: Option<String>,
    body_len: usize,
}

struct FakeAgent {
    name: &'static str,
    mode: Mode,
    seen: Mutex<Vec<Seen>>,
    arrivals: watch::Sender<usize>,
    gate: Semaphore,
    /// gRPC calls held (Mode::Hold) that were dropped before the gate let them go: cancelled.
    abandoned: watch::Sender<usize>,
}

impl FakeAgent {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn record(&self, seen: Seen) {
        self.seen.lock().unwrap().push(seen);
        self.arrivals.send_modify(|n| *n += 1);
    }

    /// Waits until `n` requests have reached this agent.
    async fn wait_arrivals(&self, n: usize, what: &str) {
        let mut arrivals = self.arrivals.subscribe();
        tokio::time::timeout(DEADLINE, arrivals.wait_for(|count| *count == n))
            .await
            .expect(what)
            .unwrap();
    }
}

/// A ModelInferRequest for `model` with nothing else set.
fn infer_message(model: &str) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        ..Default::default()
    }
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn agent_rest(State(agent): State<Arc<FakeAgent>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let model = header(&request, "seldon-model");
    let internal = header(&request, "seldon-internal-model");
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    agent.record(Seen {
        path,
        model,
        internal: internal.clone(),
        body_len: body.len(),
    });
    match agent.mode {
        Mode::Fail500 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Mode::Hold => {
            let _permit = agent.gate.acquire().await.unwrap();
            axum::Json(serde_json::json!({"agent": agent.name, "internal": internal}))
                .into_response()
        }
        Mode::Ok => axum::Json(serde_json::json!({"agent": agent.name, "internal": internal}))
            .into_response(),
    }
}

/// The gRPC face of a fake agent.
struct GrpcAgent(Arc<FakeAgent>);

impl std::ops::Deref for GrpcAgent {
    type Target = FakeAgent;
    fn deref(&self) -> &FakeAgent {
        &self.0
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcAgent {
    async fn server_live(
        &self,
        _: tonic::Request<ServerLiveRequest>,
    ) -> Result<tonic::Response<ServerLiveResponse>, tonic::Status> {
        Err(tonic::Status::internal(
            "the router must answer ServerLive itself",
        ))
    }
    async fn server_ready(
        &self,
        _: tonic::Request<ServerReadyRequest>,
    ) -> Result<tonic::Response<ServerReadyResponse>, tonic::Status> {
        Err(tonic::Status::internal(
            "the router must answer ServerReady itself",
        ))
    }
    async fn model_ready(
        &self,
        request: tonic::Request<ModelReadyRequest>,
    ) -> Result<tonic::Response<ModelReadyResponse>, tonic::Status> {
        self.record_grpc(request.metadata(), &request.get_ref().name, 0);
        Ok(tonic::Response::new(ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: tonic::Request<ServerMetadataRequest>,
    ) -> Result<tonic::Response<ServerMetadataResponse>, tonic::Status> {
        Err(tonic::Status::internal(
            "the router must answer ServerMetadata itself",
        ))
    }
    async fn model_metadata(
        &self,
        request: tonic::Request<ModelMetadataRequest>,
    ) -> Result<tonic::Response<ModelMetadataResponse>, tonic::Status> {
        self.record_grpc(request.metadata(), &request.get_ref().name, 0);
        Ok(tonic::Response::new(ModelMetadataResponse {
            name: request.get_ref().name.clone(),
            platform: self.name.to_owned(),
            ..Default::default()
        }))
    }
    async fn model_infer(
        &self,
        request: tonic::Request<ModelInferRequest>,
    ) -> Result<tonic::Response<ModelInferResponse>, tonic::Status> {
        let raw: usize = request
            .get_ref()
            .raw_input_contents
            .iter()
            .map(Vec::len)
            .sum();
        self.record_grpc(request.metadata(), &request.get_ref().model_name, raw);
        match self.mode {
            Mode::Fail500 => return Err(tonic::Status::internal("boom")),
            Mode::Hold => {
                /// Counts the call as abandoned if it is dropped while waiting.
                struct Waiting<'a>(&'a watch::Sender<usize>);
                impl Drop for Waiting<'_> {
                    fn drop(&mut self) {
                        self.0.send_modify(|n| *n += 1);
                    }
                }
                let waiting = Waiting(&self.abandoned);
                drop(self.gate.acquire().await.unwrap());
                std::mem::forget(waiting);
            }
            Mode::Ok => {}
        }
        // Metadata the client sent, text and binary, comes back in the answer's head.
        let echo = request.metadata().get("x-request-id").cloned();
        let echo_bin = request.metadata().get_bin("trace-bin").cloned();
        let mut response = tonic::Response::new(ModelInferResponse {
            model_name: request.get_ref().model_name.clone(),
            id: self.name.to_owned(),
            raw_output_contents: request.into_inner().raw_input_contents,
            ..Default::default()
        });
        if let Some(value) = echo {
            response.metadata_mut().insert("x-request-id", value);
        }
        if let Some(value) = echo_bin {
            response.metadata_mut().insert_bin("trace-bin", value);
        }
        Ok(response)
    }
    async fn repository_index(
        &self,
        _: tonic::Request<RepositoryIndexRequest>,
    ) -> Result<tonic::Response<RepositoryIndexResponse>, tonic::Status> {
        Err(tonic::Status::internal("not forwarded"))
    }
    async fn repository_model_load(
        &self,
        _: tonic::Request<RepositoryModelLoadRequest>,
    ) -> Result<tonic::Response<RepositoryModelLoadResponse>, tonic::Status> {
        Err(tonic::Status::internal("not forwarded"))
    }
    async fn repository_model_unload(
        &self,
        _: tonic::Request<RepositoryModelUnloadRequest>,
    ) -> Result<tonic::Response<RepositoryModelUnloadResponse>, tonic::Status> {
        Err(tonic::Status::internal("not forwarded"))
    }
}

impl FakeAgent {
    fn record_grpc(&self, metadata: &tonic::metadata::MetadataMap, name: &str, body_len: usize) {
        let get = |key: &str| metadata.get(key).map(|v| v.to_str().unwrap().to_owned());
        self.record(Seen {
            path: name.to_owned(),
            model: get("seldon-model"),
            internal: get("seldon-internal-model"),
            body_len,
        });
    }
}

/// A fake agent serving REST and gRPC on fresh loopback ports.
async fn start_agent(name: &'static str, mode: Mode) -> (Arc<FakeAgent>, SocketAddr, SocketAddr) {
    let agent = Arc::new(FakeAgent {
        name,
        mode,
        seen: Mutex::new(Vec::new()),
        arrivals: watch::channel(0).0,
        gate: Semaphore::new(0),
        abandoned: watch::channel(0).0,
    });
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(agent_rest)
        .with_state(Arc::clone(&agent));
    tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
    let service = GrpcInferenceServiceServer::new(GrpcAgent(Arc::clone(&agent)));
    tokio::spawn(coscale_runtime::serve_http(
        coscale_runtime::nodelay(grpc),
        coscale_runtime::grpc_app(service),
        std::future::pending(),
    ));
    (agent, http_addr, grpc_addr)
}

/// An address nothing listens on: bound, then released, so connects are refused.
async fn closed_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn endpoint(
    server: &str,
    replica: u32,
    version: u32,
    http: SocketAddr,
    grpc: SocketAddr,
) -> Endpoint {
    Endpoint {
        server: server.into(),
        replica,
        version,
        http,
        grpc,
        data_socket: None,
    }
}

fn table(models: Vec<(&str, Vec<Endpoint>)>) -> Arc<RoutingTable> {
    let models: BTreeMap<_, _> = models
        .into_iter()
        .map(|(name, endpoints)| (name.to_owned(), ModelRoute { endpoints }))
        .collect();
    Arc::new(RoutingTable { models })
}

/// A router with default settings routing model `m` to one fresh fake agent.
async fn one_agent_router(name: &'static str, mode: Mode) -> (Arc<FakeAgent>, TestRouter) {
    one_agent_router_with(RouterConfig::default(), name, mode).await
}

/// A router with `config` and one fake agent holding model `m`.
async fn one_agent_router_with(
    config: RouterConfig,
    name: &'static str,
    mode: Mode,
) -> (Arc<FakeAgent>, TestRouter) {
    let (agent, http, grpc) = start_agent(name, mode).await;
    let router = TestRouter::start(
        config,
        table(vec![("m", vec![endpoint("s", 0, 1, http, grpc)])]),
    )
    .await;
    (agent, router)
}

struct TestRouter {
    http: SocketAddr,
    grpc: SocketAddr,
    tables: watch::Sender<Arc<RoutingTable>>,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestRouter {
    async fn start(config: RouterConfig, table: Arc<RoutingTable>) -> Self {
        let (tables, rx) = watch::channel(table);
        let handle = RouterHandle::new(config, rx);
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(handle, http_listener, grpc_listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        TestRouter {
            http,
            grpc,
            tables,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn infer(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .body(r#"{"inputs":[]}"#)
            .send()
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    async fn grpc_client(&self) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.task.take().unwrap())
            .await
            .expect("router stops after shutdown")
            .unwrap();
    }
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn assert_v2_error(response: reqwest::Response, status: u16, contains: &str) {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]
        .as_str()
        .expect("V2 error body has an error string");
    assert!(
        message.contains(contains),
        "{message:?} should contain {contains:?}"
    );
}

#[tokio::test]
async fn requests_are_routed_by_path_with_seldon_headers_added() {
    let (agent, http, grpc) = start_agent("a", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![("iris", vec![endpoint("mlserver", 0, 3, http, grpc)])]),
    )
    .await;
    let response = router.infer("/v2/models/iris/versions/3/infer?x=1").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["agent"], "a");
    assert_eq!(
        agent.seen(),
        vec![Seen {
            path: "/v2/models/iris/versions/3/infer".into(),
            model: Some("iris".into()),
            internal: Some("iris_3".into()),
            body_len: r#"{"inputs":[]}"#.len(),
        }]
    );
    let ready = router
        .client
        .get(router.url("/v2/models/iris/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(agent.seen()[1].path, "/v2/models/iris/ready");
    let text = router.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"coscale_router_requests_total{model="iris",protocol="rest",code="200"}"#
        ),
        Some(2.0)
    );
    router.shutdown().await;
}

#[tokio::test]
async fn the_seldon_model_header_wins_over_the_path() {
    let (iris, http_a, grpc_a) = start_agent("iris-agent", Mode::Ok).await;
    let (other, http_b, grpc_b) = start_agent("other-agent", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![
            ("iris", vec![endpoint("s", 0, 1, http_a, grpc_a)]),
            ("other", vec![endpoint("s", 1, 2, http_b, grpc_b)]),
        ]),
    )
    .await;
    let response = router
        .client
        .post(router.url("/v2/models/other/infer"))
        .header("seldon-model", "iris")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(other.seen().is_empty());
    let seen = iris.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].model.as_deref(), Some("iris"));
    assert_eq!(seen[0].internal.as_deref(), Some("iris_1"));
    router.shutdown().await;
}

#[tokio::test]
async fn percent_encoded_names_are_decoded_and_malformed_names_get_400() {
    let (agent, http, grpc) = start_agent("a", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![("my.model_x", vec![endpoint("s", 0, 1, http, grpc)])]),
    )
    .await;
    assert_eq!(
        router.infer("/v2/models/my%2Emodel_x/infer").await.status(),
        200
    );
    assert_eq!(agent.seen()[0].internal.as_deref(), Some("my.model_x_1"));
    for bad in [
        "/v2/models/a%2Fb/infer",
        "/v2/models/x%20y/infer",
        "/v2/models/a%2Bb/infer",
    ] {
        assert_v2_error(router.infer(bad).await, 400, "invalid model name").await;
    }
    let bad_header = router
        .client
        .post(router.url("/v2/models/my.model_x/infer"))
        .header("seldon-model", "a/b")
        .send()
        .await
        .unwrap();
    assert_v2_error(bad_header, 400, "invalid model name").await;
    assert_eq!(agent.seen().len(), 1);
    router.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_spread_over_two_replicas_by_least_outstanding() {
    let (a, http_a, grpc_a) = start_agent("a", Mode::Hold).await;
    let (b, http_b, grpc_b) = start_agent("b", Mode::Hold).await;
    let router = Arc::new(
        TestRouter::start(
            RouterConfig::default(),
            table(vec![(
                "m",
                vec![
                    endpoint("s", 0, 1, http_a, grpc_a),
                    endpoint("s", 1, 1, http_b, grpc_b),
                ],
            )]),
        )
        .await,
    );
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let router = Arc::clone(&router);
            tokio::spawn(async move { router.infer("/v2/models/m/infer").await.status() })
        })
        .collect();
    let (mut arrivals_a, mut arrivals_b) = (a.arrivals.subscribe(), b.arrivals.subscribe());
    tokio::time::timeout(DEADLINE, async {
        arrivals_a.wait_for(|n| *n == 3).await.unwrap();
        arrivals_b.wait_for(|n| *n == 3).await.unwrap();
    })
    .await
    .expect("three held requests on each replica");
    let text = router.metrics().await;
    assert_eq!(
        metric_value(&text, "coscale_router_inflight_requests"),
        Some(6.0)
    );
    a.gate.add_permits(6);
    b.gate.add_permits(6);
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    let text = router.metrics().await;
    assert_eq!(
        metric_value(&text, "coscale_router_inflight_requests"),
        Some(0.0)
    );
    Arc::into_inner(router).unwrap().shutdown().await;
}

#[tokio::test]
async fn an_unknown_model_gets_404_with_a_v2_error_body() {
    let router = TestRouter::start(RouterConfig::default(), table(vec![])).await;
    assert_v2_error(
        router.infer("/v2/models/nope/infer").await,
        404,
        "model nope not found",
    )
    .await;
    let text = router.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"coscale_router_requests_total{model="",protocol="rest",code="404"}"#
        ),
        Some(1.0),
        "unknown names must not become label values"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn a_model_without_replicas_gets_503_saying_so() {
    let router = TestRouter::start(RouterConfig::default(), table(vec![("iris", vec![])])).await;
    assert_v2_error(
        router.infer("/v2/models/iris/infer").await,
        503,
        "model iris has no available replica",
    )
    .await;
    router.shutdown().await;
}

/// An address that accepts connections and closes them at once, before any answer.
async fn closing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    addr
}

/// With `broken` (REST and gRPC addresses) first and a healthy replica second, every request
/// (REST, or gRPC with `over_grpc`) succeeds and the broken replica (tried first at least once
/// by round-robin) is retried on the healthy one.
async fn assert_failed_attempts_are_retried(broken: (SocketAddr, SocketAddr), over_grpc: bool) {
    let (alive, http, grpc) = start_agent("alive", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![(
            "m",
            vec![
                endpoint("s", 0, 1, broken.0, broken.1),
                endpoint("s", 1, 1, http, grpc),
            ],
        )]),
    )
    .await;
    let mut client = router.grpc_client().await;
    for _ in 0..2 {
        if over_grpc {
            let answer = client.model_infer(infer_message("m")).await.unwrap();
            assert_eq!(answer.into_inner().id, "alive");
        } else {
            assert_eq!(router.infer("/v2/models/m/infer").await.status(), 200);
        }
    }
    assert_eq!(alive.seen().len(), 2);
    let retries = metric_value(&router.metrics().await, "coscale_router_retries_total").unwrap();
    assert!(
        retries >= 1.0,
        "the broken replica is tried first at least once: {retries}"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn a_replica_refusing_connections_is_retried_on_the_other_replica() {
    let closed = closed_addr().await;
    assert_failed_attempts_are_retried((closed, closed), false).await;
}

#[tokio::test]
async fn a_replica_closing_the_connection_before_answering_is_retried_on_the_other_replica() {
    let closing = closing_addr().await;
    assert_failed_attempts_are_retried((closing, closing), false).await;
}

#[tokio::test]
async fn a_single_refusing_replica_gives_502_with_a_v2_error_body() {
    let dead = closed_addr().await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![("m", vec![endpoint("s", 0, 1, dead, dead)])]),
    )
    .await;
    assert_v2_error(
        router.infer("/v2/models/m/infer").await,
        502,
        "failed before answering",
    )
    .await;
    router.shutdown().await;
}

/// Model `m` on a bad replica and a healthy fake agent; two requests, which round-robin among
/// idle replicas puts on one replica each. Returns the healthy agent, the router, and the
/// answer with `status` followed by the other one.
async fn two_requests_over_a_bad_and_a_healthy_replica(
    bad: (SocketAddr, SocketAddr),
    status: u16,
) -> (
    Arc<FakeAgent>,
    TestRouter,
    reqwest::Response,
    reqwest::Response,
) {
    let (healthy, http, grpc) = start_agent("healthy", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![(
            "m",
            vec![
                endpoint("s", 0, 1, bad.0, bad.1),
                endpoint("s", 1, 1, http, grpc),
            ],
        )]),
    )
    .await;
    let first = router.infer("/v2/models/m/infer").await;
    let second = router.infer("/v2/models/m/infer").await;
    let (failed, other) = if first.status() == status {
        (first, second)
    } else {
        (second, first)
    };
    (healthy, router, failed, other)
}

#[tokio::test]
async fn a_replica_answering_500_is_not_retried_and_its_answer_passes_through() {
    let (failing, http_f, grpc_f) = start_agent("failing", Mode::Fail500).await;
    let (healthy, router, failed, _) =
        two_requests_over_a_bad_and_a_healthy_replica((http_f, grpc_f), 500).await;
    assert_v2_error(failed, 500, "boom").await;
    assert_eq!(failing.seen().len(), 1);
    assert_eq!(healthy.seen().len(), 1);
    let text = router.metrics().await;
    assert_eq!(
        metric_value(&text, "coscale_router_retries_total"),
        Some(0.0)
    );
    router.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_is_not_forwarded() {
    let config = RouterConfig {
        body_limit_bytes: 1024,
        ..RouterConfig::default()
    };
    let (agent, router) = one_agent_router_with(config, "a", Mode::Ok).await;
    let response = router
        .client
        .post(router.url("/v2/models/m/infer"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_v2_error(response, 413, "1024 bytes").await;
    let fits = router
        .client
        .post(router.url("/v2/models/m/infer"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    assert_eq!(agent.seen().len(), 1);
    assert_eq!(agent.seen()[0].body_len, 1024);
    router.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_does_not_answer_in_time_gives_504() {
    let (_agent, http, grpc) = start_agent("slow", Mode::Hold).await;
    let config = RouterConfig {
        request_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    };
    let router = TestRouter::start(
        config,
        table(vec![("m", vec![endpoint("s", 0, 1, http, grpc)])]),
    )
    .await;
    assert_v2_error(
        router.infer("/v2/models/m/infer").await,
        504,
        "did not answer within 200 ms",
    )
    .await;
    router.shutdown().await;
}

#[tokio::test]
async fn a_routing_table_update_takes_effect_for_the_next_request() {
    let (a, http_a, grpc_a) = start_agent("a", Mode::Ok).await;
    let (b, http_b, grpc_b) = start_agent("b", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![("m", vec![endpoint("s", 0, 1, http_a, grpc_a)])]),
    )
    .await;
    assert_eq!(router.infer("/v2/models/m/infer").await.status(), 200);
    router
        .tables
        .send(table(vec![(
            "m",
            vec![endpoint("s", 1, 2, http_b, grpc_b)],
        )]))
        .unwrap();
    assert_eq!(router.infer("/v2/models/m/infer").await.status(), 200);
    assert_eq!(a.seen().len(), 1);
    assert_eq!(b.seen().len(), 1);
    assert_eq!(b.seen()[0].internal.as_deref(), Some("m_2"));
    router.tables.send(table(vec![])).unwrap();
    assert_v2_error(router.infer("/v2/models/m/infer").await, 404, "not found").await;
    router.shutdown().await;
}

#[tokio::test]
async fn health_metadata_and_unknown_paths_have_exact_bodies() {
    let router = TestRouter::start(RouterConfig::default(), table(vec![])).await;
    let get = |path: &'static str| {
        let client = router.client.clone();
        let url = router.url(path);
        async move { client.get(url).send().await.unwrap() }
    };
    for (path, body) in [
        ("/v2/health/live", r#"{"live":true}"#),
        ("/v2/health/ready", r#"{"ready":true}"#),
    ] {
        let response = get(path).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.unwrap(), body);
    }
    for path in ["/v2", "/v2/"] {
        let body: serde_json::Value = get(path).await.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"name": "coscale", "version": env!("CARGO_PKG_VERSION"), "extensions": []})
        );
    }
    assert_v2_error(get("/v2/nothing").await, 404, "Not Found").await;
    let post_live = router
        .client
        .post(router.url("/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert_v2_error(post_live, 405, "Method Not Allowed").await;
    router.shutdown().await;
}

#[tokio::test]
async fn grpc_infer_is_forwarded_with_model_name_and_seldon_metadata() {
    let (agent, http, grpc) = start_agent("a", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![("iris", vec![endpoint("s", 0, 4, http, grpc)])]),
    )
    .await;
    let mut client = router.grpc_client().await;
    let mut request = tonic::Request::new(ModelInferRequest {
        model_name: "iris".into(),
        raw_input_contents: vec![vec![1, 2, 3, 4]],
        ..Default::default()
    });
    let metadata = request.metadata_mut();
    metadata.insert("x-request-id", "r-1".parse().unwrap());
    let blob = tonic::metadata::BinaryMetadataValue::from_bytes(&[0, 0xff, b'\n', 7]);
    metadata.insert_bin("trace-bin", blob.clone());
    let response = client.model_infer(request).await.unwrap();
    // The client's metadata reached the replica and the replica's came back, both ways.
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "r-1");
    assert_eq!(response.metadata().get_bin("trace-bin"), Some(&blob));
    let response = response.into_inner();
    assert_eq!(response.model_name, "iris");
    assert_eq!(response.raw_output_contents, vec![vec![1, 2, 3, 4]]);

    // The seldon-model metadata wins over the message field, as on the REST side.
    let mut request = tonic::Request::new(ModelMetadataRequest {
        name: "ignored".into(),
        version: String::new(),
    });
    request
        .metadata_mut()
        .insert("seldon-model", "iris".parse().unwrap());
    let metadata = client.model_metadata(request).await.unwrap().into_inner();
    assert_eq!(metadata.name, "iris");
    assert!(
        client
            .model_ready(ModelReadyRequest {
                name: "iris".into(),
                version: String::new()
            })
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let seen = agent.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.path, "iris");
        assert_eq!(s.model.as_deref(), Some("iris"));
        assert_eq!(s.internal.as_deref(), Some("iris_4"));
    }
    assert_eq!(seen[0].body_len, 4);
    let text = router.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"coscale_router_requests_total{model="iris",protocol="grpc",code="0"}"#
        ),
        Some(3.0)
    );
    router.shutdown().await;
}

#[tokio::test]
async fn grpc_unknown_and_replicaless_models_get_not_found_and_unavailable() {
    let router = TestRouter::start(RouterConfig::default(), table(vec![("empty", vec![])])).await;
    let mut client = router.grpc_client().await;
    let status = client.model_infer(infer_message("nope")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "model nope not found");
    let status = client
        .model_infer(infer_message("empty"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "model empty has no available replica");
    let status = client.model_infer(infer_message("")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    router.shutdown().await;
}

#[tokio::test]
async fn grpc_retries_a_refusing_replica_but_passes_replica_errors_through() {
    let dead = closed_addr().await;
    let (alive, http, grpc) = start_agent("alive", Mode::Ok).await;
    let (failing, http_f, grpc_f) = start_agent("failing", Mode::Fail500).await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![
            (
                "m",
                vec![
                    endpoint("s", 0, 1, dead, dead),
                    endpoint("s", 1, 1, http, grpc),
                ],
            ),
            (
                "bad",
                vec![
                    endpoint("t", 0, 1, http_f, grpc_f),
                    endpoint("s", 1, 1, http, grpc),
                ],
            ),
        ]),
    )
    .await;
    let mut client = router.grpc_client().await;
    for _ in 0..2 {
        let request = infer_message("m");
        assert_eq!(
            client.model_infer(request).await.unwrap().into_inner().id,
            "alive"
        );
    }
    let retries = metric_value(&router.metrics().await, "coscale_router_retries_total").unwrap();
    assert!(retries >= 1.0);

    let mut internal_errors = 0;
    for _ in 0..2 {
        let request = infer_message("bad");
        if let Err(status) = client.model_infer(request).await {
            assert_eq!(status.code(), tonic::Code::Internal);
            assert_eq!(status.message(), "boom");
            internal_errors += 1;
        }
    }
    assert_eq!(
        internal_errors, 1,
        "the failing replica answered once and was not retried"
    );
    assert_eq!(failing.seen().len(), 1);
    assert_eq!(
        metric_value(&router.metrics().await, "coscale_router_retries_total").unwrap(),
        retries
    );
    assert_eq!(alive.seen().len(), 3);
    router.shutdown().await;
}

#[tokio::test]
async fn grpc_server_calls_are_answered_locally_and_repository_calls_refused() {
    let router = TestRouter::start(RouterConfig::default(), table(vec![])).await;
    let mut client = router.grpc_client().await;
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let metadata = client
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.name, "coscale");
    assert_eq!(metadata.version, env!("CARGO_PKG_VERSION"));
    assert!(metadata.extensions.is_empty());
    let status = client
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(status.message().contains("use the control plane API"));
    router.shutdown().await;
}

#[tokio::test]
async fn grpc_calls_on_one_connection_are_multiplexed_and_large_messages_pass_both_ways() {
    let (agent, router) = one_agent_router("a", Mode::Ok).await;
    // One channel = one HTTP/2 connection to the router; every call below shares it.
    let client = router.grpc_client().await;
    let calls = (0..12u8).map(|i| {
        let mut client = client.clone();
        // Three of them larger than the 1 MiB flow-control windows, each way.
        let size = if i % 4 == 0 {
            3 << 20
        } else {
            1000 + usize::from(i)
        };
        async move {
            let contents = vec![i; size];
            let answer = client
                .model_infer(ModelInferRequest {
                    model_name: "m".into(),
                    raw_input_contents: vec![contents.clone()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.raw_output_contents, vec![contents], "call {i}");
        }
    });
    tokio::time::timeout(DEADLINE, futures::future::join_all(calls))
        .await
        .expect("every call is answered");
    assert_eq!(agent.seen().len(), 12);
    assert_eq!(agent.seen().iter().map(|s| s.body_len).max(), Some(3 << 20));
    router.shutdown().await;
}

#[tokio::test]
async fn a_grpc_message_over_the_limit_is_refused_and_not_forwarded() {
    let config = RouterConfig {
        grpc_max_message_bytes: 1024,
        ..RouterConfig::default()
    };
    let (agent, router) = one_agent_router_with(config, "a", Mode::Ok).await;
    let mut client = router.grpc_client().await;
    let call = |size: usize| ModelInferRequest {
        model_name: "m".into(),
        raw_input_contents: vec![vec![0; size]],
        ..Default::default()
    };
    let status = client.model_infer(call(2000)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("limit of 1024 bytes"),
        "{status:?}"
    );
    assert!(agent.seen().is_empty());
    // The connection still serves the next call.
    client.model_infer(call(100)).await.unwrap();
    assert_eq!(agent.seen().len(), 1);
    router.shutdown().await;
}

/// A replica's answer larger than the router's message limit is not passed on: the client gets
/// UNAVAILABLE saying why, and the call is not sent to the other replica (the answer came).
#[tokio::test]
async fn a_grpc_answer_over_the_limit_is_refused_and_not_retried() {
    let (first, http_1, grpc_1) = start_agent("first", Mode::Ok).await;
    let (second, http_2, grpc_2) = start_agent("second", Mode::Ok).await;
    let config = RouterConfig {
        grpc_max_message_bytes: 1024,
        ..RouterConfig::default()
    };
    let router = TestRouter::start(
        config,
        table(vec![(
            "m",
            vec![
                endpoint("s", 0, 1, http_1, grpc_1),
                endpoint("s", 1, 1, http_2, grpc_2),
            ],
        )]),
    )
    .await;
    let mut client = router.grpc_client().await;
    // A request of exactly the limit; the fake agents' answer echoes it and adds their name.
    let request = ModelInferRequest {
        model_name: "m".into(),
        raw_input_contents: vec![vec![0; 1018]],
        ..Default::default()
    };
    assert_eq!(prost::Message::encoded_len(&request), 1024);
    let status = client.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("larger than the limit"),
        "{status:?}"
    );
    assert_eq!(first.seen().len() + second.seen().len(), 1, "not retried");
    assert_eq!(
        metric_value(&router.metrics().await, "coscale_router_retries_total"),
        Some(0.0)
    );
    router.shutdown().await;
}

#[tokio::test]
async fn stopping_lets_a_grpc_call_in_flight_finish() {
    let (agent, mut router) = one_agent_router("a", Mode::Hold).await;
    let mut client = router.grpc_client().await;
    let call = tokio::spawn(async move { client.model_infer(infer_message("m")).await });
    agent.wait_arrivals(1, "the call reaches the replica").await;
    router.stop.take().unwrap().send(()).unwrap();
    agent.gate.add_permits(1);
    let answer = tokio::time::timeout(DEADLINE, call).await.unwrap().unwrap();
    assert_eq!(answer.unwrap().into_inner().id, "a");
    tokio::time::timeout(DEADLINE, router.task.take().unwrap())
        .await
        .expect("the router stops once the call is answered")
        .unwrap();
}

#[tokio::test]
async fn a_grpc_call_the_client_cancels_is_cancelled_at_the_replica_and_frees_its_slot() {
    let (agent, router) = one_agent_router("a", Mode::Hold).await;
    // Two handles on one connection: the connection outlives the cancelled call.
    let mut client = router.grpc_client().await;
    let mut canceller = client.clone();
    let call = tokio::spawn(async move { canceller.model_infer(infer_message("m")).await });
    agent.wait_arrivals(1, "the call reaches the replica").await;
    let inflight = "coscale_router_inflight_requests";
    assert_eq!(metric_value(&router.metrics().await, inflight), Some(1.0));
    // Dropping the call resets its stream (CANCEL); the replica is never let go.
    call.abort();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric_value(&router.metrics().await, inflight) != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call is still in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The replica's call was cancelled too (its handler dropped while it waited).
    let mut abandoned = agent.abandoned.subscribe();
    tokio::time::timeout(DEADLINE, abandoned.wait_for(|n| *n == 1))
        .await
        .expect("the replica's call is cancelled")
        .unwrap();
    // The connection serves the next call.
    agent.gate.add_permits(1);
    assert_eq!(
        client
            .model_infer(infer_message("m"))
            .await
            .unwrap()
            .into_inner()
            .id,
        "a"
    );
    router.shutdown().await;
}

/// One HTTP/2 request with exactly these fields and body; the answer's status, fields, body and
/// trailers.
async fn raw_h2(
    addr: SocketAddr,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>, Option<http::HeaderMap>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    stream
        .send_data(bytes::Bytes::copy_from_slice(body), true)
        .unwrap();
    let (head, mut body) = response.await.unwrap().into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    (head.status.as_u16(), head.headers, bytes, trailers)
}

#[tokio::test]
async fn grpc_requests_are_checked_before_anything_is_forwarded() {
    let (agent, router) = one_agent_router("a", Mode::Ok).await;
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    // Not gRPC: 415, as the gRPC over HTTP/2 spec asks.
    let (status, ..) = raw_h2(
        router.grpc,
        "POST",
        infer,
        &[("content-type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(status, 415);
    // Unknown services and methods: UNIMPLEMENTED (12), trailers-only.
    for path in [
        "/other.Service/Call",
        "/inference.GRPCInferenceService/ModelStream",
    ] {
        let (status, head, body, trailers) =
            raw_h2(router.grpc, "POST", path, &grpc, &[0; 5]).await;
        assert_eq!(status, 200);
        assert_eq!(head.get("grpc-status").unwrap(), "12", "{path}");
        assert!(body.is_empty() && trailers.is_none());
    }
    // Not one whole message, a compressed one, and one that is not a ModelInferRequest:
    // INVALID_ARGUMENT (3) or UNIMPLEMENTED (12), with the reason.
    let cases: [(&[u8], &str, &str); 3] = [
        (
            &[0, 0, 0, 0, 9, 1],
            "3",
            "the prefix says 9 bytes, 1 follow",
        ),
        (
            &[1, 0, 0, 0, 0],
            "12",
            "compressed messages are not supported",
        ),
        (
            &[0, 0, 0, 0, 2, 0xff, 0xff],
            "3",
            "the request message does not decode",
        ),
    ];
    for (body, code, reason) in cases {
        let (status, head, ..) = raw_h2(router.grpc, "POST", infer, &grpc, body).await;
        assert_eq!(status, 200);
        assert_eq!(head.get("grpc-status").unwrap(), code);
        let message = head.get("grpc-message").unwrap().to_str().unwrap();
        let message = percent_encoding::percent_decode_str(message)
            .decode_utf8()
            .unwrap();
        assert!(message.contains(reason), "{message}");
    }
    assert!(agent.seen().is_empty());
    router.shutdown().await;
}

/// How a [`grpc_replica`] answers.
#[derive(Clone, Copy, PartialEq)]
enum ReplicaAnswer {
    /// An empty message and status OK, with the trailers of `grpc_app` over HTTP/1.1.
    Whole,
    /// The same, then it closes the connection (`connection: close`).
    WholeThenClose,
    /// The answer's head and the first KiB of a 2 MiB message, then it closes the connection
    /// (as a replica that fails in the middle of an answer).
    CutOff,
}

/// The head of a gRPC answer over HTTP/1.1.
const GRPC_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n\
    transfer-encoding: chunked\r\ntrailer: grpc-status, grpc-message\r\n";

/// A gRPC replica written byte for byte (HTTP/1.1, as the router calls replicas) that answers
/// every call as `answer` says. Counts the connections.
async fn grpc_replica(answer: ReplicaAnswer) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then its content-length body.
                    let body_start = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut more = [0; 4096];
                        match tcp.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..body_start]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .expect("a content-length");
                    while buf.len() < body_start + length {
                        let mut more = [0; 4096];
                        match tcp.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    }
                    buf.drain(..body_start + length);
                    let written = match answer {
                        ReplicaAnswer::Whole | ReplicaAnswer::WholeThenClose => {
                            let close = if answer == ReplicaAnswer::WholeThenClose {
                                "connection: close\r\n"
                            } else {
                                ""
                            };
                            let whole = format!(
                                "{GRPC_HEAD}{close}\r\n5\r\n\0\0\0\0\0\r\n0\r\ngrpc-status: 0\r\n\r\n"
                            );
                            tcp.write_all(whole.as_bytes()).await
                        }
                        ReplicaAnswer::CutOff => {
                            let mut cut =
                                format!("{GRPC_HEAD}\r\n200005\r\n\0\0\x20\0\0").into_bytes();
                            cut.extend_from_slice(&[0; 1024]);
                            tcp.write_all(&cut).await
                        }
                    };
                    if written.is_err() || answer != ReplicaAnswer::Whole {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A router whose model `m` has one replica: a [`grpc_replica`] (gRPC only).
async fn router_on_grpc_replica(
    answer: ReplicaAnswer,
) -> (TestRouter, Arc<std::sync::atomic::AtomicUsize>) {
    let (replica, connections) = grpc_replica(answer).await;
    let unused = closed_addr().await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![("m", vec![endpoint("s", 0, 1, unused, replica)])]),
    )
    .await;
    (router, connections)
}

/// A gRPC replica that fails in the middle of an answer has the call retried on the other
/// replica; the client gets that replica's answer.
#[tokio::test]
async fn a_grpc_answer_cut_off_by_the_replica_is_retried_on_the_other_replica() {
    let (cut_off, _) = grpc_replica(ReplicaAnswer::CutOff).await;
    let unused = closed_addr().await;
    assert_failed_attempts_are_retried((unused, cut_off), true).await;
}

#[tokio::test]
async fn a_held_grpc_connection_the_replica_closed_is_replaced_without_a_retry_elsewhere() {
    let (router, connections) = router_on_grpc_replica(ReplicaAnswer::WholeThenClose).await;
    let mut client = router.grpc_client().await;
    for _ in 0..3 {
        client.model_infer(infer_message("m")).await.unwrap();
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
    let text = router.metrics().await;
    assert_eq!(
        metric_value(&text, "coscale_router_retries_total"),
        Some(0.0)
    );
    router.shutdown().await;
}

#[tokio::test]
async fn grpc_clients_that_connect_for_each_call_share_the_routers_connection_to_the_replica() {
    let (router, connections) = router_on_grpc_replica(ReplicaAnswer::Whole).await;
    // Each client makes one call on a connection of its own and goes away. Once the router has
    // seen a client leave before the next one calls, the next call goes out on the connection
    // to the replica that the client before it left behind.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut clients = 0;
    loop {
        let mut client = router.grpc_client().await;
        client.model_infer(infer_message("m")).await.unwrap();
        drop(client);
        clients += 1;
        if connections.load(std::sync::atomic::Ordering::SeqCst) < clients {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{clients} clients, each with a connection of its own to the replica"
        );
    }
    router.shutdown().await;
}

// ---- HTTP/1.1 on the wire: what reqwest does not exercise, written byte for byte. ----

/// An answer as read off the wire.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client on one TCP connection that writes raw bytes and reads answers framed by
/// Content-Length (which the router always sends).
struct RawClient {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        RawClient {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("the router answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer; `head_request`: it carries no body whatever its Content-Length says.
    async fn answer(&mut self, head_request: bool) -> RawAnswer {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = response.parse(&self.buf).unwrap() {
                let status = response.code.unwrap();
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                let length: usize = match headers.iter().find(|(n, _)| n == "content-length") {
                    Some(_) if head_request || status == 100 => 0,
                    Some((_, v)) => v.parse().unwrap(),
                    None => 0,
                };
                while self.buf.len() < len + length {
                    assert!(self.fill().await, "connection closed inside an answer");
                }
                let body = self.buf[len..len + length].to_vec();
                self.buf.drain(..len + length);
                return RawAnswer {
                    status,
                    headers,
                    body,
                };
            }
            assert!(self.fill().await, "connection closed before an answer");
        }
    }

    /// Whether the router closed the connection (nothing more arrives).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

const INFER_BODY: &str = r#"{"inputs":[]}"#;

fn infer_request(model: &str, extra: &str) -> String {
    format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{extra}\r\n{INFER_BODY}",
        INFER_BODY.len()
    )
}

#[tokio::test]
async fn pipelined_requests_on_one_connection_are_answered_in_order_and_head_gets_no_body() {
    let (agent, router) = one_agent_router("a", Mode::Ok).await;
    let mut client = RawClient::connect(router.http).await;
    let mut batch = infer_request("m", "");
    batch.push_str("HEAD /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n");
    batch.push_str("GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n");
    batch.push_str(&infer_request("m", ""));
    client.send(batch.as_bytes()).await;
    let first = client.answer(false).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["internal"], "m_1");
    let head = client.answer(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("13"));
    let ready = client.answer(false).await;
    assert_eq!(ready.body, br#"{"ready":true}"#);
    assert_eq!(client.answer(false).await.status, 200);
    assert_eq!(agent.seen().len(), 2);
    assert!(agent.seen().iter().all(|s| s.body_len == INFER_BODY.len()));
    router.shutdown().await;
}

#[tokio::test]
async fn a_chunked_request_body_reaches_the_replica_whole() {
    let (agent, router) = one_agent_router("a", Mode::Ok).await;
    let mut client = RawClient::connect(router.http).await;
    client
        .send(
            b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\n{\"inp\r\n8\r\nuts\":[]}\r\n0\r\ntrailer: t\r\n\r\n",
        )
        .await;
    assert_eq!(client.answer(false).await.status, 200);
    assert_eq!(agent.seen()[0].body_len, INFER_BODY.len());
    // A chunked body over the limit: 413, and the connection is closed (the rest is unread).
    let (other, http, grpc) = start_agent("b", Mode::Ok).await;
    let router_small = TestRouter::start(
        RouterConfig {
            body_limit_bytes: 8,
            ..RouterConfig::default()
        },
        table(vec![("m", vec![endpoint("s", 0, 1, http, grpc)])]),
    )
    .await;
    let mut client = RawClient::connect(router_small.http).await;
    client
        .send(b"POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed().await);
    assert!(other.seen().is_empty(), "nothing was forwarded");
    router.shutdown().await;
    router_small.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body_is_sent() {
    let (agent, router) = one_agent_router("a", Mode::Ok).await;
    let mut client = RawClient::connect(router.http).await;
    let request = infer_request("m", "expect: 100-continue\r\n");
    let (head, body) = request.split_at(request.len() - INFER_BODY.len());
    client.send(head.as_bytes()).await;
    assert_eq!(client.answer(false).await.status, 100);
    client.send(body.as_bytes()).await;
    assert_eq!(client.answer(false).await.status, 200);
    assert_eq!(agent.seen()[0].body_len, INFER_BODY.len());
    // For an unknown model the final answer comes at once, without 100, and the connection
    // closes because the client may or may not send the body now.
    client
        .send(
            infer_request("nope", "expect: 100-continue\r\n")
                .split_at(request.len() - INFER_BODY.len() + 3)
                .0
                .as_bytes(),
        )
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 404);
    assert!(client.closed().await);
    // Any other expectation: 417, and the connection closes.
    let mut client = RawClient::connect(router.http).await;
    client
        .send(infer_request("m", "expect: something-else\r\n").as_bytes())
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 417);
    assert!(client.closed().await);
    // HTTP/1.0 has no expectations: no 100, the request is served as it is.
    let mut client = RawClient::connect(router.http).await;
    let request = infer_request("m", "expect: 100-continue\r\n").replace("HTTP/1.1", "HTTP/1.0");
    client.send(request.as_bytes()).await;
    assert_eq!(client.answer(false).await.status, 200);
    assert_eq!(agent.seen().len(), 2);
    router.shutdown().await;
}

#[tokio::test]
async fn http_1_0_clients_get_the_connection_closed_unless_they_ask_for_keep_alive() {
    let router = TestRouter::start(RouterConfig::default(), table(vec![])).await;
    let mut client = RawClient::connect(router.http).await;
    client
        .send(b"GET /v2/health/live HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.header("connection"), Some("keep-alive"));
    client.send(b"GET /v2/health/live HTTP/1.0\r\n\r\n").await;
    let answer = client.answer(false).await;
    assert_eq!(answer.body, br#"{"live":true}"#);
    assert!(client.closed().await);
    router.shutdown().await;
}

#[tokio::test]
async fn malformed_heads_get_400_oversized_heads_431_and_smuggling_framing_400() {
    let router = TestRouter::start(RouterConfig::default(), table(vec![])).await;
    let cases: [(Vec<u8>, u16, &str); 4] = [
        (b"GET /v2 HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400, "malformed"),
        (
            format!("GET /v2 HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            431,
            "larger than",
        ),
        (
            b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
            400,
            "both Transfer-Encoding and Content-Length",
        ),
        (
            b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n".to_vec(),
            400,
            "Content-Length values differ",
        ),
    ];
    for (bytes, status, message) in cases {
        let mut client = RawClient::connect(router.http).await;
        client.send(&bytes).await;
        let answer = client.answer(false).await;
        assert_eq!(answer.status, status, "{message}");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(message),
            "{error:?} should contain {message:?}"
        );
        assert!(
            client.closed().await,
            "the connection closes after {status}"
        );
    }
    router.shutdown().await;
}

#[tokio::test]
async fn an_early_error_drains_a_small_body_and_the_connection_serves_the_next_request() {
    let (agent, router) = one_agent_router("a", Mode::Ok).await;
    let mut client = RawClient::connect(router.http).await;
    client.send(infer_request("nope", "").as_bytes()).await;
    assert_eq!(client.answer(false).await.status, 404);
    client.send(infer_request("m", "").as_bytes()).await;
    assert_eq!(client.answer(false).await.status, 200);
    assert_eq!(agent.seen().len(), 1);
    router.shutdown().await;
}

/// A replica that answers one request per connection with `answer` and then closes it without
/// saying so (as a server restarting or timing out idle connections does).
async fn one_answer_per_connection_replica(
    answer: &'static [u8],
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // Head and the 13-byte body.
                while !buf
                    .windows(INFER_BODY.len())
                    .any(|w| w == INFER_BODY.as_bytes())
                {
                    match socket.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let _ = socket.write_all(answer).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_kept_connection_the_replica_closed_is_replaced_without_an_error_or_a_retry_elsewhere() {
    let (addr, connections) = one_answer_per_connection_replica(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    let router = TestRouter::start(
        RouterConfig::default(),
        table(vec![("m", vec![endpoint("s", 0, 1, addr, addr)])]),
    )
    .await;
    let mut client = RawClient::connect(router.http).await;
    for _ in 0..3 {
        client.send(infer_request("m", "").as_bytes()).await;
        let answer = client.answer(false).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"{}");
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(
        metric_value(&router.metrics().await, "coscale_router_retries_total"),
        Some(0.0)
    );
    router.shutdown().await;
}

#[tokio::test]
async fn stopping_closes_idle_connections_and_lets_a_request_in_flight_finish() {
    let (agent, mut router) = one_agent_router("a", Mode::Hold).await;
    let mut idle = RawClient::connect(router.http).await;
    idle.send(b"GET /v2/health/live HTTP/1.1\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    let mut busy = RawClient::connect(router.http).await;
    busy.send(infer_request("m", "").as_bytes()).await;
    agent
        .wait_arrivals(1, "the request reaches the replica")
        .await;
    router.stop.take().unwrap().send(()).unwrap();
    assert!(idle.closed().await, "an idle connection is closed on stop");
    agent.gate.add_permits(1);
    let answer = busy.answer(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(busy.closed().await);
    tokio::time::timeout(DEADLINE, router.task.take().unwrap())
        .await
        .expect("the router stops once the request is answered")
        .unwrap();
}

#[tokio::test]
async fn a_replica_with_a_socket_is_reached_over_it_with_rest_and_grpc() {
    let agent = Arc::new(FakeAgent {
        name: "unix",
        mode: Mode::Ok,
        seen: Mutex::new(Vec::new()),
        arrivals: watch::channel(0).0,
        gate: Semaphore::new(0),
        abandoned: watch::channel(0).0,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s-0.sock");
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    // REST and gRPC on the one socket, served as the agent serves them.
    let grpc = GrpcInferenceServiceServer::new(GrpcAgent(Arc::clone(&agent)));
    let app = axum::Router::new()
        .fallback(agent_rest)
        .with_state(Arc::clone(&agent))
        .route_service(
            "/inference.GRPCInferenceService/{*method}",
            coscale_runtime::grpc_app(grpc).into_service(),
        );
    tokio::spawn(coscale_runtime::serve_http(
        unix,
        app,
        std::future::pending(),
    ));
    // Nothing listens on the TCP address: only the socket can answer.
    let tcp = closed_addr().await;
    let mut on_socket = endpoint("s", 0, 3, tcp, tcp);
    on_socket.data_socket = Some(path.clone());
    let router =
        TestRouter::start(RouterConfig::default(), table(vec![("m", vec![on_socket])])).await;
    for _ in 0..3 {
        let response = router.infer("/v2/models/m/infer").await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["agent"], "unix");
    }
    let mut grpc = router.grpc_client().await;
    for _ in 0..3 {
        let answer = grpc.model_infer(infer_message("m")).await.unwrap();
        assert_eq!(answer.into_inner().id, "unix");
    }
    assert_eq!(agent.seen().len(), 6);
    assert_eq!(agent.seen()[0].internal.as_deref(), Some("m_3"));
    assert_eq!(agent.seen()[5].internal.as_deref(), Some("m_3"));
    // A socket that is gone is a replica that gives no answer: 502 saying where it tried.
    drop(dir);
    let mut gone = endpoint("s", 0, 4, tcp, tcp);
    gone.data_socket = Some(path.clone());
    router.tables.send(table(vec![("m", vec![gone])])).unwrap();
    let client = reqwest::Client::new();
    let response = client
        .post(router.url("/v2/models/m/infer"))
        .body(INFER_BODY)
        .send()
        .await
        .unwrap();
    assert_v2_error(response, 502, "s-0.sock").await;
    // (A new client connection: `grpc` still holds its connection to the old socket's server.)
    let mut fresh = router.grpc_client().await;
    let status = fresh.model_infer(infer_message("m")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("s-0.sock"), "{status:?}");
    router.shutdown().await;
}

#[tokio::test]
async fn idle_and_slow_clients_are_cut_off_after_the_client_timeout() {
    let (agent, http, grpc) = start_agent("a", Mode::Ok).await;
    let router = TestRouter::start(
        RouterConfig {
            client_timeout: Duration::from_millis(300),
            ..RouterConfig::default()
        },
        table(vec![("m", vec![endpoint("s", 0, 1, http, grpc)])]),
    )
    .await;
    // Idle after an answer: closed.
    let mut idle = RawClient::connect(router.http).await;
    idle.send(b"GET /v2/health/live HTTP/1.1\r\n\r\n").await;
    assert_eq!(idle.answer(false).await.status, 200);
    assert!(idle.closed().await);
    // Half a head and then nothing: closed without an answer.
    let mut slow_head = RawClient::connect(router.http).await;
    slow_head.send(b"GET /v2/health/live HTTP/1.1\r\nhos").await;
    assert!(slow_head.closed().await);
    // A body that stops coming: 408 and closed; the replica never sees it.
    let mut slow_body = RawClient::connect(router.http).await;
    slow_body
        .send(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 13\r\n\r\n{\"inp")
        .await;
    let answer = slow_body.answer(false).await;
    assert_eq!(answer.status, 408);
    assert!(String::from_utf8_lossy(&answer.body).contains("within 300 ms"));
    assert!(slow_body.closed().await);
    assert!(agent.seen().is_empty());
    router.shutdown().await;
}

/// A replica whose connection closes in the middle of an answer (as when its process dies) has
/// the request retried on the other replica: the client gets the whole answer from there.
#[tokio::test]
async fn an_answer_cut_off_by_the_replica_is_retried_on_the_other_replica() {
    let (cut_off, _) =
        one_answer_per_connection_replica(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
            .await;
    assert_failed_attempts_are_retried((cut_off, cut_off), false).await;
}

/// A malformed answer that arrives whole is the replica's answer: 502, not retried.
#[tokio::test]
async fn a_malformed_answer_gives_502_and_is_not_retried() {
    let (broken, _) = one_answer_per_connection_replica(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    let (healthy, router, failed, ok) =
        two_requests_over_a_bad_and_a_healthy_replica((broken, broken), 502).await;
    assert_eq!(ok.status(), 200);
    assert_v2_error(failed, 502, "replica s/0 sent a broken answer").await;
    assert_eq!(
        healthy.seen().len(),
        1,
        "the malformed answer was not retried"
    );
    assert_eq!(
        metric_value(&router.metrics().await, "coscale_router_retries_total"),
        Some(0.0)
    );
    router.shutdown().await;
}
