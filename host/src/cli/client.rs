//! The CLI's side of the control API: HTTP/1.1 requests over the daemon's Unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use setpoint::daemon::api::ErrorBody;

/// A connection target: the daemon's socket.
pub struct Client {
    socket: PathBuf,
}

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

fn unreachable_daemon(socket: &Path, e: impl std::fmt::Display) -> ApiError {
    ApiError {
        body: ErrorBody {
            error: format!(
                "cannot reach the daemon at {}: {e}; start it with `setpoint daemon`, or point \
                 --socket (or SETPOINT_SOCKET) at its socket",
                socket.display()
            ),
            diagnostics: Vec::new(),
        },
    }
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// Sends one request and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Bytes, ApiError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable_daemon(&self.socket, e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable_daemon(&self.socket, e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://setpoint{path}"))
            .header("host", "setpoint");
        let payload = match body {
            Some((content_type, bytes)) => {
                request = request.header("content-type", content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(payload)
            .map_err(|e| unreachable_daemon(&self.socket, e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable_daemon(&self.socket, e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable_daemon(&self.socket, e))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
            error: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            diagnostics: Vec::new(),
        });
        Err(ApiError { body })
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
