//! The CLI's side of the control API: HTTP/1.1 requests over the daemon's Unix socket,
//! or over TCP with the daemon's bearer token. Every answer is decoded into the API's
//! own types ([`setpoint::daemon::wire`], [`setpoint::status`]); a field the CLI needs
//! that the daemon does not send is an error here, not a `-` in a table.

use std::path::PathBuf;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use setpoint::daemon::wire::{ErrorBody, StreamLine};

/// Which daemon a client command talks to.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// The daemon's socket (default: $SETPOINT_SOCKET, else the default daemon's).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The daemon's TCP API, `HOST:PORT` (default: $SETPOINT_SERVER; the socket when
    /// neither is set). Needs the daemon's token.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "socket")]
    server: Option<String>,
    /// A file holding the daemon's API token, for --server (default: $SETPOINT_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl Target {
    /// The daemon to talk to: `--server` (or `$SETPOINT_SERVER`) over TCP with the
    /// token from `--token-file` (or `$SETPOINT_TOKEN`); else the Unix socket
    /// `--socket`, else `$SETPOINT_SOCKET`, else the default daemon's.
    pub fn endpoint(self) -> Endpoint {
        let server = self
            .server
            .or_else(|| std::env::var("SETPOINT_SERVER").ok());
        if let (Some(server), None) = (server, &self.socket) {
            let addr = server
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let token = match self.token_file {
                Some(file) => std::fs::read_to_string(&file)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| format!("cannot read the token file {}: {e}", file.display())),
                None => std::env::var("SETPOINT_TOKEN").map_err(|_| {
                    "the TCP API needs the daemon's token: set SETPOINT_TOKEN or pass --token-file (the daemon keeps it in STATE_DIR/api-token)".to_string()
                }),
            };
            return Endpoint::Tcp { addr, token };
        }
        Endpoint::Unix(
            self.socket
                .or_else(|| std::env::var_os("SETPOINT_SOCKET").map(PathBuf::from))
                .unwrap_or_else(|| {
                    setpoint::daemon::default_socket(&setpoint::daemon::default_state_dir())
                }),
        )
    }

    /// A client of the daemon these options name.
    pub fn client(self) -> Client {
        Client::new(self.endpoint())
    }
}

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
    /// The HTTP status of the daemon's answer (`None`: found on this side).
    pub status: Option<u16>,
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
    pub async fn stream_lines<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        mut each: impl FnMut(StreamLine<T>),
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
                each(decode(&line)?);
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
    ApiError {
        status: Some(status.as_u16()),
        body,
    }
}

/// An error found on this side, in the API's error shape.
pub fn local_error(message: impl Into<String>) -> ApiError {
    ApiError {
        status: None,
        body: ErrorBody {
            error: message.into(),
            diagnostics: Vec::new(),
        },
    }
}

/// Prints a failed command's error; the exit status to end with.
pub fn fail(e: &ApiError) -> std::process::ExitCode {
    eprintln!("{e}");
    std::process::ExitCode::FAILURE
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        local_error(format!(
            "the daemon's answer is not what this CLI expects: {e}"
        ))
    })
}
