//! Outgoing HTTP through `wasi:http`: linked for every component (so that a program
//! whose toolchain imports `wasi:http/types`, as jco's does for `fetch()`, links and
//! runs), and denied unless the workload's spec grants the request's authority
//! (`network.http`). The check runs on every request, in the host, before any
//! connection is made; a denied request fails with `HTTP-request-denied`.

use std::sync::Arc;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The authorities one instance may send requests to (`host:port`, lowercase).
pub struct OutgoingHttp {
    allowed: Arc<[String]>,
}

impl OutgoingHttp {
    /// Requests to exactly these authorities are allowed; an empty list allows none.
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed.into(),
        }
    }

    /// Whether a request to `uri` may be sent: its authority, with the scheme's default
    /// port when it names none, is granted.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        let port = authority.port_u16().or_else(|| match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        });
        let Some(port) = port else {
            return false;
        };
        let wanted = format!("{}:{port}", authority.host().to_ascii_lowercase());
        self.allowed.contains(&wanted)
    }
}

/// The response of a request sent, and the future that drives its connection.
type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        _ = fut;
        if !self.allows(request.uri()) {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_authorities_are_allowed() {
        let grant = OutgoingHttp::new(&["api.example.com:443".into(), "127.0.0.1:8080".into()]);
        let allows = |uri: &str| grant.allows(&uri.parse().expect("a URI"));
        assert!(allows("https://api.example.com/v1"));
        assert!(allows("https://API.example.com:443/"));
        assert!(allows("http://127.0.0.1:8080/x"));
        assert!(
            !allows("http://api.example.com/v1"),
            "port 80 is not granted"
        );
        assert!(!allows("http://127.0.0.1:8081/"));
        assert!(!allows("https://evil.example.com/"));
        assert!(!allows("/relative"));
        assert!(!OutgoingHttp::new(&[]).allows(&"http://127.0.0.1:8080/".parse().expect("URI")));
    }
}
