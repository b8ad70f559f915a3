//! The control API: versioned HTTP+JSON routes over the daemon's [`Host`] and [`Store`].
//! The wire types here are shared with the CLI, which is a client of these routes.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /v1/health` | `{"ok": true}` |
//! | `PUT /v1/blobs/{digest}` | stores a component's bytes (checked against the digest) |
//! | `POST /v1/apply` | applies an [`ApplyRequest`], all or nothing (or plans it: `dryRun`) |
//! | `GET /v1/workloads` | the host's status |
//! | `GET /v1/workloads/{name}` | one workload's status |
//! | `DELETE /v1/workloads/{name}` | deletes a workload |
//!
//! Errors are a 4xx or 5xx status with an [`ErrorBody`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use super::store::{ApplyRecord, Document, Store, is_digest};
use crate::host::PlannedChange;
use crate::manifest::{ManifestLimits, Rejected, Workload, load_str_resolving};
use crate::{Host, HostStatus, WorkloadStatus};

/// A request to apply manifest documents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyRequest {
    /// The manifest files, each with the name errors should use.
    pub documents: Vec<Document>,
    /// Each component or plugin path the documents name (joined onto the manifest's
    /// directory) → the digest of the bytes uploaded with `PUT /v1/blobs/{digest}`.
    pub files: BTreeMap<String, String>,
    /// Only report what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to an apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    /// Per workload, what changes (or, for a dry run, would change).
    pub changes: Vec<PlannedChange>,
    /// True for a dry run: nothing was changed.
    pub dry_run: bool,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// Located problems (file:line:column: message, and help), one per entry.
    #[serde(default)]
    pub diagnostics: Vec<String>,
}

/// What the routes share.
pub struct ApiState {
    /// The host the daemon runs.
    pub host: Host,
    /// Its durable state.
    pub store: Arc<Store>,
    /// Recent output and events.
    pub logbook: Arc<super::logbook::Logbook>,
    /// Bounds on manifests.
    pub limits: ManifestLimits,
    /// Applies and deletes run one at a time, so the store and the host agree.
    pub writes: tokio::sync::Mutex<()>,
    /// Largest blob accepted.
    pub max_blob_bytes: usize,
    /// Stored applies not run (see [`crate::status::QuarantinedApply`]); an apply or a
    /// delete of the workloads they define ends them.
    pub quarantined: std::sync::Mutex<Vec<crate::status::QuarantinedApply>>,
}

impl ApiState {
    /// The host's status with the quarantined applies.
    pub async fn status(&self) -> HostStatus {
        let mut status = self.host.status().await;
        status.quarantined = lock(&self.quarantined).clone();
        status
    }

    /// Names applied anew or deleted are no longer quarantined.
    fn release(&self, names: &[String]) {
        let mut quarantined = lock(&self.quarantined);
        for entry in quarantined.iter_mut() {
            entry.workloads.retain(|w| !names.contains(w));
        }
        quarantined.retain(|e| !e.workloads.is_empty());
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The routes, ready to serve.
pub fn router(state: Arc<ApiState>) -> axum::Router {
    let max_body = state.max_blob_bytes;
    axum::Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/v1/blobs/{digest}", put(put_blob))
        .route("/v1/apply", post(apply))
        .route("/v1/workloads", get(list))
        .route("/v1/workloads/{name}", get(describe).delete(delete))
        .route("/v1/workloads/{name}/history", get(history))
        .route("/v1/workloads/{name}/undo", post(undo))
        .route("/v1/logs/{name}", get(logs))
        .route("/v1/events", get(events))
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

/// The TCP API's guard: the request must carry `Authorization: Bearer TOKEN`, compared
/// in constant time; otherwise 401 and nothing runs.
pub async fn require_bearer(
    State(token): State<Arc<String>>,
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
    if bool::from(offered.as_bytes().ct_eq(token.as_bytes())) {
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

/// Query of `GET /v1/logs/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only this instance's lines.
    pub instance: Option<String>,
    /// At most this many of the kept lines (default: all kept).
    pub tail: Option<usize>,
    /// Keep the answer open and stream new lines as they come.
    #[serde(default)]
    pub follow: bool,
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this workload's or job's events.
    pub workload: Option<String>,
    /// Keep the answer open and stream new events as they come.
    #[serde(default)]
    pub watch: bool,
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
    );
    if kept.is_empty() && state.host.status().await.workload(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no workload or job `{name}`, and no output kept for one"),
        );
    }
    let instance = query.instance;
    let keep = move |l: &super::logbook::LogEntry| {
        *l.workload == *name && instance.as_deref().is_none_or(|i| *l.instance == *i)
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
                    let note = serde_json::json!({"skipped": n}).to_string() + "\n";
                    return Some((Ok(Bytes::from(note)), (Some(rx), keep)));
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
fn rejected(rejected: &Rejected) -> Response {
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
        (
            StatusCode::CREATED,
            Json(serde_json::json!({"digest": digest})),
        )
            .into_response()
    };
    if tokio::task::block_in_place(|| state.store.has_blob(&digest)) {
        return created();
    }
    let mut blob = match state.store.new_blob() {
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

/// Loads an apply's documents, finding the files they name among the stored blobs.
pub(super) fn load(
    store: &Store,
    documents: &[Document],
    files: &BTreeMap<String, String>,
    limits: &ManifestLimits,
) -> Result<Vec<Workload>, Rejected> {
    let resolve = |joined: &Path| -> std::io::Result<PathBuf> {
        let key = joined.to_string_lossy();
        let digest = files.get(key.as_ref()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "it was not uploaded with the apply",
            )
        })?;
        if !store.has_blob(digest) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("its bytes ({digest}) are not in the daemon's store; upload them first"),
            ));
        }
        Ok(store.blob_path(digest))
    };
    let mut workloads = Vec::new();
    let mut diagnostics = Vec::new();
    for doc in documents {
        match load_str_resolving(Path::new(&doc.source), &doc.text, limits, &resolve) {
            Ok(found) => workloads.extend(found),
            Err(e) => diagnostics.extend(e.diagnostics),
        }
    }
    if diagnostics.is_empty() {
        Ok(workloads)
    } else {
        Err(Rejected { diagnostics })
    }
}

