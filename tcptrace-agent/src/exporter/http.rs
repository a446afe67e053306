//! The HTTP side of `tcptrace run`: hyper's HTTP/1.1 server (GET and HEAD, one request
//! per connection) inside limits no client can get round, so that nothing a neighbour
//! sends, or fails to read, keeps a scraper or the kubelet's probes out:
//! - a request head of at most 8 KiB (431 beyond), sent within the head timeout;
//! - a deadline on the whole connection, head, render and answer: a client that stops
//!   reading its answer is cut off there (reset, so the kernel keeps none of it);
//! - a cap on connections, where a new one evicts the one that has made no progress
//!   for the longest (`slots`);
//! - connections handed over by the kernel only once their first bytes have arrived,
//!   from a deep accept queue (`bind`).
//!
//! `/metrics` renders are shared (`single_flight`), so scrapes cannot pile renders up.
pub mod single_flight;
pub mod slots;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, server::conn::http1, service::service_fn, Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};

pub use hyper::StatusCode;
use slots::{Progress, Slot, Slots, Tracked};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line plus headers: hyper's read buffer (8192 at least).
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head (slowloris); then hyper closes
    /// the connection.
    pub head_timeout: Duration,
    /// Time for the whole connection, from accept to the answer's last byte.
    pub deadline: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// `--listen`. The deadline is Prometheus's default scrape timeout: a scrape still
    /// running past it has been given up by its scraper anyway, and a megabyte-sized
    /// page takes milliseconds to a reader on the node's network.
    pub const MAIN: Limits = Limits {
        max_head_bytes: 8192,
        head_timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(10),
        max_connections: 32,
    };

    /// `--health-listen`: answers of a few bytes, for probes that give up after 1 s
    /// (the kubelet's default timeout).
    pub const HEALTH: Limits = Limits {
        max_head_bytes: 8192,
        head_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(2),
        max_connections: 8,
    };
}

pub struct Response {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Response {
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What a listener serves: the answer to a GET of `path` (a HEAD gets its head only).
pub trait Routes: Send + Sync + 'static {
    fn get(&self, path: &str) -> impl Future<Output = Response> + Send;
}

/// The accept queue's length (the kernel lowers it to net.core.somaxconn), rather than
/// the runtime's 128: a connection flood fills 128 entries in the few milliseconds the
/// agent is not scheduled, and every SYN beyond them, the kubelet's probe included,
/// waits a second for its retransmission.
const ACCEPT_QUEUE: u32 = 4096;

/// Listen on `addr` with a deep accept queue, handing over only connections whose first
/// bytes have arrived (TCP_DEFER_ACCEPT, for at most the head timeout): a connection
/// that says nothing takes no slot, and one accepted has its request to read at once,
/// so that it is answered before the next accept can evict it.
pub fn bind(addr: SocketAddr, limits: &Limits) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As the standard library does: a restarted agent takes its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let wait: libc::c_int = limits.head_timeout.as_secs().max(1) as libc::c_int;
    set_option(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        &wait,
    )?;
    socket.listen(ACCEPT_QUEUE)
}

fn set_option<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: setsockopt on a socket the caller owns, with a value of its own size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Serve until `shutdown` turns true.
pub async fn serve<R: Routes>(
    listener: TcpListener,
    routes: Arc<R>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Slots::new(limits.max_connections);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, slots.admit(), routes.clone(), limits));
                    // Let the new connection read its request before the next accept:
                    // in a burst of accepts, each could evict it before it ever ran.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    log::debug!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// One TCP connection, until hyper is done, the deadline passes or a newcomer evicts it.
async fn connection<R: Routes>(stream: TcpStream, slot: Slot, routes: Arc<R>, limits: Limits) {
    let fd = stream.as_raw_fd();
    let served = serve_stream(stream, slot.progress.clone(), routes, limits);
    tokio::pin!(served);
    tokio::select! {
        () = &mut served => return,
        () = tokio::time::sleep(limits.deadline) => {}
        () = slot.evicted.notified() => {}
    }
    // Still open (`served` owns the stream until this returns): close it with a reset.
    reset_on_close(fd);
}

