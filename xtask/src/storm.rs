//! `cargo xtask bench storm`: a bulk transfer between two network namespaces joined by a
//! veth pair, with nftables dropping a share of the packets so TCP retransmits all the
//! time. Measures throughput with nothing attached and with `tcptrace run`, interleaved,
//! and reports the ratio. The namespaces are this run's own and are removed afterwards.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{bench::AgentProcess, cargo, run_cmd};

const LOSS_PERCENT: u32 = 2;

struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn create() -> Result<Pair> {
        let id = std::process::id();
        let pair = Pair {
            a: format!("tts-a-{id}"),
            b: format!("tts-b-{id}"),
        };
        for ns in [&pair.a, &pair.b] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        let (va, vb) = (
            format!("tsa{}", id % 100_000),
            format!("tsb{}", id % 100_000),
        );
        sh(&[
            "ip", "link", "add", &va, "netns", &pair.a, "type", "veth", "peer", "name", &vb,
            "netns", &pair.b,
        ])?;
        sh(&[
            "ip",
            "-n",
            &pair.a,
            "addr",
            "add",
            "10.253.0.1/30",
            "dev",
            &va,
        ])?;
        sh(&[
            "ip",
            "-n",
            &pair.b,
            "addr",
            "add",
            "10.253.0.2/30",
            "dev",
            &vb,
        ])?;
        sh(&["ip", "-n", &pair.a, "link", "set", &va, "up"])?;
        sh(&["ip", "-n", &pair.b, "link", "set", &vb, "up"])?;
        let rules = format!(
            "table inet tcptrace_storm {{\n chain in {{\n type filter hook input priority 0;\n \
             tcp dport 5001 numgen random mod 100 < {LOSS_PERCENT} drop\n }}\n}}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &pair.b, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        nft.stdin
            .take()
            .context("stdin")?
            .write_all(rules.as_bytes())?;
        if !nft.wait()?.success() {
            bail!("nft refused the loss rule");
        }
        Ok(pair)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Run `f` on a thread that lives in network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        // SAFETY: setns(2) on this thread only, with an fd we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(f())
    })
}

/// Megabytes per second of one transfer of `seconds` from namespace a to b.
fn transfer(pair: &Pair, seconds: u64) -> Result<f64> {
    let server = in_netns(&pair.b, || -> Result<u64> {
        let listener = TcpListener::bind("10.253.0.2:5001")?;
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = in_netns(&pair.a, move || -> Result<Duration> {
        let mut c = TcpStream::connect("10.253.0.2:5001")?;
        let chunk = vec![7u8; 1 << 16];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(seconds) {
            c.write_all(&chunk)?;
        }
        Ok(start.elapsed())
    });
    let elapsed = client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))???;
    let bytes = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))???;
    Ok(bytes as f64 / elapsed.as_secs_f64() / 1e6)
}

pub fn storm(rounds: usize, seconds: u64) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--package", "tcptrace-agent"]))?;
    let pair = Pair::create()?;
    let (mut bare, mut traced) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        bare.push(transfer(&pair, seconds)?);
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let agent = AgentProcess::start(addr)?;
        traced.push(transfer(&pair, seconds)?);
        drop(agent);
        eprintln!(
            "round {round}: bare {:.1} MB/s, tcptrace run {:.1} MB/s",
            bare[round - 1],
            traced[round - 1]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (b, t) = (median(&mut bare), median(&mut traced));
    println!(
        "retransmit storm ({LOSS_PERCENT}% loss on a veth pair, {rounds} rounds x {seconds} s, interleaved): \
         bare {b:.1} MB/s, with tcptrace run {t:.1} MB/s, ratio {:.3}",
        t / b
    );
    Ok(())
}