/// Pins every directory `workloads` grant to the directory its path names: to the one
/// `recorded` at apply when there is a record of it (a restart), else to the one there
/// now. Returns what was pinned, for the apply's record.
pub(super) fn pin_grants(
    workloads: &mut [Workload],
    recorded: Option<&BTreeMap<String, crate::opened_dir::DirIdentity>>,
) -> Result<BTreeMap<String, crate::opened_dir::DirIdentity>, Rejected> {
    let mut pinned = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for w in workloads.iter_mut() {
        for grant in &mut w.spec.dirs {
            let key = grant.host.to_string_lossy().into_owned();
            let identity = match recorded.and_then(|r| r.get(&key)) {
                Some(identity) => *identity,
                None => match crate::opened_dir::OpenedDir::open(&grant.host) {
                    Ok(dir) => dir.identity(),
                    Err(e) => {
                        let origin = w.dir_origins.get(&grant.guest).or(w.origin.as_ref());
                        diagnostics.push(crate::Diagnostic::at(origin.cloned(), e.to_string()));
                        continue;
                    }
                },
            };
            grant.pinned = Some(identity);
            pinned.insert(key, identity);
        }
    }
    if diagnostics.is_empty() {
        Ok(pinned)
    } else {
        Err(Rejected { diagnostics })
    }
}

async fn apply(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    let request: ApplyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not an apply request: {e}; send JSON {{\"documents\": [{{\"source\", \"text\"}}], \"files\": {{path: digest}}, \"dryRun\": bool}}"
                ),
            );
        }
    };
    if request.documents.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no documents to apply");
    }
    let _writing = state.writes.lock().await;
    applied(
        apply_documents(
            &state,
            request.documents,
            request.files,
            request.dry_run,
            None,
        )
        .await,
    )
}

/// Loads, plans, stores (with each new revision in its workload's history) and runs
/// documents, all or nothing; `only` keeps one workload of them (a rollback). The
/// caller holds the write lock.
pub(super) async fn apply_documents(
    state: &ApiState,
    documents: Vec<Document>,
    files: BTreeMap<String, String>,
    dry_run: bool,
    only: Option<&str>,
) -> Result<ApplyResponse, ApplyError> {
    let mut workloads = match load(&state.store, &documents, &files, &state.limits) {
        Ok(w) => w,
        Err(e) => return Err(ApplyError::Rejected(e)),
    };
    if let Some(only) = only {
        workloads.retain(|w| w.name == only);
    }
    let dirs = pin_grants(&mut workloads, None).map_err(ApplyError::Rejected)?;
    let names: Vec<String> = workloads.iter().map(|w| w.name.clone()).collect();
    // The plan checks everything `apply` checks, so a rejection happens here, before
    // anything is stored.
    let changes = match state.host.plan(workloads.clone()).await {
        Ok(c) => c,
        Err(e) => return Err(ApplyError::Rejected(e)),
    };
    if dry_run {
        return Ok(ApplyResponse {
            changes,
            dry_run: true,
        });
    }
    // Durable first: once stored, a crash before the host runs it still converges
    // (the restart replays the store); a crash before the commit loses an apply the
    // client was never told had succeeded.
    let record = ApplyRecord {
        documents,
        files,
        applied_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        dirs,
        replicas: BTreeMap::new(),
    };
    // Jobs have no rollouts, so no history.
    let revisions: Vec<(String, String)> = changes
        .iter()
        .filter(|c| c.kind == "Workload")
        .map(|c| (c.name.clone(), c.revision.clone()))
        .collect();
    if let Err(e) =
        tokio::task::block_in_place(|| state.store.record_apply(&record, &names, &revisions))
    {
        return Err(ApplyError::Internal(format!(
            "the daemon cannot store the apply, so nothing was applied: {e}; make room on the state directory's file system and apply again"
        )));
    }
    match state.host.apply(workloads).await {
        Ok(_) => {
            state.release(&names);
            Ok(ApplyResponse {
                changes,
                dry_run: false,
            })
        }
        // Planned a moment ago, so only a host shutting down gets here.
        Err(e) => Err(ApplyError::Rejected(e)),
    }
}

