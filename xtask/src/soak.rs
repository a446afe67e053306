//! `cargo xtask soak --minutes N`: steady connection churn against a release agent for N
//! minutes, sampling its resident memory and the kernel socket map's occupancy. Reports
//! RSS growth after a one-minute warm-up (target: at most 1 MiB over 10 minutes).
use std::{
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{bench::AgentProcess, cargo, run_cmd};

const WARM_UP: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Connections per second the churn aims at: steady, not a flood.
const TARGET_RATE: u64 = 2000;

pub fn soak(minutes: u64) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--package", "tcptrace-agent"]))?;
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let agent = AgentProcess::start(addr)?;
    let pid = agent.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let churn = spawn_churn(stop.clone(), opened.clone())?;

    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut samples = Vec::new();
    println!(
        "{:>6} {:>10} {:>12} {:>10}",
        "t(s)", "rss(KiB)", "sockets_map", "conns"
    );
    while Instant::now() < end {
        std::thread::sleep(SAMPLE_EVERY.min(end.saturating_duration_since(Instant::now())));
        let rss = rss_kib(pid)?;
        let map = socket_map_entries(pid).unwrap_or(0);
        let t = start.elapsed();
        println!(
            "{:>6} {:>10} {:>12} {:>10}",
            t.as_secs(),
            rss,
            map,
            opened.load(Ordering::Relaxed)
        );
        samples.push((t, rss));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().ok();
    drop(agent);
    report(&samples, opened.load(Ordering::Relaxed), minutes);
    Ok(())
}

fn report(samples: &[(Duration, u64)], opened: u64, minutes: u64) {
    let after_warm_up: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= WARM_UP)
        .map(|(_, r)| *r)
        .collect();
    match (after_warm_up.first(), after_warm_up.last()) {
        (Some(first), Some(last)) => {
            let growth = *last as i64 - *first as i64;
            let scaled = growth as f64 * 10.0 / (minutes as f64 - 1.0).max(1.0 / 6.0);
            println!(
                "{opened} connections; RSS after warm-up {first} KiB -> {last} KiB: {growth:+} KiB \
                 (~{scaled:+.0} KiB per 10 min; target <= 1024): {}",
                if scaled <= 1024.0 { "met" } else { "MISSED" }
            );
        }
        _ => println!(
            "{opened} connections; run longer than the 1-minute warm-up for an RSS verdict"
        ),
    }
}

/// Several threads opening and closing loopback connections at a steady rate.
fn spawn_churn(
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
) -> Result<std::thread::JoinHandle<()>> {
    let listener = crate::churn::deep_listener("127.0.0.1:0".parse()?)?;
    let target = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    Ok(std::thread::spawn(move || {
        let pace = Duration::from_secs(1) / TARGET_RATE as u32;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if TcpStream::connect(target).is_ok() {
                opened.fetch_add(1, Ordering::Relaxed);
            }
            next += pace;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("agent gone")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Entries of the agent's SOCKETS map, found through its fds and dumped with bpftool.
fn socket_map_entries(pid: u32) -> Option<usize> {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) else {
            continue;
        };
        let id = id.trim();
        let show = std::process::Command::new("bpftool")
            .args(["map", "show", "id", id])
            .output()
            .ok()?;
        if !String::from_utf8_lossy(&show.stdout).contains("name SOCKETS") {
            continue;
        }
        let dump = std::process::Command::new("bpftool")
            .args(["map", "dump", "id", id, "--json"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&dump.stdout);
        return Some(text.matches("\"key\"").count());
    }
    None
}
