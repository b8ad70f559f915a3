//! Sends one HTTP GET through `wasi:http/outgoing-handler` to `http://$AUTHORITY/` and
//! prints how it went: `fetch AUTHORITY: status N`, or `fetch AUTHORITY: error ErrorCode::...`.
//! The tests of outgoing-HTTP grants: denied unless `network.http` grants AUTHORITY.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};

fn main() {
    let authority = std::env::var("AUTHORITY").unwrap_or_else(|_| "127.0.0.1:9".into());
    println!("fetch {authority}: {}", fetch(&authority));
}

fn fetch(authority: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    if request.set_scheme(Some(&Scheme::Http)).is_err()
        || request.set_authority(Some(authority)).is_err()
        || request.set_path_with_query(Some("/")).is_err()
    {
        return "error the request is malformed".into();
    }
    let response = match outgoing_handler::handle(request, None) {
        Ok(r) => r,
        Err(code) => return format!("error {code:?}"),
    };
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(response))) => format!("status {}", response.status()),
        Some(Ok(Err(code))) => format!("error {code:?}"),
        Some(Err(())) => "error the response was taken twice".into(),
        None => "error no response".into(),
    }
}
