//! A Kubernetes API server for the pods resource, small but faithful in what a client of
//! `list` and `watch` sees: TLS with a certificate of its own CA, bearer tokens, keep-alive
//! HTTP/1.1, `GET /api/v1/pods` with a `spec.nodeName` field selector answered with a v1
//! PodList at the current resource version, and `?watch=true&resourceVersion=N` answered
//! with the changes after N as chunked watch events (one JSON object per line), a BOOKMARK
//! when `allowWatchBookmarks` asks for it, then held open until `timeoutSeconds` or a
//! disconnect. A version older than the history kept (`compact`) gets the ERROR event
//! with the `410 Expired` Status, as the real server sends it. Anything else is a 404 or
//! 400 Status, so that a client asking for more than list and watch fails the test.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

pub struct FakeApiServer {
    pub url: String,
    /// A directory with `ca.crt` and `token`, as a service account's.
    pub credentials: PathBuf,
    pub token: String,
    cluster: Arc<(Mutex<Cluster>, Condvar)>,
    stop: Arc<AtomicBool>,
}

/// The server's pods and their history.
#[derive(Default)]
struct Cluster {
    version: u64,
    /// UID -> pod, as last written.
    pods: BTreeMap<String, Value>,
    /// (version, event type, pod) for every change.
    changes: Vec<(u64, &'static str, Value)>,
    /// Watches from a version before this one get 410 Gone.
    oldest: u64,
    /// Bumped to cut every open watch (an API server restart, a proxy's idle timeout).
    generation: u64,
    /// Requests wait while set: the server is restarting.
    paused: bool,
    open_watches: usize,
    /// (request line, Authorization header) of each request.
    requests: Vec<(String, String)>,
}

/// One request: path, query pairs (decoded), and the request line as sent.
struct Request {
    line: String,
    path: String,
    query: BTreeMap<String, String>,
}

impl FakeApiServer {
    /// Serve `pods` (v1 Pod objects), written at versions 1..=N in the order given.
    pub fn serve(pods: Vec<Value>) -> FakeApiServer {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let credentials =
            std::env::temp_dir().join(format!("tcptrace-kube-{}", std::process::id()));
        std::fs::create_dir_all(&credentials).unwrap();
        // A projected service account token file has no trailing newline.
        let token = format!("token-{}", std::process::id());
        std::fs::write(credentials.join("ca.crt"), cert.cert.pem()).unwrap();
        std::fs::write(credentials.join("token"), &token).unwrap();
        std::fs::write(credentials.join("namespace"), "tcptrace").unwrap();
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
            )
            .unwrap(),
        );
        let cluster = Arc::new((Mutex::new(Cluster::default()), Condvar::new()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let server = FakeApiServer {
            url,
            credentials,
            token,
            cluster: cluster.clone(),
            stop: stop.clone(),
        };
        for pod in pods {
            server.add(pod);
        }
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let (tls, cluster, stop) = (tls.clone(), cluster.clone(), stop.clone());
                std::thread::spawn(move || serve_connection(conn, tls, &cluster, &stop));
            }
        });
        server
    }

    /// Write `pod` (ADDED, or MODIFIED if its UID is known) at the next version.
    pub fn add(&self, mut pod: Value) {
        let (lock, changed) = &*self.cluster;
        let mut c = lock.lock().unwrap();
        c.version += 1;
        pod["metadata"]["resourceVersion"] = c.version.to_string().into();
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let kind = if c.pods.contains_key(&uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.pods.insert(uid, pod.clone());
        let version = c.version;
        c.changes.push((version, kind, pod));
        changed.notify_all();
    }

    /// Go down as a restarting server does: cut every open watch (wait until they are)
    /// and hold requests until `resume`.
    pub fn pause(&self) {
        let (lock, changed) = &*self.cluster;
        let mut c = lock.lock().unwrap();
        c.paused = true;
        c.generation += 1;
        changed.notify_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.open_watches > 0 && Instant::now() < deadline {
            c = changed
                .wait_timeout(c, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        assert_eq!(c.open_watches, 0, "the watches did not end");
    }

    pub fn resume(&self) {
        let (lock, changed) = &*self.cluster;
        lock.lock().unwrap().paused = false;
        changed.notify_all();
    }

    /// Forget the history: a watch from any version before the current one is Gone.
    pub fn compact(&self) {
        let mut c = self.cluster.0.lock().unwrap();
        c.oldest = c.version;
    }

    pub fn version(&self) -> u64 {
        self.cluster.0.lock().unwrap().version
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.cluster.0.lock().unwrap().requests.clone()
    }

    pub fn open_watches(&self) -> usize {
        self.cluster.0.lock().unwrap().open_watches
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cluster.1.notify_all();
        let _ = std::fs::remove_dir_all(&self.credentials);
    }
}

/// Requests on one connection, one after another (keep-alive), until it closes.
fn serve_connection(
    conn: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    cluster: &(Mutex<Cluster>, Condvar),
    stop: &AtomicBool,
) {
    let tls = rustls::ServerConnection::new(tls).unwrap();
    let mut stream = rustls::StreamOwned::new(tls, conn);
    while let Some((request, auth)) = read_request(&mut stream) {
        let (lock, changed) = cluster;
        let mut c = lock.lock().unwrap();
        while c.paused && !stop.load(Ordering::Relaxed) {
            c = changed
                .wait_timeout(c, Duration::from_millis(50))
                .unwrap()
                .0;
        }
        c.requests.push((request.line.clone(), auth));
        drop(c);
        let open = if request.path != "/api/v1/pods" {
            status(
                &mut stream,
                404,
                "NotFound",
                "the server could not find the resource",
            )
        } else if request
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
        {
            watch(&mut stream, &request, cluster, stop)
        } else {
            list(&mut stream, &request, cluster)
        };
        if !open {
            return;
        }
    }
}

/// The node a `fieldSelector=spec.nodeName=NODE` names; `None` for any other selector.
fn node_selected(request: &Request) -> Option<String> {
    let selector = request.query.get("fieldSelector")?;
    selector.strip_prefix("spec.nodeName=").map(str::to_string)
}

fn on_node(pod: &Value, node: &str) -> bool {
    pod["spec"]["nodeName"].as_str() == Some(node)
}

/// The PodList of the selected node's pods at the current version (one page: the
/// tests' lists are smaller than any `limit` a client asks).
fn list(stream: &mut impl Write, request: &Request, cluster: &(Mutex<Cluster>, Condvar)) -> bool {
    let Some(node) = node_selected(request) else {
        return status(
            stream,
            400,
            "BadRequest",
            "this server lists pods by node only",
        );
    };
    let c = cluster.0.lock().unwrap();
    let items: Vec<&Value> = c.pods.values().filter(|p| on_node(p, &node)).collect();
    let body = json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": c.version.to_string()},
        "items": items,
    })
    .to_string();
    drop(c);
    respond(stream, 200, &body)
}

