//! The CLI's side of the control API: HTTP/1.1 requests over the daemon's Unix socket,
//! or over TCP with the daemon's bearer token.

use std::path::PathBuf;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use setpoint::daemon::api::ErrorBody;

/// Where the daemon's API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Its Unix socket (access is the socket file's permissions).
    Unix(PathBuf),
    /// Its TCP listener, `host:port`, with the bearer token (or why there is none).
    Tcp {
        /// `host:port`.
        addr: String,
        /// The token, or what went wrong finding it.
        token: Result<String, String>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

/// A connection target: the daemon's API.
pub struct Client {
    endpoint: Endpoint,
}

/// Either kind of connection.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A failed request: the daemon's error answer, or why it could not be asked.
#[derive(Debug)]
pub struct ApiError {
    /// The error, with located diagnostics if any.
    pub body: ErrorBody,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for d in &self.body.diagnostics {
            writeln!(f, "{d}")?;
        }
        write!(f, "error: {}", self.body.error)
    }
}

fn unreachable_daemon(endpoint: &Endpoint, e: impl std::fmt::Display) -> ApiError {
    let hint = match endpoint {
        Endpoint::Unix(_) => {
            "start it with `setpoint daemon`, or point --socket (or SETPOINT_SOCKET) at its socket"
        }
        Endpoint::Tcp { .. } => {
            "start it with `setpoint daemon --tcp ADDR`, or point --server (or SETPOINT_SERVER) at it"
        }
    };
    local_error(format!(
        "cannot reach the daemon at {endpoint}: {e}; {hint}"
    ))
}

impl Client {
    /// A client of the daemon at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    async fn connect(&self) -> Result<(Box<dyn Stream>, Option<&str>), ApiError> {
        let unreachable = |e| unreachable_daemon(&self.endpoint, e);
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?;
                Ok((Box::new(stream), None))
            }
            Endpoint::Tcp { addr, token } => {
                let token = token.as_deref().map_err(|e| local_error(e.clone()))?;
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(unreachable)?;
                Ok((Box::new(stream), Some(token)))
            }
        }
    }

    /// Sends one request; a non-2xx answer becomes the daemon's error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<hyper::body::Incoming, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| unreachable_daemon(&self.endpoint, e);
        let (stream, token) = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://setpoint{path}"))
            .header("host", "setpoint");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                request = request.header("content-type", content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(payload).map_err(|e| unreachable(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = response.into_body();
        if status.is_success() {
            return Ok(body);
        }
        let bytes = body
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Err(error_answer(status, &bytes))
    }

    /// Sends one request and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Bytes, ApiError> {
        let body = self.send(method, path, body).await?;
        Ok(body
            .collect()
            .await
            .map_err(|e| unreachable_daemon(&self.endpoint, e))?
            .to_bytes())
    }

    /// GETs `path`, an answer of JSON lines, and hands each line to `each` as it
    /// arrives (a following answer ends only when the daemon ends it).
    pub async fn stream_lines(
        &self,
        path: &str,
        mut each: impl FnMut(serde_json::Value),
    ) -> Result<(), ApiError> {
        let mut body = self.send(Method::GET, path, None).await?;
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreachable_daemon(&self.endpoint, e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(value) = serde_json::from_slice(&line) {
                    each(value);
                }
            }
        }
        Ok(())
    }

    /// GETs `path` and decodes the JSON answer.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ApiError> {
        let bytes = self.call(Method::GET, path, None).await?;
        decode(&bytes)
    }

    /// Sends `value` as JSON and decodes the JSON answer.
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        value: &impl serde::Serialize,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(value).map_err(|e| local_error(e.to_string()))?;
        let bytes = self
            .call(method, path, Some(("application/json", body)))
            .await?;
        decode(&bytes)
    }
}

/// The daemon's error answer.
fn error_answer(status: hyper::StatusCode, bytes: &[u8]) -> ApiError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        error: format!("{status}: {}", String::from_utf8_lossy(bytes)),
        diagnostics: Vec::new(),
    });
    ApiError { body }
}

/// An error found on this side, in the API's error shape.
pub fn local_error(message: String) -> ApiError {
    ApiError {
        body: ErrorBody {
            error: message,
            diagnostics: Vec::new(),
        },
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        local_error(format!(
            "the daemon's answer is not what this CLI expects: {e}"
        ))
    })
}
