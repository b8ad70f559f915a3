//! One request's way through the front: its route, its limits (413), a place in the
//! workload's queue (503 with `Retry-After` when full), a replica's answer streamed
//! back, and one retry on a fresh instance when the first failed before its response
//! head and the request may be sent twice (safe method, body small enough to keep).
//! Every answer the host gives itself is plain text saying why.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::oneshot;

use super::routes::RouteTable;
use crate::metrics::Metrics;
use crate::runtime::http::{Answer, Failure, HttpCall, RequestBody};

/// Any error of a response body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body: the guest's, streamed, or the host's own text.
pub(crate) type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Where a request's traces go: its metrics and its access line.
pub(crate) struct Outlets {
    pub metrics: Arc<Metrics>,
    pub logs: tokio::sync::broadcast::Sender<crate::runtime::LogLine>,
    pub max_head_bytes: usize,
}

impl Outlets {
    /// Counts an answer, and writes its access line when anyone listens.
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &self,
        peer: std::net::SocketAddr,
        request: (&http::Method, &http::Uri, http::Version),
        route: &str,
        service: &crate::runtime::http::Service,
        status: StatusCode,
        took: Duration,
        replica: Option<&Arc<str>>,
    ) {
        self.metrics
            .http_answered(service.workload(), route, status.as_u16(), took);
        if self.logs.receiver_count() == 0 {
            return;
        }
        let (method, uri, version) = request;
        let line = format!(
            "{peer} \"{method} {uri} {version:?}\" {} {:.3}ms {}",
            status.as_u16(),
            took.as_secs_f64() * 1000.0,
            replica.map_or("-", |r| r)
        );
        let _ = self.logs.send(crate::runtime::LogLine {
            workload: Arc::from(service.workload()),
            instance: replica.cloned().unwrap_or_else(|| Arc::from("-")),
            stream: crate::runtime::output::Stream::Access,
            line,
        });
    }
}

/// Serves one request against `table`.
pub(crate) async fn forward(
    table: Arc<RouteTable>,
    outlets: Arc<Outlets>,
    peer: std::net::SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let arrived = Instant::now();
    let metrics = &outlets.metrics;
    let max_head_bytes = outlets.max_head_bytes;
    // hyper bounds what it buffers; this is the exact limit.
    if head_size(&request) > max_head_bytes {
        return Ok(text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request head is over this host's limit of {max_head_bytes} bytes\n"),
        ));
    }
    let Some(route) = table.find(request.uri().path()) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("no workload serves {}\n", request.uri().path()),
        ));
    };
    let spec = route.spec.clone();
    let service = route.service.clone();
    let (method, uri, version) = (
        request.method().clone(),
        request.uri().clone(),
        request.version(),
    );
    let record = |status: StatusCode, replica: Option<&Arc<str>>| {
        let took = arrived.elapsed();
        outlets.answered(
            peer,
            (&method, &uri, version),
            &route.prefix,
            &service,
            status,
            took,
            replica,
        );
    };
    let answer = |status: StatusCode| record(status, None);
    let length = match content_length(request.headers()) {
        Ok(length) => length,
        Err(why) => {
            answer(StatusCode::BAD_REQUEST);
            return Ok(text(StatusCode::BAD_REQUEST, why));
        }
    };
    if length.is_some_and(|n| n > spec.max_request_body) {
        answer(StatusCode::PAYLOAD_TOO_LARGE);
        return Ok(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over this service's limit of {} bytes\n",
                spec.max_request_body
            ),
        ));
    }
    let deadline = crate::clock::after(arrived, spec.request_timeout);
    let (parts, body) = request.into_parts();
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let no_body = length.unwrap_or(0) == 0 && !chunked;
    let retryable = spec
        .retry
        .methods
        .iter()
        .any(|m| *m == parts.method.as_str())
        && (no_body || length.is_some_and(|n| n <= spec.retry.max_body));
    // A body that may be sent twice is read first, within the request's time.
    let (kept, mut streamed): (Option<Bytes>, Option<RequestBody>) = if !retryable {
        (None, Some(limited_body(body, spec.max_request_body)))
    } else if no_body {
        (Some(Bytes::new()), None)
    } else {
        let limit = usize::try_from(spec.retry.max_body).unwrap_or(usize::MAX);
        let read = Limited::new(body, limit).collect();
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(collected)) => (Some(collected.to_bytes()), None),
            Ok(Err(_)) => {
                answer(StatusCode::BAD_REQUEST);
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read\n".into(),
                ));
            }
            Err(_) => {
                answer(StatusCode::REQUEST_TIMEOUT);
                return Ok(text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time\n".into(),
                ));
            }
        }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let body = match (&kept, streamed.take()) {
            (Some(bytes), _) => full_body(bytes.clone()),
            (None, Some(body)) => body,
            (None, None) => break,
        };
        let request = guest_request(&parts, body);
        let (respond, answered) = oneshot::channel();
        let call = HttpCall {
            request,
            deadline,
            respond,
        };
        if attempt == 1 {
            if service.submit(call).is_err() {
                answer(StatusCode::SERVICE_UNAVAILABLE);
                metrics.http_rejected(service.workload(), "QueueFull");
                let mut busy = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} has {} requests waiting already; try again shortly\n",
                        service.workload(),
                        spec.max_queued
                    ),
                );
                busy.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(busy);
            }
        } else {
            metrics.http_retried(service.workload());
            service.resubmit(call);
        }
        // A little past the deadline: the replica answers 504 itself at the deadline.
        let wait = tokio::time::timeout_at(
            crate::clock::after(deadline, Duration::from_millis(100)).into(),
            answered,
        );
        let failure = match wait.await {
            Ok(Ok(Answer::Response {
                response,
                finished,
                replica,
            })) => {
                record(response.status(), Some(&replica));
                let (parts, body) = response.into_parts();
                let body = Guarded {
                    inner: body,
                    finished: Some(finished),
                };
                return Ok(Response::from_parts(parts, BodyExt::boxed_unsync(body)));
            }
            Ok(Ok(Answer::Failed(failure))) => failure,
            Ok(Err(_)) => {
                answer(StatusCode::SERVICE_UNAVAILABLE);
                return Ok(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{} stopped serving\n", service.workload()),
                ));
            }
            Err(_) => Failure::TimedOut,
        };
        if let Failure::Crashed(_) = failure
            && kept.is_some()
            && attempt == 1
        {
            continue;
        }
        let (status, message) = match &failure {
            Failure::TimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "{} did not answer within {}\n",
                    service.workload(),
                    crate::manifest::bounds::show(spec.request_timeout)
                ),
            ),
            Failure::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
            Failure::Crashed(_) | Failure::NoResponse(_) => (
                StatusCode::BAD_GATEWAY,
                format!("{}: {failure}\n", service.workload()),
            ),
        };
        answer(status);
        return Ok(text(status, message));
    }
    answer(StatusCode::BAD_GATEWAY);
    Ok(text(
        StatusCode::BAD_GATEWAY,
        format!("{}: the request could not be served\n", service.workload()),
    ))
}

