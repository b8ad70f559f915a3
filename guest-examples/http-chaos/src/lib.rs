//! An HTTP service that misbehaves on request, for the tests of the HTTP front. Routed
//! by the path's last segment, so it works under any prefix:
//!
//! - `/healthz`: 503 for the first `$UNREADY_PROBES` probes of each instance, then 200;
//! - `/trap`: panics before any response (a trap before the head);
//! - `/trap-after-head`: sends the head and part of the body, then panics;
//! - `/alloc`: allocates without bound (out of memory before the head);
//! - `/sleep?ms=N`: answers after N ms;
//! - `/stream?chunks=N&ms=M`: N chunks, M ms apart;
//! - `/echo`: the request body back;
//! - `/count`: how many requests this instance has served, and how many probes;
//! - `/once?key=K`: the first request for K (across instances, through the granted dir
//!   `/state`) panics, every later one answers `again`;
//! - `/mark?key=K`: writes K's marker as `/once` does, and answers without a trap;
//! - `/exit`: exits the instance from inside the handler;
//! - anything else: `chaos PATH`.

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Chaos);

static SERVED: AtomicU32 = AtomicU32::new(0);
static PROBES: AtomicU32 = AtomicU32::new(0);

struct Chaos;

fn query(path: &str, key: &str) -> Option<String> {
    let (_, q) = path.split_once('?')?;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

fn sleep_ms(ms: u64) {
    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

/// Sends `status` and `text` as the whole response.
fn answer(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.set("content-length", &[text.len().to_string().into_bytes()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(mut stream) = body.write() {
        let _ = stream.write_all(text.as_bytes());
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Sends the head, then `chunks` chunks `ms` apart, then panics if `then_trap`.
fn stream(out: ResponseOutparam, chunks: u32, ms: u64, then_trap: bool) {
    let response = OutgoingResponse::new(Fields::new());
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    {
        let Ok(mut stream) = body.write() else { return };
        for i in 0..chunks {
            let _ = stream.write_all(format!("chunk {i}\n").as_bytes());
            let _ = stream.flush();
            if ms > 0 {
                sleep_ms(ms);
            }
        }
        if then_trap {
            panic!("http-chaos: trap after the head, as asked");
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

impl wasip2::exports::http::incoming_handler::Guest for Chaos {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        // Routed by the last segment, so that the service works under any prefix
        // (`/chaos/trap` is `/trap`).
        let bare = path.split('?').next().unwrap_or("/");
        let route = format!("/{}", bare.rsplit('/').next().unwrap_or(""));
        if route == "/healthz" {
            let n = PROBES.fetch_add(1, Ordering::Relaxed) + 1;
            let unready: u32 = std::env::var("UNREADY_PROBES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if n <= unready {
                return answer(out, 503, "not yet\n");
            }
            return answer(out, 200, "ok\n");
        }
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        match route.as_str() {
            "/trap" => panic!("http-chaos: trap before the head, as asked"),
            "/trap-after-head" => stream(out, 3, 0, true),
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            "/sleep" => {
                let ms = query(&path, "ms").and_then(|v| v.parse().ok()).unwrap_or(100);
                sleep_ms(ms);
                answer(out, 200, &format!("slept {ms}ms\n"));
            }
            "/stream" => {
                let chunks = query(&path, "chunks").and_then(|v| v.parse().ok()).unwrap_or(3);
                let ms = query(&path, "ms").and_then(|v| v.parse().ok()).unwrap_or(10);
                stream(out, chunks, ms, false);
            }
            "/echo" => {
                let mut data = Vec::new();
                if let Ok(body) = request.consume()
                    && let Ok(input) = body.stream()
                {
                    let mut input = input;
                    let _ = input.read_to_end(&mut data);
                }
                let text = String::from_utf8_lossy(&data).into_owned();
                answer(out, 200, &text);
            }
            "/count" => {
                let probes = PROBES.load(Ordering::Relaxed);
                answer(out, 200, &format!("served {served} probes {probes}\n"));
            }
            "/once" => {
                let key = query(&path, "key").unwrap_or_else(|| "default".into());
                let marker = format!("/state/{key}");
                if std::fs::metadata(&marker).is_ok() {
                    answer(out, 200, "again\n");
                } else {
                    let _ = std::fs::write(&marker, b"seen");
                    panic!("http-chaos: first request for {key}, trapping once");
                }
            }
            "/mark" => {
                // What `/once` does to its marker, without the trap: the file's cost alone.
                let key = query(&path, "key").unwrap_or_else(|| "default".into());
                let marker = format!("/state/{key}");
                let seen = std::fs::metadata(&marker).is_ok();
                let _ = std::fs::write(&marker, b"seen");
                answer(out, 200, if seen { "again\n" } else { "marked\n" });
            }
            "/exit" => std::process::exit(0),
            _ => answer(out, 200, &format!("chaos {path}\n")),
        }
    }
}
