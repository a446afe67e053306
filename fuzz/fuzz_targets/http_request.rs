//! The HTTP server sees bytes from anyone who can reach the port: hyper with the agent's
//! limits and routing, fed raw bytes over an in-memory stream. It must never panic, and
//! must answer with a status the agent can give, or close.
#![no_main]
use std::{sync::Arc, time::Instant};

use libfuzzer_sys::fuzz_target;
use tcptrace_agent::exporter::http::{
    serve_stream, slots::Progress, Limits, Response, Routes, StatusCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Paths;

impl Routes for Paths {
    async fn get(&self, path: &str) -> Response {
        assert!(
            path.starts_with('/'),
            "routed a path that is not absolute: {path:?}"
        );
        assert!(!path.contains('?'), "query string leaked into the path");
        match path {
            "/healthz" => Response::text(StatusCode::OK, "ok\n"),
            _ => Response::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
    }
    RUNTIME.with(|rt| rt.block_on(exchange(data)));
});

async fn exchange(data: &[u8]) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let progress = Arc::new(Progress::new(Instant::now()));
    let served = tokio::spawn(serve_stream(
        server,
        progress,
        Arc::new(Paths),
        Limits::MAIN,
    ));
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let request = data.to_vec();
    // The server may answer (431) and close before taking every byte: write apart.
    let writer = tokio::spawn(async move {
        let _ = to_server.write_all(&request).await;
        let _ = to_server.shutdown().await;
    });
    let mut answer = Vec::new();
    let _ = from_server.read_to_end(&mut answer).await;
    served.await.expect("the server task panicked");
    let _ = writer.await;
    if answer.is_empty() {
        return; // closed without a word: an incomplete head
    }
    let text = String::from_utf8_lossy(&answer);
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("not an HTTP/1.x answer: {text:?}"));
    assert!(
        ["200", "400", "404", "405", "414", "431"].contains(&status),
        "status {status}: {text:?}"
    );
}
