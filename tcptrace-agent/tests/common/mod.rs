//! Helpers for the root-only integration tests: start the real agent, make real TCP
//! traffic, read the kernel's own counters, and clean up namespaces even on failure.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const TCPTRACE: &str = env!("CARGO_BIN_EXE_tcptrace");

/// The first line of every root-only test: they load eBPF programs and create network
/// namespaces. Without root the test returns at once, saying so in one line (written
/// past the test harness's capture, so that it shows), and `cargo test` as a normal user
/// passes everything else.
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            $crate::common::say_skipped();
            return;
        }
    };
}
pub(crate) use require_root;

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `skipped: <test> needs root ...` on the real stderr. libtest runs each test on a
/// thread named after it.
pub fn say_skipped() {
    let thread = thread::current();
    let test = thread.name().unwrap_or("this test");
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test} needs root (it loads eBPF programs / creates network namespaces)"
    );
}

/// `TCPTRACE_TEST_AGENT_ARGS`, appended to every agent the tests start: reruns the same
/// tests with another attach method, e.g.
/// `TCPTRACE_TEST_AGENT_ARGS="--probe-method inet_sock_set_state=raw_tracepoint"`.
pub fn extra_agent_args() -> Vec<String> {
    std::env::var("TCPTRACE_TEST_AGENT_ARGS")
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// A port nobody listens on right now, on this address.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `tcptrace trace --json`, its output collected in the background.
pub struct Tracer {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

pub struct Traced {
    pub events: Vec<Value>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    })
}

/// `tcptrace <args>` plus `TCPTRACE_TEST_AGENT_ARGS`, its stderr piped.
fn tcptrace(args: &[&str]) -> Command {
    let mut cmd = Command::new(TCPTRACE);
    cmd.args(args)
        .args(extra_agent_args())
        .stderr(Stdio::piped());
    cmd
}

impl Tracer {
    /// Start the tracer with these extra arguments and wait until it is attached.
    pub fn start(args: &[&str]) -> Tracer {
        let mut all = vec!["--log-level", "info", "trace", "--json"];
        all.extend_from_slice(args);
        let mut child = tcptrace(&all)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tcptrace");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let tracer = Tracer {
            child,
            stdout,
            stderr,
            readers,
        };
        tracer.wait_ready();
        tracer
    }

    fn wait_ready(&self) {
        let attached = || {
            let stderr = self.stderr.lock().unwrap();
            stderr.iter().any(|l| l.contains("tracing:")).then_some(())
        };
        let limit = attach_timeout();
        if poll_until(limit, attached).is_none() {
            panic!(
                "tcptrace did not attach within {limit:?}; stderr:\n{}",
                self.stderr.lock().unwrap().join("\n")
            );
        }
    }

    /// The JSON events printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// Wait until the events printed so far satisfy `done` (10 s at most).
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) {
        wait_until(Duration::from_secs(10), what, || {
            done(&self.events()).then_some(())
        });
    }

    /// SIGINT, wait for exit, and return every JSON event it printed.
    pub fn stop(mut self) -> Traced {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let stdout = self.stdout.lock().unwrap();
        let events = stdout
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        Traced {
            events,
            stderr: self.stderr.lock().unwrap().join("\n"),
            status,
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Traced {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["event"] == kind)
    }

    /// Ring-buffer losses reported in the closing summary.
    pub fn lost(&self) -> u64 {
        let summary = self
            .stderr
            .lines()
            .find(|l| l.contains("events printed"))
            .expect("no summary line");
        let before = summary.split(" lost").next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

/// How long the agent may take to load and attach its programs: 30 s, or
/// `TCPTRACE_TEST_ATTACH_SECS` (the emulated guests of `cargo xtask vm-test` set more).
pub fn attach_timeout() -> Duration {
    let secs = std::env::var("TCPTRACE_TEST_ATTACH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Poll `check` every 20 ms until it gives a value; panic naming `what` after `timeout`.
/// Tests wait for a condition, never for a fixed time.
pub fn wait_until<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, check).unwrap_or_else(|| panic!("waited {timeout:?} for {what}"))
}

/// `wait_until` that gives `None` after `timeout`, for a caller with more to say.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // The polling interval: what is awaited is the condition above.
        thread::sleep(Duration::from_millis(20));
    }
}

