//! A Kubernetes API server for the pods and services resources, small but faithful in
//! what a client of `list` and `watch` sees: TLS with a certificate of its own CA, bearer
//! tokens, keep-alive HTTP/1.1, `GET /api/v1/pods` (all, or with a `spec.nodeName` field
//! selector) and `GET /api/v1/services` answered with a v1 list at the current resource
//! version, in pages of `limit` items chained by `continue` tokens when the client asks
//! for pages, and `?watch=true&resourceVersion=N` answered
//! with the changes after N as chunked watch events (one JSON object per line), a BOOKMARK
//! when `allowWatchBookmarks` asks for it, then held open until `timeoutSeconds` or a
//! disconnect. A version older than the history kept (`compact`) gets the ERROR event
//! with the `410 Expired` Status, as the real server sends it. Anything else is a 404 or
//! 400 Status, so that a client asking for more than list and watch fails the test.
// Each test crate that includes this module uses part of it.
#![allow(dead_code)]
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

/// The server's objects and their history.
#[derive(Default)]
struct Cluster {
    version: u64,
    /// (resource, UID) -> object, as last written.
    objects: BTreeMap<(&'static str, String), Value>,
    /// (version, event type, resource, object) for every change.
    changes: Vec<(u64, &'static str, &'static str, Value)>,
    /// Bytes of list answers sent, by resource.
    listed_bytes: BTreeMap<&'static str, usize>,
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

    /// The agent's flags for this server, as the pod of `node`: `--kube-api`,
    /// `--kube-credentials` and `--node-name`.
    pub fn agent_args(&self, node: &str) -> Vec<String> {
        let credentials = self.credentials.to_str().unwrap();
        [
            "--kube-api",
            &self.url,
            "--kube-credentials",
            credentials,
            "--node-name",
            node,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Write `pod` (ADDED, or MODIFIED if its UID is known) at the next version.
    pub fn add(&self, pod: Value) {
        self.write("pods", pod);
    }

    /// Write `service` (ADDED, or MODIFIED if its UID is known) at the next version.
    pub fn add_service(&self, service: Value) {
        self.write("services", service);
    }

    fn write(&self, resource: &'static str, mut object: Value) {
        let (lock, changed) = &*self.cluster;
        let mut c = lock.lock().unwrap();
        c.version += 1;
        object["metadata"]["resourceVersion"] = c.version.to_string().into();
        let key = (
            resource,
            object["metadata"]["uid"].as_str().unwrap().to_string(),
        );
        let kind = if c.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(key, object.clone());
        let version = c.version;
        c.changes.push((version, kind, resource, object));
        changed.notify_all();
    }

    /// Delete the pod with `uid` (DELETED, the object as last written) at the next version.
    pub fn delete_pod(&self, uid: &str) {
        let (lock, changed) = &*self.cluster;
        let mut c = lock.lock().unwrap();
        c.version += 1;
        let mut pod = c.objects.remove(&("pods", uid.to_string())).expect("a pod");
        pod["metadata"]["resourceVersion"] = c.version.to_string().into();
        let version = c.version;
        c.changes.push((version, "DELETED", "pods", pod));
        changed.notify_all();
    }

    /// Bytes of list answers sent for `resource` so far.
    pub fn listed_bytes(&self, resource: &str) -> usize {
        let c = self.cluster.0.lock().unwrap();
        c.listed_bytes.get(resource).copied().unwrap_or(0)
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
        let resource = match request.path.as_str() {
            "/api/v1/pods" => Some("pods"),
            "/api/v1/services" => Some("services"),
            _ => None,
        };
        let open = if let Some(resource) = resource.filter(|r| selected(r, &request).is_ok()) {
            if request
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
            {
                watch(&mut stream, resource, &request, cluster, stop)
            } else {
                list(&mut stream, resource, &request, cluster)
            }
        } else if resource.is_some() {
            status(
                &mut stream,
                400,
                "BadRequest",
                "this server selects pods by node only, and nothing else",
            )
        } else {
            status(
                &mut stream,
                404,
                "NotFound",
                "the server could not find the resource",
            )
        };
        if !open {
            return;
        }
    }
}

/// The node a `fieldSelector=spec.nodeName=NODE` names (pods only), `None` for no
/// selector; an error for any other.
fn selected(resource: &str, request: &Request) -> Result<Option<String>, ()> {
    let Some(selector) = request.query.get("fieldSelector") else {
        return Ok(None);
    };
    match selector.strip_prefix("spec.nodeName=") {
        Some(node) if resource == "pods" => Ok(Some(node.to_string())),
        _ => Err(()),
    }
}

/// Whether `object` is one the request selects.
fn matches(object: &Value, node: &Option<String>) -> bool {
    node.as_deref()
        .is_none_or(|node| object["spec"]["nodeName"].as_str() == Some(node))
}

/// The list of the selected objects at the current version: all of them, or with
/// `limit`, a page of them after the `continue` token's UID, and a token for the next
/// page while more remain.
fn list(
    stream: &mut impl Write,
    resource: &'static str,
    request: &Request,
    cluster: &(Mutex<Cluster>, Condvar),
) -> bool {
    let node = selected(resource, request).expect("checked");
    let limit = request
        .query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let after = request.query.get("continue").cloned().unwrap_or_default();
    let mut c = cluster.0.lock().unwrap();
    let mut items: Vec<&Value> = c
        .objects
        .range((resource, after.clone())..)
        .take_while(|((r, _), _)| *r == resource)
        .filter(|((_, uid), o)| *uid > after && matches(o, &node))
        .map(|(_, o)| o)
        .take(limit.saturating_add(1))
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let mut metadata = json!({"resourceVersion": c.version.to_string()});
    if more {
        let last = items.last().unwrap()["metadata"]["uid"].as_str().unwrap();
        metadata["continue"] = last.into();
    }
    let kind = if resource == "pods" {
        "PodList"
    } else {
        "ServiceList"
    };
    let body =
        json!({"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": items}).to_string();
    *c.listed_bytes.entry(resource).or_default() += body.len();
    drop(c);
    respond(stream, 200, &body)
}

/// Stream the changes after the version asked for, then hold the watch open.
fn watch(
    stream: &mut impl Write,
    resource: &'static str,
    request: &Request,
    cluster: &(Mutex<Cluster>, Condvar),
    stop: &AtomicBool,
) -> bool {
    let node = selected(resource, request).expect("checked");
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
            .filter(|(v, _, r, object)| *v > sent && *r == resource && matches(object, &node))
            .map(|(_, kind, _, object)| json!({"type": kind, "object": object}).to_string())
            .collect();
        sent = c.version;
        if !bookmarked {
            bookmarked = true;
            let kind = if resource == "pods" { "Pod" } else { "Service" };
            let mark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
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
