//! A component that exports both `wasi:cli/run` (this `main`) and
//! `wasi:http/incoming-handler`, as wstd's `#[wstd::http_server]` builds them: served as
//! HTTP when its workload sets `spec.http`, run as a command when it does not.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Dual);

struct Dual;

impl wasip2::exports::http::incoming_handler::Guest for Dual {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let text = format!("http-dual served {path}\n");
        let response = OutgoingResponse::new(Fields::new());
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut out) = body.write() {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

fn main() {
    println!("http-dual ran as a command");
}