/// How long a reading must stay the same to count as still.
const STILL: Duration = Duration::from_millis(300);

/// `read` once it holds still: the same for 300 ms of readings in a row (10 s at most).
pub fn settled<T: PartialEq + Clone>(what: &str, mut read: impl FnMut() -> T) -> T {
    let mut last = read();
    let mut since = Instant::now();
    wait_until(Duration::from_secs(10), what, || {
        let now = read();
        if now != last {
            (last, since) = (now, Instant::now());
            return None;
        }
        (since.elapsed() >= STILL).then_some(now)
    })
}

/// A network namespace owned by one test, deleted when the guard drops (also on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        remove_stale_namespaces();
        let name = format!("tt-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace; panic with its output if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Run `f` on a thread whose network namespace is this one: sockets it opens live here.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// The namespace's own TCP counters, as `nstat -az` reports them.
    pub fn nstat(&self) -> HashMap<String, u64> {
        parse_nstat(&self.exec(&["nstat", "-asz"]))
    }

    /// Until no TCP socket of the namespace can send anything any more: each one gone or
    /// in TIME_WAIT. A FIN lost just before a loss rule went is retransmitted until then.
    pub fn wait_closed(&self) {
        wait_until(
            Duration::from_secs(30),
            "every TCP socket of the namespace closed or in TIME_WAIT",
            || {
                let open = self.exec(&["ss", "-tanH", "exclude", "time-wait"]);
                open.trim().is_empty().then_some(())
            },
        );
    }

    /// Ethernet-sized segments: with lo's 64 KiB MTU a whole transfer would be a handful
    /// of packets. Segmentation offload stays on, so a retransmitted skb may still carry
    /// several segments.
    pub fn like_a_real_link(&self) {
        self.exec(&["ip", "link", "set", "lo", "mtu", "1500"]);
    }

    /// Apply an nftables ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "nft"]);
        nft_with(cmd, ruleset);
    }

    /// A table `table` dropping on input what each of `rules` matches (see `drop_on_input`).
    pub fn drop_on_input(&self, table: &str, rules: &[String]) {
        self.nft(&drop_on_input(table, rules));
    }

    pub fn delete_table(&self, table: &str) {
        self.exec(&["nft", "delete", "table", "inet", table]);
    }
}

/// An nftables table dropping on input what each of `rules` matches. On input: a
/// dropped segment has left its sender, which counts a retransmit when it sends it
/// again; a segment refused on output never left, and TCP sends it again as a fresh
/// transmission, without counting a retransmit.
pub fn drop_on_input(table: &str, rules: &[String]) -> String {
    let rules: String = rules.iter().map(|r| format!(" {r} drop\n")).collect();
    format!(
        "table inet {table} {{\n chain in {{\n type filter hook input priority 0;\n{rules} }}\n}}\n"
    )
}

/// Apply an nftables ruleset in the calling thread's network namespace.
pub fn nft(ruleset: &str) {
    nft_with(Command::new("nft"), ruleset);
}

