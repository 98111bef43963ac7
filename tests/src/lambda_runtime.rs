//! A small local implementation of the AWS Lambda Runtime API (2018-06-01), enough to run a real function binary
//! (`freshet lambda ...`, or the same binary as `bootstrap`) as its runtime client:
//!
//! - `GET /2018-06-01/runtime/invocation/next` long-polls for the next invocation and answers its event JSON with
//!   the `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms`, `Lambda-Runtime-Invoked-Function-Arn` and
//!   `Lambda-Runtime-Trace-Id` headers;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` and `.../{id}/error` end that invocation;
//! - `POST /2018-06-01/runtime/init/error` records an initialisation failure.
//!
//! This is the one mock of the Lambda tests, because the Lambda service cannot run here; the function binary, the
//! object store and the readers are real. The server binds 127.0.0.1 on a free port and stops when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

/// The ARN the emulated function is invoked as.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:freshet-test";

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST .../response`: the function's answer.
    Response(serde_json::Value),
    /// `POST .../error`: the error type header and the error document (`errorType`, `errorMessage`).
    Error {
        error_type: Option<String>,
        body: serde_json::Value,
    },
}

impl Outcome {
    /// The response, or a panic naming the error.
    pub fn response(self) -> serde_json::Value {
        match self {
            Outcome::Response(v) => v,
            Outcome::Error { error_type, body } => panic!("the invocation failed: {error_type:?} {body}"),
        }
    }
}

struct Invocation {
    id: String,
    event: Vec<u8>,
    deadline_ms: u128,
}

struct Shared {
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_errors: Mutex<Vec<String>>,
    /// Every `/next` served, for checks that the loop went on.
    served: AtomicU64,
}

/// A running Runtime API.
pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<Invocation>,
    next_id: AtomicU64,
    stop: Option<oneshot::Sender<()>>,
}

impl RuntimeApi {
    /// Serve on 127.0.0.1 (a free port) on the current tokio runtime.
    pub async fn start() -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: tokio::sync::Mutex::new(rx),
            waiting: Mutex::new(HashMap::new()),
            init_errors: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            shared,
            queue,
            next_id: AtomicU64::new(1),
            stop: Some(stop),
        }
    }

    /// `host:port` for `AWS_LAMBDA_RUNTIME_API`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The variables the Lambda service sets for a function (those lambda_runtime requires).
    pub fn function_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.endpoint()),
            ("AWS_LAMBDA_FUNCTION_NAME", "freshet-test".to_string()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".to_string()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                "/aws/lambda/freshet-test".to_string(),
            ),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "local".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Invoke the function with `event`, giving it `time_limit`, and wait (at most `time_limit` + 60 s) for its
    /// answer. Panics if none comes.
    pub async fn invoke(&self, event: &serde_json::Value, time_limit: Duration) -> Outcome {
        let id = format!(
            "8476a536-e9f4-11e8-9739-{:012x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        self.shared.waiting.lock().unwrap().insert(id.clone(), tx);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        self.queue
            .send(Invocation {
                id: id.clone(),
                event: serde_json::to_vec(event).unwrap(),
                deadline_ms: now_ms + time_limit.as_millis(),
            })
            .expect("the server is running");
        match tokio::time::timeout(time_limit + Duration::from_secs(60), rx).await {
            Ok(Ok(outcome)) => outcome,
            _ => panic!("invocation {id} got no response or error from the function"),
        }
    }

    /// Initialisation errors the function reported.
    pub fn init_errors(&self) -> Vec<String> {
        self.shared.init_errors.lock().unwrap().clone()
    }

    /// How many `/next` requests were answered with an invocation.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let invocation = shared.queue.lock().await.recv().await;
    let Some(inv) = invocation else {
        return StatusCode::GONE.into_response();
    };
    shared.served.fetch_add(1, Ordering::Relaxed);
    let mut headers = HeaderMap::new();
    let h = |v: String| v.parse().expect("header value");
    headers.insert("lambda-runtime-aws-request-id", h(inv.id.clone()));
    headers.insert("lambda-runtime-deadline-ms", h(inv.deadline_ms.to_string()));
    headers.insert("lambda-runtime-invoked-function-arn", h(FUNCTION_ARN.to_string()));
    headers.insert(
        "lambda-runtime-trace-id",
        h("Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1".to_string()),
    );
    headers.insert("content-type", h("application/json".to_string()));
    (StatusCode::OK, headers, inv.event).into_response()
}

fn finish(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.waiting.lock().unwrap().remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        // The real API answers 400 for an unknown or already finished request id.
        None => StatusCode::BAD_REQUEST,
    }
}

fn json_or_text(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    finish(&shared, &id, Outcome::Response(json_or_text(&body)))
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let error_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    finish(
        &shared,
        &id,
        Outcome::Error {
            error_type,
            body: json_or_text(&body),
        },
    )
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    shared
        .init_errors
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    StatusCode::ACCEPTED
}
