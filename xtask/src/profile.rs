//! `cargo xtask bench profile`: where the time goes under the churn load, from `perf`
//! (cpu-clock samples with call graphs; the JIT's `bpf_prog_<tag>_<name>` symbols name
//! each eBPF program). For `tcptrace run` and `tcptrace trace --json` in turn: the
//! symbols that lead the load's own threads (where the kernel runs the programs, in
//! the context of the connecting threads) and, for the tracer, its own process.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::churn::{self, Config, Tool};

/// Symbols listed per profile.
const TOP: usize = 15;

/// The kernel's entry points for a socket's BPF storage over its life: created (or
/// found) by a program, cloned by the kernel into a listener's child, freed when the
/// socket is destroyed. The per-socket tracking costs this whatever the programs do.
const SOCKET_STORAGE: [&str; 3] = [
    "bpf_sk_storage_get_tracing",
    "bpf_sk_storage_clone",
    "bpf_sk_storage_free",
];

pub fn profile(opts: &churn::Options) -> Result<()> {
    crate::run_cmd(crate::cargo().args(["build", "--release", "--package", "tcptrace-agent"]))?;
    let dir = std::env::temp_dir().join(format!("tcptrace-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = [Config::TcptraceRun, Config::TcptraceTraceJson]
        .into_iter()
        .try_for_each(|config| profile_one(config, opts, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn profile_one(config: Config, opts: &churn::Options, dir: &Path) -> Result<()> {
    let tool = Tool::start(config, &opts.agent_args)?.context("a configuration without a tool")?;
    let data = dir.join(format!("{config:?}.data"));
    // System-wide: the programs run in whatever context fires the hook.
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-a", "-g", "-o"])
        .arg(&data)
        .args(["--", "sleep", &opts.seconds.to_string()])
        .spawn()
        .context("starting perf (cargo xtask setup installs linux-perf)")?;
    let (conns, elapsed) = churn::run_load(opts)?;
    if !perf.wait()?.success() {
        bail!("perf record failed");
    }
    let tool_pid = tool.child.id();
    drop(tool);
    println!(
        "\n## {}: {:.0} conn/s while profiled",
        config.label(),
        conns as f64 / elapsed.as_secs_f64()
    );
    let load_pid = std::process::id().to_string();
    let load = report(&data, &load_pid, false)?;
    let with_callees = report(&data, &load_pid, true)?;
    let share_of = |wanted: &dyn Fn(&str) -> bool| -> f64 {
        with_callees
            .iter()
            .filter(|r| wanted(&r.1))
            .map(|r| r.0)
            .sum()
    };
    let under_bpf = share_of(&|sym| sym.starts_with("bpf_trace_run"));
    let storage = share_of(&|sym| SOCKET_STORAGE.contains(&sym));
    print_top(
        "the load's threads (connect, accept, the kernel under them)",
        &load,
    );
    let total: f64 = load.iter().map(|r| r.0).sum();
    println!(
        "
under the tracepoints' BPF dispatch (`bpf_trace_run*`: dispatch, programs, their helpers): {:.1}% of the load's samples",
        100.0 * under_bpf / total.max(f64::MIN_POSITIVE)
    );
    println!(
        "socket storage (created by the programs, copied into each accepted child, freed with the socket; the frees outside the programs): {:.1}% of the load's samples",
        100.0 * storage / total.max(f64::MIN_POSITIVE)
    );
    if config == Config::TcptraceTraceJson {
        let tracer = report(&data, &tool_pid.to_string(), false)?;
        print_top("the tracer process", &tracer);
    }
    Ok(())
}

/// (percent of all samples, symbol) for one process, highest first: self time, or with
/// `children` the time spent in a symbol and everything it called.
fn report(data: &PathBuf, pid: &str, children: bool) -> Result<Vec<(f64, String)>> {
    let mode = if children {
        "--children"
    } else {
        "--no-children"
    };
    let out = Command::new("perf")
        .args([
            "report", "-q", mode, "--sort", "sym", "-g", "none", "--pid", pid, "-i",
        ])
        .arg(data)
        .output()
        .context("perf report")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (pct, rest) = l.trim().split_once('%')?;
            // With --children a second column (self) follows the first.
            let rest = rest.trim_start();
            let rest = match rest.split_once('%') {
                Some((n, after)) if n.trim().parse::<f64>().is_ok() => after,
                _ => rest,
            };
            let sym = rest
                .trim()
                .trim_start_matches("[k]")
                .trim_start_matches("[.]");
            Some((pct.trim().parse().ok()?, sym.trim().to_string()))
        })
        .collect())
}

fn print_top(what: &str, rows: &[(f64, String)]) {
    let total: f64 = rows.iter().map(|r| r.0).sum();
    println!("\n{what}: {total:.1}% of all samples");
    println!("| share of these samples | symbol |\n| --- | --- |");
    for (pct, sym) in rows.iter().take(TOP) {
        println!("| {:.1}% | `{sym}` |", 100.0 * pct / total);
    }
}
