//! The control API's HTTP layer: versioned HTTP+JSON routes, each a handler that decodes
//! its request ([`super::wire`]), calls the use-case layer ([`super::desired`]) or reads
//! the host, and encodes the answer. Nothing here changes state by itself.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /v1/health` | `{"ok": true}` |
//! | `PUT /v1/blobs/{digest}` | stores a component's bytes (checked against the digest) |
//! | `POST /v1/apply` | applies an [`ApplyRequest`], all or nothing (or plans it: `dryRun`) |
//! | `GET /v1/workloads` | the host's status ([`crate::HostStatus`]) |
//! | `GET /v1/workloads/{name}` | one workload's status ([`crate::WorkloadStatus`]) |
//! | `DELETE /v1/workloads/{name}` | deletes a workload or job |
//! | `GET /v1/workloads/{name}/history` | its revisions ([`RevisionInfo`]) |
//! | `POST /v1/workloads/{name}/undo` | goes back to an earlier revision ([`UndoRequest`]) |
//! | `POST /v1/workloads/{name}/restart` | replaces every instance, clearing a failure ([`Restarted`]) |
//! | `POST /v1/workloads/{name}/scale` | sets its replica count ([`ScaleRequest`] → [`Scaled`]) |
//! | `GET /v1/logs/{name}` | its kept output as JSON lines; `follow` streams on |
//! | `GET /v1/events` | kept events as JSON lines; `watch` streams on |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//!
//! Errors are a 4xx or 5xx status with an [`ErrorBody`].

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;

use super::desired::{ChangeError, Desired};
use super::store::is_digest;
use super::wire::{
    ApplyRequest, BlobStored, Deleted, ErrorBody, EventsQuery, Health, LogsQuery, Restarted,
    RevisionInfo, ScaleRequest, Scaled, StreamLine, UndoRequest,
};
use crate::WorkloadStatus;

/// What the routes share.
pub struct ApiState {
    /// The desired state and the host that runs it.
    pub desired: Arc<Desired>,
    /// Recent output and events.
    pub logbook: Arc<super::logbook::Logbook>,
    /// Largest blob accepted.
    pub max_blob_bytes: usize,
}

/// The routes, ready to serve.
pub fn router(state: Arc<ApiState>) -> axum::Router {
    let max_body = state.max_blob_bytes;
    axum::Router::new()
        .route("/v1/health", get(|| async { Json(Health { ok: true }) }))
        .route("/v1/blobs/{digest}", put(put_blob))
        .route("/v1/apply", post(apply))
        .route("/v1/workloads", get(list))
        .route("/v1/workloads/{name}", get(describe).delete(delete))
        .route("/v1/workloads/{name}/history", get(history))
        .route("/v1/workloads/{name}/undo", post(undo))
        .route("/v1/workloads/{name}/restart", post(restart))
        .route("/v1/workloads/{name}/scale", post(scale))
        .route("/v1/logs/{name}", get(logs))
        .route("/v1/events", get(events))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{name}", get(node))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; the API is under /v1/",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// Every error answer is JSON (`{"error", "diagnostics"}`), including the framework's
/// own rejections (a body over the limit, a wrong method, a malformed path).
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.is_success() || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let message = if text.is_empty() {
        reason.to_string()
    } else {
        format!("{reason}: {text}")
    };
    error(status, message)
}

/// The TCP API's bearer token, replaced when the daemon re-reads its token file
/// (SIGHUP): a rotated token takes effect without a restart.
pub struct ApiToken(std::sync::RwLock<String>);

impl ApiToken {
    /// A token.
    pub fn new(token: String) -> Self {
        Self(std::sync::RwLock::new(token))
    }

    /// The token in effect.
    pub fn current(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces it.
    pub fn replace(&self, token: String) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token;
    }
}

/// The TCP API's guard: the request must carry `Authorization: Bearer TOKEN`, compared
/// in constant time; otherwise 401 and nothing runs.
pub async fn require_bearer(
    State(token): State<Arc<ApiToken>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use subtle::ConstantTimeEq as _;
    let offered = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matches = bool::from(offered.as_bytes().ct_eq(token.current().as_bytes()));
    if matches {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "this API needs `Authorization: Bearer TOKEN` with the daemon's token (the CLI sends SETPOINT_TOKEN or --token-file)",
    );
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Kept output of a workload or job, as JSON lines; with `follow`, then new lines.
async fn logs(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    query: Result<axum::extract::Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(q) => q.0,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (kept, live) = state.logbook.logs(
        &name,
        query.instance.as_deref(),
        query.tail.unwrap_or(usize::MAX),
        query.access,
    );
    if kept.is_empty()
        && state
            .desired
            .host()
            .status()
            .await
            .workload(&name)
            .is_none()
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("no workload or job `{name}`, and no output kept for one"),
        );
    }
    let instance = query.instance;
    let access = query.access;
    let keep = move |l: &super::logbook::LogEntry| {
        *l.workload == *name
            && instance.as_deref().is_none_or(|i| *l.instance == *i)
            && (l.stream == crate::runtime::output::Stream::Access) == access
    };
    ndjson(kept, query.follow.then_some(live), keep)
}

