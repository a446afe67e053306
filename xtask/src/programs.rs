//! `cargo xtask bench programs`: what each eBPF program costs per run and per
//! connection, from the kernel's own accounting (`kernel.bpf_stats_enabled`: run_time_ns
//! and run_cnt in each program fd's fdinfo), under the churn load, for tcptrace run and
//! for an empty bpftrace program and the bpftrace counter as baselines, in one
//! invocation.
use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result};

use crate::churn::{self, Config, Tool};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Per program: (name, runs, nanoseconds).
type ProgStats = BTreeMap<u32, (String, u64, u64)>;

pub fn programs(opts: &churn::Options) -> Result<()> {
    crate::run_cmd(crate::cargo().args(["build", "--release", "--package", "tcptrace-agent"]))?;
    let previous = std::fs::read_to_string(STATS_SYSCTL).context("reading bpf_stats_enabled")?;
    std::fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = measure_all(opts);
    std::fs::write(STATS_SYSCTL, previous.trim()).context("restoring bpf_stats_enabled")?;
    result
}

fn measure_all(opts: &churn::Options) -> Result<()> {
    let mut configs = vec![
        (Config::BpftraceEmpty, Vec::new()),
        (Config::BpftraceCount, Vec::new()),
        (Config::TcptraceRun, opts.agent_args.clone()),
    ];
    if !opts.compare_args.is_empty() {
        configs.push((Config::TcptraceRunCompare, opts.compare_args.clone()));
    }
    for (config, args) in configs {
        let tool = Tool::start(config, &args)?.context("a configuration without a tool")?;
        let pid = tool.child.id();
        let before = prog_stats(pid)?;
        let (conns, elapsed) = churn::run_load(opts)?;
        let after = prog_stats(pid)?;
        println!(
            "\n{} {}: {conns} connections in {:.1} s",
            config.label(),
            args.join(" "),
            elapsed.as_secs_f64()
        );
        print_table(&before, &after, conns, "connection");
        if config == Config::TcptraceRun {
            // Every connect to a port nobody listens on has its SYN dropped (NO_SOCKET):
            // what the drop programs cost per drop.
            let before = prog_stats(pid)?;
            let refused = refused_connects(REFUSED)?;
            let after = prog_stats(pid)?;
            println!(
                "\n{} {}: {refused} connects refused",
                config.label(),
                args.join(" ")
            );
            print_table(&before, &after, refused, "refused connect");
        }
        tool.finish()?;
    }
    Ok(())
}

/// Refused connects in the drop phase.
const REFUSED: u64 = 20_000;

/// What each program ran between two readings, per unit of load.
fn print_table(before: &ProgStats, after: &ProgStats, units: u64, unit: &str) {
    println!("| program | runs per {unit} | ns per run | us per {unit} |");
    println!("| --- | --- | --- | --- |");
    let mut total_ns = 0;
    for (id, (name, runs, ns)) in after {
        let (_, runs0, ns0) = before.get(id).cloned().unwrap_or_default();
        let (runs, ns) = (runs - runs0, ns - ns0);
        if runs == 0 {
            continue;
        }
        total_ns += ns;
        println!(
            "| {name} | {:.2} | {:.0} | {:.2} |",
            runs as f64 / units.max(1) as f64,
            ns as f64 / runs as f64,
            ns as f64 / units.max(1) as f64 / 1000.0
        );
    }
    println!(
        "| all | | | {:.2} |",
        total_ns as f64 / units.max(1) as f64 / 1000.0
    );
}

/// `n` connects to a loopback port nobody listens on; how many were refused.
fn refused_connects(n: u64) -> Result<u64> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut refused = 0;
    for _ in 0..n {
        match std::net::TcpStream::connect(closed) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => return Err(e).context("a connect to a closed port"),
            Ok(_) => anyhow::bail!("{closed} accepted a connection"),
        }
    }
    Ok(refused)
}

/// Every BPF program the process holds an fd of: id -> (name, run_cnt, run_time_ns).
fn prog_stats(pid: u32) -> Result<ProgStats> {
    let mut stats = ProgStats::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |key: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(runs), Some(ns)) =
            (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
        else {
            continue;
        };
        let id = id as u32;
        stats.entry(id).or_insert_with(|| (prog_name(id), runs, ns));
    }
    Ok(stats)
}

fn prog_name(id: u32) -> String {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["name"].as_str().map(String::from))
        .unwrap_or_else(|| format!("prog {id}"))
}
