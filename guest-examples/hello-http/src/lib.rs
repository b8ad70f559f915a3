//! The smallest HTTP service: a `wasi:http/proxy` component that answers every request
//! with `$GREETING PATH` (`hello` by default) and `/healthz` with `ok`. Built with the
//! crates.io `wasip2` crate; its world is what `wasmtime serve` runs.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let text = if path == "/healthz" {
            "ok\n".to_string()
        } else {
            let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
            format!("{greeting} {path}\n")
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let _ = headers.set("content-length", &[text.len().to_string().into_bytes()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut out) = body.write() {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