/// The bytes of a request's head as sent: the request line and every header line.
fn head_size<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    request.headers().iter().fold(line, |n, (k, v)| {
        n.saturating_add(k.as_str().len() + v.len() + 4)
    })
}

/// The request as the guest gets it: the client's head and the body.
fn guest_request(parts: &http::request::Parts, body: RequestBody) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// The request's `Content-Length`, if it states one; an error when it is malformed.
fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, String> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok());
    match (parsed, values.next()) {
        (Some(n), None) => Ok(Some(n)),
        _ => Err("the request's Content-Length is malformed\n".into()),
    }
}

/// A streamed request body, cut off with an error past `limit` bytes.
fn limited_body(body: Incoming, limit: u64) -> RequestBody {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Limited::new(body, limit)
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => wasmtime_wasi_http::Error::Hyper(*e),
            Err(_) => wasmtime_wasi_http::Error::HttpRequestBodySize(None),
        })
        .boxed_unsync()
}

/// A kept body, to send (again).
fn full_body(bytes: Bytes) -> RequestBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A plain-text answer of the host's own.
pub(crate) fn text(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The guest's response body, which ends cleanly only if the handler returned
/// normally: a trap mid-body must reach the client as a broken response, never as a
/// short one that looks complete.
struct Guarded {
    inner: crate::runtime::http::GuestBody,
    finished: Option<oneshot::Receiver<bool>>,
}

/// The error a cut-short body ends with.
#[derive(Debug)]
struct CutShort;

impl std::fmt::Display for CutShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the instance failed while writing the response body")
    }
}

impl std::error::Error for CutShort {}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                let Some(finished) = self.finished.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(finished).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(true)) => {
                        self.finished = None;
                        Poll::Ready(None)
                    }
                    Poll::Ready(_) => {
                        self.finished = None;
                        Poll::Ready(Some(Err(Box::new(CutShort))))
                    }
                }
            }
        }
    }
}