/// Stream the changes after the version asked for, then hold the watch open.
fn watch(
    stream: &mut impl Write,
    request: &Request,
    cluster: &(Mutex<Cluster>, Condvar),
    stop: &AtomicBool,
) -> bool {
    let Some(node) = node_selected(request) else {
        return status(
            stream,
            400,
            "BadRequest",
            "this server watches pods by node only",
        );
    };
    let Some(from) = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return status(
            stream,
            400,
            "BadRequest",
            "watch from a resourceVersion only",
        );
    };
    let bookmarks = request.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let (lock, changed) = cluster;
    let mut c = lock.lock().unwrap();
    if from < c.oldest {
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", c.oldest),
            "reason": "Expired", "code": 410,
        }});
        drop(c);
        // The server ends a watch after its ERROR event.
        return chunk(stream, &gone.to_string()) && stream.write_all(b"0\r\n\r\n").is_ok();
    }
    c.open_watches += 1;
    let generation = c.generation;
    let ends = Instant::now() + timeout;
    let mut sent = from;
    let mut bookmarked = !bookmarks;
    let ended = loop {
        let events: Vec<String> = c
            .changes
            .iter()
            .filter(|(v, _, pod)| *v > sent && on_node(pod, &node))
            .map(|(_, kind, pod)| json!({"type": kind, "object": pod}).to_string())
            .collect();
        sent = c.version;
        if !bookmarked {
            bookmarked = true;
            let mark = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": sent.to_string()}}});
            drop(c);
            let ok = events.iter().all(|e| chunk(stream, e)) && chunk(stream, &mark.to_string());
            c = lock.lock().unwrap();
            if !ok {
                break false;
            }
        } else if !events.is_empty() {
            drop(c);
            let ok = events.iter().all(|e| chunk(stream, e));
            c = lock.lock().unwrap();
            if !ok {
                break false;
            }
        }
        if c.generation != generation || stop.load(Ordering::Relaxed) {
            break false; // cut: the connection closes without the last chunk
        }
        if Instant::now() >= ends {
            break true; // timeoutSeconds: the watch ends cleanly
        }
        c = changed
            .wait_timeout(c, Duration::from_millis(50))
            .unwrap()
            .0;
    };
    c.open_watches -= 1;
    changed.notify_all();
    drop(c);
    ended && stream.write_all(b"0\r\n\r\n").is_ok()
}

fn chunk(stream: &mut impl Write, event: &str) -> bool {
    let line = format!("{event}\n");
    write!(stream, "{:x}\r\n{line}\r\n", line.len()).is_ok() && stream.flush().is_ok()
}

/// A Status object, as the API server answers a request it refuses.
fn status(stream: &mut impl Write, code: u16, reason: &str, message: &str) -> bool {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code});
    respond(stream, code, &body.to_string())
}

fn respond(stream: &mut impl Write, code: u16, body: &str) -> bool {
    let answer = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        match code {
            200 => "OK",
            400 => "Bad Request",
            _ => "Not Found",
        },
        body.len()
    );
    stream.write_all(answer.as_bytes()).is_ok() && stream.flush().is_ok()
}

/// One request's head (GET: no body), and its `Authorization` header.
fn read_request(stream: &mut impl Read) -> Option<(Request, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next()?.to_string();
    let target = line.split(' ').nth(1)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let auth = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let request = Request {
        path: path.to_string(),
        line,
        query,
    };
    Some((request, auth))
}

/// Undo percent-encoding (and `+` for space) in a query key or value.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
