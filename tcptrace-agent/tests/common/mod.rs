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

/// These tests load eBPF programs and create network namespaces: they need root.
/// Without it they fail loudly rather than pass without testing anything.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests load eBPF programs and must run as root (cargo xtask test as root)"
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

impl Tracer {
    /// Start the tracer with these extra arguments and wait until it is attached.
    pub fn start(args: &[&str]) -> Tracer {
        let mut child = Command::new(TCPTRACE)
            .args(["--log-level", "info", "trace", "--json"])
            .args(args)
            .args(extra_agent_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("tracing:"))
            {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tcptrace did not attach within 30 s; stderr:\n{}",
            self.stderr.lock().unwrap().join("\n")
        );
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

/// Poll `check` every 20 ms until it gives a value; panic naming `what` after `timeout`.
/// Tests wait for a condition, never for a fixed time.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        thread::sleep(Duration::from_millis(20));
    }
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

    /// The counters once they stopped moving (two readings 300 ms apart agree, within
    /// 10 s): a FIN lost just before a loss rule went may still be retransmitted.
    pub fn settled_nstat(&self) -> HashMap<String, u64> {
        let mut last = self.nstat();
        for _ in 0..33 {
            thread::sleep(Duration::from_millis(300));
            let now = self.nstat();
            if now == last {
                return now;
            }
            last = now;
        }
        panic!("the namespace's counters kept moving for 10 s");
    }

    /// Apply an nftables ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft rejected:\n{ruleset}");
    }
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
/// before its tracepoint fires. Returns the reading taken before the scrape. Gives up
/// after 10 s of counters that keep moving.
pub fn bracketed(
    kernel: impl Fn() -> HashMap<String, u64>,
    kernel_keys: &[&str],
    our_metrics: &[&str],
    mut scrape: impl FnMut() -> HashMap<String, f64>,
) -> (HashMap<String, u64>, HashMap<String, f64>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let same_kernel = |a: &HashMap<String, u64>, b: &HashMap<String, u64>| {
        kernel_keys.iter().all(|k| a.get(*k) == b.get(*k))
    };
    let same_ours = |a: &HashMap<String, f64>, b: &HashMap<String, f64>| {
        our_metrics.iter().all(|m| total(a, m) == total(b, m))
    };
    loop {
        let before = kernel();
        let ours = scrape();
        if same_kernel(&kernel(), &before) && same_ours(&scrape(), &ours) {
            return (before, ours);
        }
        assert!(
            Instant::now() < deadline,
            "the counters kept moving for 10 s"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// The host's counters plus a namespace's, as one reading.
pub fn host_and(ns: &Netns) -> HashMap<String, u64> {
    let mut all = parse_nstat(&sh(&["nstat", "-asz"]));
    for (k, v) in ns.nstat() {
        *all.entry(k).or_insert(0) += v;
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
        let mut child = Command::new(TCPTRACE)
            .args(["run", "--listen", &addr.to_string()])
            .args(extra)
            .args(extra_agent_args())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(agent.get("/readyz"), Ok((200, _))) {
                return agent;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("agent not ready within 30 s:\n{}", agent.stderr());
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

/// Send raw bytes, read the whole answer: (status, body).
pub fn http_request(addr: SocketAddr, raw: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw.as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
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
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // SAFETY: listen(2) on a socket we own; calling it again only resizes the queue.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
    listener
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
    let out = Command::new(TCPTRACE)
        .arg("probes")
        .arg("--json")
        .args(extra)
        .output()
        .expect("run tcptrace probes");
    assert!(
        out.status.success(),
        "tcptrace probes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probes --json prints JSON")
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