/// Kept events (of one workload, if asked), as JSON lines; with `watch`, then new ones.
async fn events(
    State(state): State<Arc<ApiState>>,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(q) => q.0,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (kept, live) = state.logbook.events(query.workload.as_deref());
    if let Some(name) = &query.workload
        && kept.is_empty()
        && state.desired.host().status().await.workload(name).is_none()
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("no workload or job `{name}`, and no events kept for one"),
        );
    }
    let workload = query.workload;
    let keep = move |e: &serde_json::Value| workload.as_deref().is_none_or(|w| e["workload"] == w);
    ndjson(kept, query.watch.then_some(live), keep)
}

/// A newline-delimited JSON answer: `kept`, then (if following) each item `live` brings
/// that `keep` accepts, until the client goes away. A follower too slow for the
/// broadcast is told how many items it missed.
fn ndjson<T: Serialize + Clone + Send + 'static>(
    kept: Vec<T>,
    live: Option<tokio::sync::broadcast::Receiver<T>>,
    keep: impl Fn(&T) -> bool + Send + 'static,
) -> Response {
    use futures_util::StreamExt as _;
    let head = futures_util::stream::iter(
        kept.into_iter()
            .map(|v| Ok::<_, std::convert::Infallible>(json_line(&v))),
    );
    let tail = futures_util::stream::unfold((live, keep), |(live, keep)| async move {
        let mut rx = live?;
        loop {
            match rx.recv().await {
                Ok(item) if keep(&item) => {
                    return Some((Ok(json_line(&item)), (Some(rx), keep)));
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = StreamLine::<()>::Skipped { skipped: n };
                    return Some((Ok(json_line(&note)), (Some(rx), keep)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let body = axum::body::Body::from_stream(head.chain(tail));
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

/// One JSON line.
fn json_line<T: Serialize>(value: &T) -> Bytes {
    let mut text = serde_json::to_string(value).unwrap_or_default();
    text.push('\n');
    text.into()
}

/// An error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: message.into(),
        diagnostics: Vec::new(),
    };
    (status, Json(body)).into_response()
}

/// A rejected manifest: 422 with every located problem.
fn rejected(rejected: &crate::Rejected) -> Response {
    let body = ErrorBody {
        error: format!(
            "rejected: {} problem(s); nothing was changed",
            rejected.diagnostics.len()
        ),
        diagnostics: rejected.diagnostics.iter().map(|d| d.to_string()).collect(),
    };
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// Stores an uploaded component as it arrives (never whole in memory): written to a
/// private temporary file while hashed, put in place only if the digest matches and the
/// size is within the limit.
async fn put_blob(
    State(state): State<Arc<ApiState>>,
    UrlPath(digest): UrlPath<String>,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt as _;
    if !is_digest(&digest) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{digest}` is not a digest; expected sha256: and 64 lowercase hex digits"),
        );
    }
    let created = || {
        let body = BlobStored {
            digest: digest.clone(),
        };
        (StatusCode::CREATED, Json(body)).into_response()
    };
    let store = state.desired.store();
    if tokio::task::block_in_place(|| store.has_blob(&digest)) {
        return created();
    }
    let mut blob = match store.new_blob() {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the upload broke off: {e}"),
                );
            }
        };
        if blob.len() + chunk.len() as u64 > state.max_blob_bytes as u64 {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the component is larger than {}, the most this daemon stores",
                    bytesize::ByteSize(state.max_blob_bytes as u64)
                ),
            );
        }
        if let Err(e) = tokio::task::block_in_place(|| blob.write(&chunk)) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    match tokio::task::block_in_place(|| blob.finish(Some(&digest))) {
        Ok(_) => created(),
        Err(e @ super::store::StoreError::Mismatch { .. }) => error(
            StatusCode::BAD_REQUEST,
            format!("the upload does not match: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Decodes a JSON body, or answers 400 saying what `what` should look like.
fn body_of<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("the body is not {what}: {e}"),
        ))
    })
}

/// The answer for a change that changed nothing.
fn refused(e: ChangeError) -> Response {
    match e {
        ChangeError::Rejected(r) => rejected(&r),
        ChangeError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        ChangeError::Conflict(m) => error(StatusCode::CONFLICT, m),
        ChangeError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        ChangeError::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// JSON, or the refusal.
fn answer<T: Serialize>(result: Result<T, ChangeError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => refused(e),
    }
}

async fn apply(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    let request: ApplyRequest = match body_of(
        &body,
        "an apply request; send JSON {\"documents\": [{\"source\", \"text\"}], \"files\": {path: digest}, \"dryRun\": bool}",
    ) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if request.documents.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no documents to apply");
    }
    let writing = state.desired.write().await;
    answer(
        writing
            .apply(request.documents, request.files, request.dry_run)
            .await,
    )
}

/// The revisions a workload has had, oldest first.
async fn history(State(state): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Response {
    answer::<Vec<RevisionInfo>>(state.desired.history(&name).await)
}

/// Goes back to an earlier revision of a workload.
async fn undo(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let request: UndoRequest = if body.is_empty() {
        UndoRequest::default()
    } else {
        match body_of(&body, "an undo request") {
            Ok(r) => r,
            Err(e) => return *e,
        }
    };
    let writing = state.desired.write().await;
    answer(writing.undo(&name, request.to_revision.as_deref()).await)
}

/// Sets a workload's replica count (durably, like an apply of its manifest with that
/// count).
async fn scale(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let request: ScaleRequest = match body_of(&body, "a scale request") {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let writing = state.desired.write().await;
    answer(
        writing
            .scale(&name, request.replicas)
            .await
            .map(|()| Scaled {
                scaled: name,
                replicas: request.replicas,
            }),
    )
}

/// Replaces every instance of a workload, clearing a failure.
async fn restart(State(state): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Response {
    let writing = state.desired.write().await;
    answer(
        writing
            .restart(&name)
            .await
            .map(|()| Restarted { restarted: name }),
    )
}

/// Prometheus metrics (OpenMetrics text).
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.desired.host().metrics().await,
    )
        .into_response()
}

async fn list(State(state): State<Arc<ApiState>>) -> Json<crate::HostStatus> {
    Json(state.desired.shown_status().await)
}

/// Why there are no nodes to show.
fn no_fleet() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this daemon is not in a fleet: start it with --fleet nats://HOST:PORT --node NAME",
    )
}

/// The fleet's live nodes.
async fn nodes(State(state): State<Arc<ApiState>>) -> Response {
    #[cfg(feature = "fleet")]
    if let Some(link) = state.desired.fleet() {
        let fenced = *link.fenced.borrow();
        return Json(super::fleet::view::nodes(&link.fleet, &link.mirror, fenced)).into_response();
    }
    let _ = state;
    no_fleet()
}

/// One node, with what runs on it.
async fn node(State(state): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Response {
    #[cfg(feature = "fleet")]
    if let Some(link) = state.desired.fleet() {
        let fenced = *link.fenced.borrow();
        let found = super::fleet::view::nodes(&link.fleet, &link.mirror, fenced)
            .into_iter()
            .find(|n| n.name == name);
        let Some(node) = found else {
            return error(
                StatusCode::NOT_FOUND,
                format!("node `{name}` not found among the fleet's live nodes"),
            );
        };
        let status = state.desired.shown_status().await;
        let mut instances_by_workload = std::collections::BTreeMap::new();
        for w in status.workloads {
            let here: Vec<_> = w
                .instances
                .into_iter()
                .filter(|i| i.node.as_deref() == Some(name.as_str()))
                .collect();
            if !here.is_empty() {
                instances_by_workload.insert(w.name, here);
            }
        }
        return Json(super::wire::NodeDetail {
            node,
            instances_by_workload,
        })
        .into_response();
    }
    let _ = (state, name);
    no_fleet()
}

async fn describe(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<WorkloadStatus>, Response> {
    let status = state.desired.shown_status().await;
    status.workload(&name).cloned().map(Json).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("workload `{name}` not found"),
        )
    })
}

async fn delete(State(state): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Response {
    let writing = state.desired.write().await;
    match writing.delete(&name).await {
        Ok(true) => Json(Deleted { deleted: name }).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("workload `{name}` not found"),
        ),
        Err(e) => refused(e),
    }
}