/// A connection cut short closes with a RST rather than a FIN: the kernel then drops
/// what the client did not read instead of keeping it, and retrying it, for minutes.
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Best effort: at worst the close is a FIN.
    let _ = set_option(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// Serve one request on any stream with hyper, within `limits` (but for the deadline and
/// the cap, which belong to the listener). Public for the fuzz target.
pub async fn serve_stream<S, R>(io: S, progress: Arc<Progress>, routes: Arc<R>, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Routes,
{
    let tracked = TokioIo::new(Tracked::new(io, progress.clone()));
    let service = service_fn(move |request| {
        let (routes, progress) = (routes.clone(), progress.clone());
        async move { Ok::<_, Infallible>(answer(request, &*routes, &progress).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head_bytes)
        // One request per connection: the deadline then bounds one answer, and a
        // client cannot park an idle connection between requests.
        .keep_alive(false)
        .serve_connection(tracked, service)
        .await;
    if let Err(e) = served {
        log::debug!("http connection: {e}");
    }
}

type HyperResponse = hyper::Response<Full<Bytes>>;

async fn answer<R: Routes>(
    request: Request<Incoming>,
    routes: &R,
    progress: &Arc<Progress>,
) -> HyperResponse {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(Response::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET or HEAD\n",
        ));
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = request.uri().path();
    if !path.starts_with('/') {
        return reply(Response::text(
            StatusCode::BAD_REQUEST,
            "bad request: the target must be a path\n",
        ));
    }
    // Rendering is our delay, not the client's: it does not count as a stall.
    let _busy = progress.busy();
    reply(routes.get(path).await)
}

fn reply(r: Response) -> HyperResponse {
    let mut out = hyper::Response::new(Full::new(r.body));
    *out.status_mut() = r.status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(r.content_type),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpStream},
        os::fd::AsRawFd,
        time::Instant,
    };

    use super::*;

    const BIG: usize = 32 << 20;

    /// `/small` answers a few bytes, `/big` 32 MiB.
    struct Pages;

    impl Routes for Pages {
        async fn get(&self, path: &str) -> Response {
            match path {
                "/small" => Response::text(StatusCode::OK, "small\n"),
                "/big" => Response::text(StatusCode::OK, vec![b'x'; BIG]),
                _ => Response::text(StatusCode::NOT_FOUND, "no\n"),
            }
        }
    }

    /// The real server on a loopback port, on a runtime of its own (the tests' clients
    /// block), stopped when dropped.
    struct Server {
        addr: SocketAddr,
        stop: Option<watch::Sender<bool>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        fn start(limits: Limits) -> Server {
            let (stop, stopped) = watch::channel(false);
            let (bound, addr) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = bind("127.0.0.1:0".parse().unwrap(), &limits).unwrap();
                    bound.send(listener.local_addr().unwrap()).unwrap();
                    serve(listener, Arc::new(Pages), limits, stopped).await;
                });
            });
            Server {
                addr: addr.recv().unwrap(),
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        fn connect(&self) -> TcpStream {
            let s = TcpStream::connect(self.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.stop.take().unwrap().send(true);
            let _ = self.thread.take().unwrap().join();
        }
    }

    /// Send `raw`, read the whole answer (until the server closes).
    fn exchange(server: &Server, raw: &[u8]) -> String {
        let mut s = server.connect();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn status(answer: &str) -> &str {
        answer.split(' ').nth(1).unwrap_or("none")
    }

    /// Whether the server has closed or reset this connection (the client read nothing).
    fn closed_by_server(s: &TcpStream) -> bool {
        let mut fd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid descriptor, without waiting.
        unsafe { libc::poll(&mut fd, 1, 0) };
        fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    fn wait_closed(s: &TcpStream, within: Duration) -> Duration {
        let start = Instant::now();
        while !closed_by_server(s) {
            assert!(start.elapsed() < within, "still open after {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }

    /// A fixed 64 KiB receive buffer: the kernel does not grow it as the client reads.
    fn small_receive_buffer(s: &TcpStream) {
        let size: libc::c_int = 64 << 10;
        // SAFETY: setsockopt on a socket we own, with a correctly sized int.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }

    fn limits() -> Limits {
        Limits {
            head_timeout: Duration::from_millis(300),
            deadline: Duration::from_secs(60),
            ..Limits::MAIN
        }
    }

    #[test]
    fn answers_get_and_head_and_refuses_the_rest_clearly() {
        let server = Server::start(limits());
        let ok = exchange(&server, b"GET /small?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("content-type: text/plain; charset=utf-8\r\n"));
        assert!(
            ok.contains("connection: close\r\n"),
            "one request per connection"
        );
        assert!(ok.ends_with("\r\n\r\nsmall\n"));
        let head = exchange(&server, b"HEAD /small HTTP/1.1\r\n\r\n");
        assert!(head.contains("content-length: 6\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");

        let refused = exchange(&server, b"DELETE /small HTTP/1.1\r\n\r\n");
        assert_eq!(status(&refused), "405");
        assert!(refused.contains("allow: GET, HEAD\r\n"), "{refused}");
        for (raw, code) in [
            (&b"GET /nothing HTTP/1.1\r\n\r\n"[..], "404"),
            (b"GARBAGE\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", "400"),
            (b"GET metrics HTTP/1.1\r\n\r\n", "400"),
            (b"GET /small SPDY/3\r\n\r\n", "400"),
        ] {
            let answer = exchange(&server, raw);
            assert_eq!(status(&answer), code, "{}", String::from_utf8_lossy(raw));
        }
        let mut big_head = b"GET /small HTTP/1.1\r\nX: ".to_vec();
        big_head.extend(std::iter::repeat_n(b'a', 8192));
        big_head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&exchange(&server, &big_head)), "431");
    }

    #[test]
    fn a_connection_that_says_nothing_takes_no_slot() {
        let server = Server::start(Limits {
            max_connections: 1,
            ..limits()
        });
        let silent = server.connect();
        for _ in 0..2 {
            let answer = exchange(&server, b"GET /small HTTP/1.1\r\n\r\n");
            assert_eq!(status(&answer), "200");
        }
        assert!(
            !closed_by_server(&silent),
            "the silent connection was accepted, then evicted"
        );
    }

    #[test]
    fn a_slow_request_head_is_closed_at_the_head_timeout() {
        let server = Server::start(limits());
        let mut slow = server.connect();
        slow.write_all(b"GET /small HTTP/1.1\r\nX-Slow: ").unwrap();
        let took = wait_closed(&slow, Duration::from_secs(5));
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_at_the_deadline() {
        let deadline = Duration::from_millis(500);
        let server = Server::start(Limits {
            deadline,
            ..limits()
        });
        let started = Instant::now();
        let mut idle = server.connect();
        idle.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
        wait_closed(&idle, Duration::from_secs(5));
        assert!(started.elapsed() >= deadline);
        let mut got = Vec::new();
        let _ = idle.read_to_end(&mut got);
        assert!(got.len() < BIG, "cut off: {} of {BIG} bytes", got.len());
    }

    #[test]
    fn at_the_cap_a_client_that_stopped_reading_goes_before_an_older_one_that_reads() {
        let server = Server::start(Limits {
            max_connections: 2,
            ..limits()
        });
        // The reader comes first; the other asks for the same page and reads nothing.
        let mut reader = server.connect();
        small_receive_buffer(&reader);
        reader.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
        let mut idle = server.connect();
        idle.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
        // The reader keeps reading, slowly, until the other has moved no byte for longer
        // than a stall. Its small receive buffer keeps the server writing to it.
        let mut chunk = vec![0u8; 64 << 10];
        let mut got = 0;
        let until = Instant::now() + slots::STALLED_AFTER + Duration::from_millis(500);
        while Instant::now() < until {
            reader.read_exact(&mut chunk).unwrap();
            got += chunk.len();
            std::thread::sleep(Duration::from_millis(20));
        }

        let newcomer = exchange(&server, b"GET /small HTTP/1.1\r\n\r\n");
        assert_eq!(status(&newcomer), "200");
        wait_closed(&idle, Duration::from_secs(2));
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        let body = got + rest.len();
        assert!(body > BIG, "the reader got its whole answer: {body} bytes");
    }
}