/// Why an apply changed nothing.
#[derive(Debug)]
pub(super) enum ApplyError {
    /// The documents were refused, with located diagnostics.
    Rejected(Rejected),
    /// The store failed.
    Internal(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(r) => write!(f, "{r}"),
            Self::Internal(e) => write!(f, "{e}"),
        }
    }
}

/// An apply's answer.
fn applied(result: Result<ApplyResponse, ApplyError>) -> Response {
    match result {
        Ok(response) => Json(response).into_response(),
        Err(ApplyError::Rejected(r)) => rejected(&r),
        Err(ApplyError::Internal(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Deletes a workload or job: forgotten durably first, so a crash after this does not
/// bring it back, then stopped. False if it was neither stored nor running. The caller
/// holds the write lock.
pub(super) async fn delete_named(state: &ApiState, name: &str) -> Result<bool, String> {
    let stored =
        tokio::task::block_in_place(|| state.store.delete(name)).map_err(|e| {
            format!("the daemon cannot store the delete, so nothing was deleted: {e}; make room on the state directory's file system and delete again")
        })?;
    let running = state.host.delete(name).await.unwrap_or(false);
    state.logbook.forget_logs(name);
    state.release(&[name.to_string()]);
    if stored {
        let collected = tokio::task::block_in_place(|| state.store.collect_blobs());
        if let Err(e) = collected {
            tracing::warn!("cannot collect unused blobs: {e}");
        }
    }
    Ok(stored || running)
}

/// One revision in `GET /v1/workloads/{name}/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionInfo {
    /// The revision.
    pub revision: String,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
    /// Whether it is the revision the workload runs now.
    pub current: bool,
}

/// Body of `POST /v1/workloads/{name}/undo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UndoRequest {
    /// The revision to go back to (default: the one before the current).
    pub to_revision: Option<String>,
}

/// The revision workload `name` runs; a job or an unknown name is an error answer.
async fn current_revision(state: &ApiState, name: &str) -> Result<String, Response> {
    match state.host.status().await.workload(name) {
        Some(w) if w.kind == "Job" => Err(error(
            StatusCode::BAD_REQUEST,
            format!("`{name}` is a job: jobs have no rollouts"),
        )),
        Some(w) => Ok(w.revision.clone()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("workload `{name}` not found"),
        )),
    }
}

/// The revisions a workload has had, oldest first.
async fn history(State(state): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Response {
    let current = match current_revision(&state, &name).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    match state.store.history(&name) {
        Ok(entries) => Json(
            entries
                .into_iter()
                .map(|e| RevisionInfo {
                    current: e.revision == current,
                    revision: e.revision,
                    applied_at: humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.applied_at),
                    )
                    .to_string(),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Goes back to an earlier revision of a workload: the documents that defined it are
/// applied again (a new rollout), and that becomes the newest history entry.
async fn undo(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let request: UndoRequest = if body.is_empty() {
        UndoRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not an undo request: {e}"),
                );
            }
        }
    };
    let _writing = state.writes.lock().await;
    let current = match current_revision(&state, &name).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let entries = match state.store.history(&name) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let target = match &request.to_revision {
        Some(wanted) => entries.iter().rev().find(|e| e.revision == *wanted),
        None => entries.iter().rev().find(|e| e.revision != current),
    };
    let Some(target) = target else {
        let known: Vec<&str> = entries.iter().map(|e| e.revision.as_str()).collect();
        return error(
            StatusCode::NOT_FOUND,
            match &request.to_revision {
                Some(r) => format!(
                    "`{name}` has no revision {r} in its history ({})",
                    known.join(", ")
                ),
                None => format!("`{name}` has no earlier revision to go back to"),
            },
        );
    };
    if target.revision == current {
        return error(
            StatusCode::CONFLICT,
            format!("`{name}` already runs revision {current}"),
        );
    }
    let record = match state.store.apply_record(target.apply) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the apply of revision {} is no longer stored",
                    target.revision
                ),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    applied(apply_documents(&state, record.documents, record.files, false, Some(&name)).await)
}

/// Prometheus metrics (OpenMetrics text).
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.host.metrics().await,
    )
        .into_response()
}

async fn list(State(state): State<Arc<ApiState>>) -> Json<HostStatus> {
    Json(state.status().await)
}

async fn describe(
    State(state): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<WorkloadStatus>, Response> {
    let status = state.host.status().await;
    status.workload(&name).cloned().map(Json).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("workload `{name}` not found"),
        )
    })
}

async fn delete(State(state): State<Arc<ApiState>>, UrlPath(name): UrlPath<String>) -> Response {
    let _writing = state.writes.lock().await;
    let found = match delete_named(&state, &name).await {
        Ok(found) => found,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if found {
        Json(serde_json::json!({"deleted": name})).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("workload `{name}` not found"),
        )
    }
}