fn nft_with(mut cmd: Command, ruleset: &str) {
    let mut child = cmd.args(["-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft rejected:\n{ruleset}");
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Namespaces left by a test run that was killed before its guards could drop.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("tt-").and_then(|r| r.rsplit('-').next()) else {
            continue;
        };
        let alive = pid
            .parse::<i32>()
            .is_ok_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if !alive {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

pub fn parse_nstat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scrape taken when the kernel and tcptrace have both stopped counting: the
/// kernel's `kernel_keys` agree in readings before and after it, and tcptrace's
/// `our_metrics` agree with a second scrape. A FIN lost just before a loss rule went may
/// still be retransmitted a second later, and the kernel counts a retransmit a moment
/// before its tracepoint fires. Returns the reading taken before the scrape and the
/// scrape. Gives up after 10 s of counters that keep moving.
pub fn bracketed(
    kernel: impl Fn() -> HashMap<String, u64>,
    kernel_keys: &[&str],
    our_metrics: &[&str],
    mut scrape: impl FnMut() -> HashMap<String, f64>,
) -> (HashMap<String, u64>, HashMap<String, f64>) {
    let same_kernel = |a: &HashMap<String, u64>, b: &HashMap<String, u64>| {
        kernel_keys.iter().all(|k| a.get(*k) == b.get(*k))
    };
    let same_ours = |a: &HashMap<String, f64>, b: &HashMap<String, f64>| {
        our_metrics.iter().all(|m| total(a, m) == total(b, m))
    };
    wait_until(
        Duration::from_secs(10),
        "the counters to hold still around a scrape",
        || {
            let before = kernel();
            let ours = scrape();
            let still = same_kernel(&kernel(), &before) && same_ours(&scrape(), &ours);
            still.then_some((before, ours))
        },
    )
}

/// The host's counters plus those of each namespace, as one reading: tcptrace counts
/// the whole machine.
pub fn host_and(namespaces: &[&Netns]) -> HashMap<String, u64> {
    let mut all = parse_nstat(&sh(&["nstat", "-asz"]));
    for ns in namespaces {
        for (k, v) in ns.nstat() {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

/// Counter growth between two nstat readings.
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// A running `tcptrace run`, scraped over real HTTP.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        let port = free_port(IpAddr::from([127, 0, 0, 1]));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listen = addr.to_string();
        let mut all = vec!["run", "--listen", &listen];
        all.extend_from_slice(extra);
        let mut child = tcptrace(&all)
            .stdout(Stdio::null())
            .spawn()
            .expect("start tcptrace run");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let reader = Some(collect(child.stderr.take().unwrap(), stderr.clone()));
        let agent = Agent {
            child,
            addr,
            stderr,
            reader,
        };
        let limit = attach_timeout();
        if !until_ready(addr, limit) {
            panic!("agent not ready within {limit:?}:\n{}", agent.stderr());
        }
        agent
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One HTTP GET: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: tcptrace\r\n\r\n"),
        )
    }

    /// `/metrics` parsed into series -> value (`name{labels}` exactly as exposed).
    pub fn scrape(&self) -> HashMap<String, f64> {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        parse_exposition(&body)
    }

    /// SIGTERM and wait: (exit status, everything it logged).
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status, self.stderr())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the agent at `addr` answers /readyz with 200 within `timeout`.
pub fn until_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let ready = || {
        let answer = http_request(addr, "GET /readyz HTTP/1.1\r\nHost: tcptrace\r\n\r\n");
        matches!(answer, Ok((200, _))).then_some(())
    };
    poll_until(timeout, ready).is_some()
}

/// An HTTP answer as it came off the wire.
pub struct Answer {
    /// 0 where there is no status line.
    pub status: u16,
    /// The status line and headers, lowercased.
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn parse(mut raw: Vec<u8>) -> Answer {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw.split_off((split + 4).min(raw.len()));
        Answer { status, head, body }
    }

    pub fn content_length(&self) -> Option<usize> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
    }
}

/// Send raw bytes on a connected stream (its read timeout set) and read the whole answer.
pub fn exchange(s: &mut std::net::TcpStream, raw: &[u8]) -> std::io::Result<Answer> {
    s.write_all(raw)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(Answer::parse(got))
}

/// Connect (5 s at most), send raw bytes, read the whole answer.
pub fn http_exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Answer> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    exchange(&mut s, raw)
}

