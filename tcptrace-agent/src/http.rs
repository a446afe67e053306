//! A deliberately small HTTP/1.x server for `/metrics`, `/healthz` and `/readyz`:
//! GET and HEAD only, one request per connection, bounded request size, read timeout
//! and connection count, so a hostile client cannot hold the agent's memory or sockets.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::AbortHandle,
};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line plus headers.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head (slowloris).
    pub read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 8192,
            read_timeout: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No blank line yet: read more.
    Incomplete,
    Request {
        method: Method,
        path: String,
    },
    /// Answer with this status and close.
    Reject(u16),
}

/// Parse a request head. Only the request line matters; header lines are checked for
/// shape and otherwise ignored.
pub fn parse_head(buf: &[u8], max_head_bytes: usize) -> Parsed {
    let end = match find_head_end(buf) {
        Some(end) if end <= max_head_bytes => end,
        Some(_) => return Parsed::Reject(431),
        None if buf.len() >= max_head_bytes => return Parsed::Reject(431),
        None => return Parsed::Incomplete,
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Reject(400);
    };
    let mut lines = head.lines();
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Reject(400);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Parsed::Reject(400);
    }
    if lines.any(|l| !l.is_empty() && !l.contains(':')) {
        return Parsed::Reject(400);
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Parsed::Reject(405)
        }
        _ => return Parsed::Reject(400),
    };
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or(target)
        .to_string();
    Parsed::Request { method, path }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

pub fn serialize(r: &Response, include_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if include_body {
        bytes.extend_from_slice(r.body.as_bytes());
    }
    bytes
}

/// Routes a parsed GET/HEAD path to its response. Runs on a blocking thread: rendering
/// reads kernel maps.
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// The connections being served. At the cap, a new connection evicts the oldest one
/// still sending its request head: a client that trickles bytes (slowloris) cannot keep
/// a scraper out, however many connections it opens.
struct Connections {
    max: usize,
    live: Mutex<Vec<Connection>>,
    next_id: AtomicU64,
}

struct Connection {
    id: u64,
    started: Instant,
    reading: Arc<AtomicBool>,
    abort: AbortHandle,
}

impl Connections {
    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make room for one more; false when every slot is busy answering a request.
    fn make_room(&self) -> bool {
        let mut live = self.live();
        if live.len() < self.max {
            return true;
        }
        let oldest_reader = live
            .iter()
            .enumerate()
            .filter(|(_, c)| c.reading.load(Ordering::Relaxed))
            .min_by_key(|(_, c)| c.started)
            .map(|(i, _)| i);
        match oldest_reader {
            Some(i) => {
                live.swap_remove(i).abort.abort();
                true
            }
            None => false,
        }
    }

    fn add(&self, id: u64, reading: Arc<AtomicBool>, abort: AbortHandle) {
        self.live().push(Connection {
            id,
            started: Instant::now(),
            reading,
            abort,
        });
    }

    fn remove(&self, id: u64) {
        self.live().retain(|c| c.id != id);
    }
}

/// Serve until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let conns = Arc::new(Connections {
        max: limits.max_connections,
        live: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if !conns.make_room() {
                    // Every slot is rendering: answer at once instead of queueing.
                    tokio::spawn(reply_and_close(stream, Response::text(503, "too many connections\n"), true));
                    continue;
                }
                let id = conns.next_id.fetch_add(1, Ordering::Relaxed);
                let reading = Arc::new(AtomicBool::new(true));
                let (handler, flag, done) = (handler.clone(), reading.clone(), conns.clone());
                // Registered before it can run (single-threaded runtime), removed by itself.
                let task = tokio::spawn(async move {
                    handle(stream, handler, limits, &flag).await;
                    done.remove(id);
                });
                conns.add(id, reading, task.abort_handle());
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(mut stream: TcpStream, handler: Handler, limits: Limits, reading: &AtomicBool) {
    let parsed = match tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut stream, limits.max_head_bytes),
    )
    .await
    {
        Ok(p) => p,
        Err(_) => Parsed::Reject(408),
    };
    reading.store(false, Ordering::Relaxed);
    let (response, include_body) = match parsed {
        Parsed::Request { method, path } => {
            let response = tokio::task::spawn_blocking(move || handler(&path))
                .await
                .unwrap_or_else(|_| Response::text(500, "internal error\n"));
            (response, method == Method::Get)
        }
        Parsed::Reject(status) => (
            Response::text(status, format!("{}\n", reason(status))),
            true,
        ),
        Parsed::Incomplete => return, // client went away
    };
    reply_and_close(stream, response, include_body).await;
}

async fn read_head(stream: &mut TcpStream, max: usize) -> Parsed {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Parsed::Incomplete,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        match parse_head(&buf, max) {
            Parsed::Incomplete => continue,
            done => return done,
        }
    }
}

async fn reply_and_close(mut stream: TcpStream, response: Response, include_body: bool) {
    let _ = stream.write_all(&serialize(&response, include_body)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    #[test]
    fn accepts_get_and_head() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", MAX),
            Parsed::Request {
                method: Method::Get,
                path: "/metrics".into()
            }
        );
        assert_eq!(
            parse_head(b"HEAD /healthz?x=1 HTTP/1.0\r\n\r\n", MAX),
            Parsed::Request {
                method: Method::Head,
                path: "/healthz".into()
            }
        );
    }

    #[test]
    fn waits_for_the_blank_line() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", MAX),
            Parsed::Incomplete
        );
        assert_eq!(parse_head(b"", MAX), Parsed::Incomplete);
    }

    #[test]
    fn rejects_what_it_does_not_serve() {
        let cases: [(&[u8], u16); 9] = [
            (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
            (b"DELETE / HTTP/1.1\r\n\r\n", 405),
            (b"get /metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET /metrics SPDY/3\r\n\r\n", 400),
            (b"GET /metrics\r\n\r\n", 400),
            (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        ];
        for (request, status) in cases {
            assert_eq!(
                parse_head(request, MAX),
                Parsed::Reject(status),
                "{:?}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn bounds_the_head() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX));
        assert_eq!(parse_head(&big, MAX), Parsed::Reject(431));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&big, MAX), Parsed::Reject(431));
    }

    #[test]
    fn responses_carry_length_and_allow() {
        let r = String::from_utf8(serialize(&Response::text(405, "no\n"), true)).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(r.contains("Allow: GET, HEAD\r\n"));
        assert!(r.contains("Content-Length: 3\r\n"));
        let head = String::from_utf8(serialize(&Response::text(200, "body"), false)).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");
    }
}
