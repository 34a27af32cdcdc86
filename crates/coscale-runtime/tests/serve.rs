//! `serve_http`: serves HTTP/1.1 and HTTP/2 (prior knowledge), and stops gracefully: a request
//! in flight when the shutdown comes is answered, idle keep-alive connections do not hold the
//! shutdown up, and nothing new is accepted afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

const DEADLINE: Duration = Duration::from_secs(10);

struct Served {
    base: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
    /// Lets the `/slow` handler answer.
    release: Arc<Notify>,
    /// Notified when the `/slow` handler has started.
    entered: Arc<Notify>,
}

async fn start() -> Served {
    let release = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let app = Router::new()
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/slow",
            get({
                let (release, entered) = (release.clone(), entered.clone());
                move || async move {
                    entered.notify_one();
                    release.notified().await;
                    "done"
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel();
    let done = tokio::spawn(coscale_runtime::serve_http(listener, app, async {
        let _ = stopped.await;
    }));
    Served {
        base,
        stop,
        done,
        release,
        entered,
    }
}

/// POSTs `body` to `/echo` `times` times over one HTTP/2 connection (prior knowledge), as gRPC
/// clients and h2c-speaking proxies do; returns the answers.
async fn echo_over_http2(base: &str, body: &str, times: usize) -> Vec<(http::StatusCode, String)> {
    use http_body_util::{BodyExt, Full};
    let mut send = common::http2_connection(base.trim_start_matches("http://")).await;
    let mut answers = Vec::new();
    for _ in 0..times {
        let request = http::Request::post(format!("{base}/echo"))
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .unwrap();
        let answer = send.send_request(request).await.unwrap();
        assert_eq!(answer.version(), http::Version::HTTP_2);
        let status = answer.status();
        let text = answer.into_body().collect().await.unwrap().to_bytes();
        answers.push((status, String::from_utf8(text.to_vec()).unwrap()));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http1_and_http2_on_many_requests_per_connection() {
    let served = start().await;
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    for i in 0..50 {
        let body = format!("request {i}");
        let answer = http1
            .post(format!("{}/echo", served.base))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.version(), reqwest::Version::HTTP_11);
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), body);
    }
    for (status, text) in echo_over_http2(&served.base, "over h2", 50).await {
        assert_eq!(status, 200);
        assert_eq!(text, "over h2");
    }
    served.stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, served.done)
        .await
        .expect("serve_http returned after the shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_answers_the_request_in_flight_then_accepts_nothing() {
    let served = start().await;
    let client = reqwest::Client::new();
    // An idle keep-alive connection, which must not hold the shutdown up.
    let idle = client
        .post(format!("{}/echo", served.base))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(idle.text().await.unwrap(), "x");
    // A request in flight when the shutdown comes.
    let in_flight = tokio::spawn({
        let url = format!("{}/slow", served.base);
        async move { reqwest::Client::new().get(url).send().await }
    });
    tokio::time::timeout(DEADLINE, served.entered.notified())
        .await
        .expect("the slow handler started");
    served.stop.send(()).unwrap();
    let mut done = served.done;
    // Still serving the request in flight.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut done)
            .await
            .is_err(),
        "serve_http returned with a request in flight"
    );
    served.release.notify_one();
    let answer = tokio::time::timeout(DEADLINE, in_flight)
        .await
        .expect("the request in flight was answered")
        .unwrap()
        .expect("the request in flight was answered, not cut off");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "done");
    tokio::time::timeout(DEADLINE, done)
        .await
        .expect("serve_http returned once the request in flight was answered")
        .unwrap();
    let refused = reqwest::Client::new()
        .get(format!("{}/slow", served.base))
        .timeout(DEADLINE)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a new connection after the shutdown was served"
    );
}

#[tokio::test]
async fn nodelay_turns_nagle_off_on_every_accepted_connection() {
    use axum::serve::Listener;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listener = coscale_runtime::nodelay(listener);
    for _ in 0..3 {
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("the connection was accepted");
        assert!(accepted.nodelay().unwrap());
        assert_eq!(peer, client.local_addr().unwrap());
        // The client's end is left as it was: the option is the server's choice for its end.
        assert!(!client.nodelay().unwrap());
    }
}