/// Send raw bytes, read the whole answer: (status, body).
pub fn http_request(addr: SocketAddr, raw: &str) -> std::io::Result<(u16, String)> {
    let answer = http_exchange(addr, raw.as_bytes())?;
    Ok((
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

pub fn parse_exposition(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of a metric (all label sets).
pub fn total(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

pub fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// How much a metric (every label set, see `total`) or one series grew between scrapes.
pub fn growth(before: &HashMap<String, f64>, after: &HashMap<String, f64>, name: &str) -> f64 {
    total(after, name) - total(before, name)
}

/// Every series of a metric, with its value.
pub fn series_of(m: &HashMap<String, f64>, family: &str) -> Vec<(String, f64)> {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{family}{{")))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The value of label `name` in a series (empty without it).
pub fn label<'a>(series: &'a str, name: &str) -> &'a str {
    series
        .split_once(&format!("{name}=\""))
        .and_then(|(_, rest)| rest.split('"').next())
        .unwrap_or_default()
}

/// Tests that read machine-wide counters run one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open, use and close `n` connections; the client closes first. Returns each
/// connection's (client address, server address).
pub fn churn(listener: &TcpListener, n: usize) -> Vec<(SocketAddr, SocketAddr)> {
    let server = listener.local_addr().unwrap();
    let mut seen = Vec::new();
    for _ in 0..n {
        let mut client = std::net::TcpStream::connect(server).unwrap();
        let (mut accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        client.write_all(b"x").unwrap();
        drop(client);
        let mut buf = Vec::new();
        accepted.read_to_end(&mut buf).unwrap();
        drop(accepted);
        seen.push((peer, server));
    }
    seen
}

/// A loopback listener with a deep accept queue: std's backlog of 128 overflows under a
/// connect burst, and clients whose SYN was dropped stall for the 1 s SYN timeout.
pub fn deep_listener() -> TcpListener {
    deep_listener_on(0)
}

/// `deep_listener` on a given port of 127.0.0.1.
pub fn deep_listener_on(port: u16) -> TcpListener {
    deep_listener_at(("127.0.0.1", port))
}

/// `deep_listener` on any address, e.g. every address of the namespace ("0.0.0.0").
pub fn deep_listener_at(addr: impl std::net::ToSocketAddrs) -> TcpListener {
    let listener = TcpListener::bind(addr).unwrap();
    // SAFETY: listen(2) on a socket we own; calling it again only resizes the queue.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
    listener
}

/// A connect to a port of 127.0.0.1 nobody listens on: refused.
pub fn connect_refused() {
    let port = free_port(IpAddr::from([127, 0, 0, 1]));
    let refused = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(refused.is_err(), "port {port} was meant to be closed");
}

/// Listen on 127.0.0.1:`port` (of the calling thread's network namespace), accept one
/// connection on a thread and read it to the end. Joining gives the bytes received.
pub fn receive_one(port: u16) -> thread::JoinHandle<usize> {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
        sink.len()
    })
}

/// Run `f` on a thread of its own inside a fresh network namespace (loopback up, the
/// given sysctls written under /proc/sys). The namespace belongs to that thread alone and
/// disappears when it ends, so nothing outlives a failing test, and no tool beyond
/// the kernel is needed (the tests also run inside minimal VMs).
pub fn in_private_netns<T: Send + 'static>(
    sysctls: &[(&str, &str)],
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let sysctls: Vec<(String, String)> = sysctls
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let worker = thread::spawn(move || {
        enter_new_netns();
        for (key, value) in &sysctls {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        f()
    });
    match worker.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Move the calling thread into a new network namespace of its own, loopback up.
pub fn enter_new_netns() {
    // SAFETY: plain syscall; affects only this thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    set_loopback_up();
}

fn set_loopback_up() {
    // SAFETY: an ioctl on a datagram socket with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr), 0);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, 0, "bringing lo up: {err}");
    }
}

/// `tcptrace probes --json` with default arguments, run once per test binary: it loads
/// and verifies every program of the object, which takes minutes under emulation.
pub fn default_plan() -> &'static Value {
    static PLAN: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| probe_plan(&[]))
}

/// `tcptrace probes --json` with these extra arguments.
pub fn probe_plan(extra: &[&str]) -> Value {
    let (plan, status) = tcptrace_json(&[&["probes", "--json"], extra].concat());
    assert_eq!(status, 0, "tcptrace probes failed");
    plan
}

/// Run tcptrace with these arguments (one of them `--json`), in the calling thread's
/// network namespace: what it printed, parsed, and its exit status.
pub fn tcptrace_json(args: &[&str]) -> (Value, i32) {
    let out = Command::new(TCPTRACE)
        .args(args)
        .output()
        .expect("run tcptrace");
    let printed = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tcptrace {args:?} printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (printed, out.status.code().unwrap_or(-1))
}

/// Our count against the kernel's own: equal, or short by no more than what the kernel
/// reports as skipped runs of `probe` (recursion protection: a softirq hit the CPU while
/// one of our programs ran there), times how much one skipped run can hide.
pub fn assert_within_missed(
    scrapes: (&HashMap<String, f64>, &HashMap<String, f64>),
    counts: (f64, f64),
    probe: &str,
    per_run: f64,
    what: &str,
) {
    let (before, after) = scrapes;
    let (ours, truth) = counts;
    let series = format!(r#"tcptrace_kernel_missed_runs_total{{probe="{probe}"}}"#);
    let missed = value(after, &series) - value(before, &series);
    assert!(
        ours <= truth && truth - ours <= missed * per_run,
        "{what}: ours {ours}, kernel {truth}, skipped runs of {probe} {missed}"
    );
}

/// The element of JSON array `array` whose `key` equals `name`.
pub fn find_by<'a>(array: &'a Value, key: &str, name: &str) -> &'a Value {
    array
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {array}"))
        .iter()
        .find(|item| item[key] == name)
        .unwrap_or_else(|| panic!("no {key} = {name} in {array}"))
}

/// One tracer per set of extra arguments (e.g. one per attach method), all printing the
/// given `--events`.
pub fn tracers_for(events: &str, variants: &[Vec<&str>]) -> Vec<Tracer> {
    variants
        .iter()
        .map(|extra| {
            let mut args = vec!["--events", events];
            args.extend(extra);
            Tracer::start(&args)
        })
        .collect()
}

/// A cgroup directory tree below the cgroup2 mount, created for one test and removed
/// (deepest first) even when the test fails.
pub struct CgroupTree {
    created: Vec<std::path::PathBuf>,
    pub leaf: std::path::PathBuf,
}

impl CgroupTree {
    pub fn create(levels: &[String]) -> CgroupTree {
        let mut dir = tcptrace_agent::k8s::cgroup::cgroup2_root().expect("a cgroup2 hierarchy");
        let mut created = Vec::new();
        for level in levels {
            dir = dir.join(level);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        CgroupTree { created, leaf: dir }
    }

    /// Run a bash script as a process moved into the leaf cgroup first; true on success.
    pub fn run(&self, script: &str) -> bool {
        self.command(script)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The same script started in the background, its stdout piped.
    pub fn spawn(&self, script: &str) -> Child {
        self.command(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("bash")
    }

    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && {script}",
            self.leaf.display()
        ));
        cmd
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A pod UID of this test run, the `n`th: a UUID made of the test process's pid and `n`.
pub fn test_pod_uid(n: u32) -> String {
    format!("{:08x}-{n:04x}-4000-8000-{n:012x}", std::process::id())
}

/// A 64-digit container id of this test run, the `n`th: distinct in its first 12
/// digits (the ones a series shows) for each `n`, like real (random) ids.
pub fn test_container_id(n: u32) -> String {
    format!("{n:08x}{:08x}{:048x}", std::process::id(), 0)
}

/// The cgroup levels the kubelet (systemd driver) and containerd give a burstable pod's
/// container.
pub fn pod_cgroup_levels(uid: &str, container_id: &str) -> Vec<String> {
    vec![
        "kubepods.slice".to_string(),
        "kubepods-burstable.slice".to_string(),
        format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{container_id}.scope"),
    ]
}

/// Make `close` abort the connection with a RST instead of a FIN.
pub fn set_linger_zero(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// One `Tcp:` counter of /proc/net/snmp as this thread's network namespace has it.
pub fn snmp_tcp(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no Tcp counter {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Kills a child process when the test ends, also on failure.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory of this test run under the temporary directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tcptrace-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP listener on `addr` (of the calling thread's network namespace) with this
/// backlog, capped by the kernel at `net.core.somaxconn`.
pub fn listener_with_backlog(addr: &str, backlog: i32) -> TcpListener {
    let listener = TcpListener::bind(addr).unwrap();
    // SAFETY: listen(2) on a socket we own; calling it again only resizes the queue.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), backlog) }, 0);
    listener
}

/// `ss -ltn`'s Recv-Q and Send-Q for the listener on this port of the calling thread's
/// network namespace: its accept queue's length and limit.
pub fn ss_listen_queue(port: u16) -> (u64, u64) {
    let line = sh(&["ss", "-ltnH", &format!("sport = :{port}")]);
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.first(), Some(&"LISTEN"), "ss: {line}");
    (cols[1].parse().unwrap(), cols[2].parse().unwrap())
}

/// A connect() to 127.0.0.1:`port` left in progress (non-blocking): its SYN is sent,
/// and the socket closes, sending nothing more, when this drops.
pub fn connect_in_progress(port: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a new socket we own, connected with a sockaddr_in of the size we pass.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        assert!(
            rc == -1 && err.raw_os_error() == Some(libc::EINPROGRESS),
            "non-blocking connect: {rc} {err}"
        );
        owned
    }
}

/// The calling thread's command name, as the kernel records it for what it does.
pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap()
        .trim_end()
        .to_string()
}
