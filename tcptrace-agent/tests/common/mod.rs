//! Helpers for the root-only integration tests: start the real agent, make real TCP
//! traffic, read the kernel's own counters, and clean up namespaces even on failure.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
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

    /// Apply an nftables ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
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

/// Counter growth between two nstat readings.
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}
