//! `cargo xtask bench render`: how long `/metrics` takes, measured from a client over
//! real HTTP against a running release agent, side by side with `/healthz` (the same
//! connection and HTTP work without rendering) in the same run, interleaved.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, release_agent, run_cmd};

pub fn render(rounds: usize) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--package", "tcptrace-agent"]))?;
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let agent = AgentProcess::start(addr)?;
    populate_series();
    let series = get(addr, "/metrics")?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();

    let mut health = Vec::with_capacity(rounds);
    let mut metrics = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        health.push(time(|| get(addr, "/healthz"))?);
        metrics.push(time(|| get(addr, "/metrics"))?);
    }
    drop(agent);
    let (h, m) = (summary(&mut health), summary(&mut metrics));
    println!("GET /metrics ({series} series) vs GET /healthz, {rounds} rounds interleaved, release build");
    println!(
        "{:<10} {:>12} {:>12} {:>12}",
        "endpoint", "median", "p90", "max"
    );
    for (name, s) in [("/healthz", h), ("/metrics", m)] {
        println!(
            "{:<10} {:>10.3}ms {:>10.3}ms {:>10.3}ms",
            name, s.0, s.1, s.2
        );
    }
    println!(
        "render cost (median /metrics - /healthz): {:.3} ms; ratio {:.2}x",
        m.0 - h.0,
        m.0 / h.0
    );
    Ok(())
}

pub struct AgentProcess(Child);

impl AgentProcess {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn start(addr: SocketAddr) -> Result<AgentProcess> {
        let bin = release_agent();
        let child = Command::new(&bin)
            .args(["run", "--listen", &addr.to_string(), "--log-level", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let agent = AgentProcess(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if get(addr, "/readyz").is_ok() {
                return Ok(agent);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the agent did not become ready (it needs root to load its programs)")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SIGTERM for a clean detach, then reap.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Connections, refusals and closes so that every kernel-backed family has series.
fn populate_series() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    for _ in 0..200 {
        if let Ok(c) = TcpStream::connect(addr) {
            let _ = listener.accept();
            drop(c);
        }
    }
    drop(listener);
    let _ = TcpStream::connect(addr);
}

/// One HTTP GET over a fresh connection; the whole answer, or an error unless 200.
pub fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", body.lines().next().unwrap_or_default());
    }
    Ok(body)
}

fn time(f: impl FnOnce() -> Result<String>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// (median, p90, max) in milliseconds.
fn summary(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), at(1.0))
}
