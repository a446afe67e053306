//! Project automation: `cargo xtask setup | run | test`.
//!
//! `setup` makes a fresh machine able to build and test tcptrace and is safe to rerun:
//! each step checks first and says whether it found the piece or installed it.
mod bench;
mod churn;
mod image;
mod profile;
mod programs;
mod setup;
mod soak;
mod storm;
mod vm;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "tcptrace project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need: nightly rust-src, bpf-linker built against
    /// the nightly's LLVM, and the Debian packages the tests use. Idempotent.
    Setup,
    /// Set up, build the agent (release) and run it with the given arguments,
    /// e.g. `cargo xtask run -- trace --port 443`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the whole test suite: formatting, clippy, unit tests and the
    /// root-only integration tests against the real kernel.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Steady churn for N minutes against a release agent: RSS growth after warm-up
    /// and kernel socket-map occupancy over time (root; not part of the tests).
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Boot Debian kernels under QEMU (emulation, no KVM) and run the agent's
    /// integration tests inside, e.g.
    /// `cargo xtask vm-test --kernel all --tests probes,trace -- --skip retransmits`.
    VmTest {
        /// 5.10 (bullseye), 6.1 (bookworm), 6.12 (trixie), all, or host; repeatable.
        #[arg(long = "kernel", required = true)]
        kernels: Vec<String>,
        /// Integration test targets of tcptrace-agent to run in the guest.
        #[arg(long, value_delimiter = ',', default_value = "probes")]
        tests: Vec<String>,
        /// Per kernel, from boot to power-off.
        #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT.as_secs())]
        timeout_secs: u64,
        /// Look for newer kernel packages even when one is cached.
        #[arg(long)]
        refresh: bool,
        /// Save each guest's tracepoint format files as parser fixtures in
        /// tcptrace-agent/tests/formats/<series>-<event>.
        #[arg(long)]
        record_formats: bool,
        /// libtest arguments for the test binaries (name filters, --skip, --exact).
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// Build the container image (FROM scratch, the static agent only) with podman;
    /// `--verify` runs it as the DaemonSet does (CAP_BPF and CAP_PERFMON only, the seccomp
    /// profile of deploy/, no host PID namespace), checks that a connection made in
    /// another container is labelled with that container's id, then that the agent fails,
    /// saying why, without each of its privileges.
    Image {
        #[arg(long)]
        verify: bool,
    },
    /// A node simulated with containers: the image with the DaemonSet's settings next
    /// to three pods on the same port and a hostile neighbour (xtask/scripts/node-sim.sh).
    NodeSim,
    /// Benchmarks (root; not part of the tests). See BENCHMARKS.md.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Loopback connection churn under (a) nothing, (b) tcpstates, (c) a bpftrace
    /// counter, (d) tcptrace run, (e) tcptrace trace --json, (f) an empty program on the
    /// same tracepoint (the attach floor), with a bare run (a) between every two (A B A
    /// C A ...; the order of B..F rotated each round). Each ratio is a run over the bare
    /// runs next to it; the tables give per-round medians and spreads, and a target whose
    /// spread straddles it is UNDECIDED. The defaults take about 7 minutes (8 with
    /// --compare-args), the build aside.
    Churn {
        /// Rounds of every configuration; more rounds narrow the spreads.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Seconds of load per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// IPv6 instead of IPv4.
        #[arg(long)]
        ipv6: bool,
        /// Extra arguments for both tcptrace configurations, to compare agent settings
        /// (e.g. `--agent-args "--probe-method tcp_v4_connect=fexit"`).
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        agent_args: String,
        /// Also run (d) with these arguments each round, side by side with plain (d)
        /// (e.g. `--compare-args "--probe-method inet_sock_set_state=raw_tracepoint"`).
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        compare_args: String,
    },
    /// Kernel time per eBPF program (kernel.bpf_stats_enabled) under the churn load:
    /// tcptrace run against the bpftrace counter.
    Programs {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Extra arguments for tcptrace run.
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        agent_args: String,
        /// Also measure tcptrace run with these arguments.
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        compare_args: String,
    },
    /// Where the time goes under the churn load (perf, system-wide, with call graphs):
    /// the symbols leading the load's threads under tcptrace run and under tcptrace
    /// trace --json, the share under the tracepoints' BPF dispatch, and the tracer
    /// process's own profile.
    Profile {
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Extra arguments for both tcptrace configurations.
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        agent_args: String,
    },
    /// A transfer between two namespaces with 2% loss, with and without tcptrace run.
    Storm {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Userspace micro-benchmarks: /metrics encoding at 1k and 10k series, ring drain
    /// rate, per-event decode and render cost, each beside a baseline.
    Micro,
    /// Time GET /metrics against GET /healthz on a running release agent.
    Render {
        #[arg(long, default_value_t = 300)]
        rounds: usize,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Run { args } => setup::run().and_then(|()| run_agent(&args)),
        Cmd::Test { args } => setup::run().and_then(|()| test(&args)),
        Cmd::Soak { minutes } => setup::run().and_then(|()| soak::soak(minutes)),
        Cmd::VmTest {
            kernels,
            tests,
            timeout_secs,
            refresh,
            record_formats,
            filter,
        } => setup::run().and_then(|()| {
            vm::vm_test(
                &kernels,
                &vm::Options {
                    timeout: std::time::Duration::from_secs(timeout_secs),
                    refresh,
                    record_formats,
                    ..vm::Options::new(tests, filter)
                },
            )
        }),
        Cmd::Bench(Bench::Churn {
            rounds,
            seconds,
            threads,
            ipv6,
            agent_args,
            compare_args,
        }) => setup::run().and_then(|()| {
            churn::churn(&churn::Options {
                rounds,
                seconds,
                threads,
                ipv6,
                agent_args: agent_args.split_whitespace().map(String::from).collect(),
                compare_args: compare_args.split_whitespace().map(String::from).collect(),
            })
        }),
        Cmd::Image { verify } => setup::run().and_then(|()| image::image(verify)),
        Cmd::NodeSim => setup::run().and_then(|()| image::node_sim()),
        Cmd::Bench(Bench::Programs {
            seconds,
            threads,
            agent_args,
            compare_args,
        }) => setup::run().and_then(|()| {
            programs::programs(&churn::Options::one_load(
                seconds,
                threads,
                &agent_args,
                &compare_args,
            ))
        }),
        Cmd::Bench(Bench::Profile {
            seconds,
            threads,
            agent_args,
        }) => setup::run().and_then(|()| {
            profile::profile(&churn::Options::one_load(seconds, threads, &agent_args, ""))
        }),
        Cmd::Bench(Bench::Storm { rounds, seconds }) => {
            setup::run().and_then(|()| storm::storm(rounds, seconds))
        }
        Cmd::Bench(Bench::Micro) => {
            run_cmd(cargo().args(["bench", "--package", "tcptrace-agent", "--bench", "micro"]))
        }
        Cmd::Bench(Bench::Render { rounds }) => setup::run().and_then(|()| bench::render(rounds)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run a command, failing with its name when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run_agent(args: &[String]) -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "--package", "tcptrace-agent"]))?;
    let binary = release_agent();
    let status = Command::new(&binary)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn test(args: &[String]) -> Result<()> {
    let host_crates = [
        "--package",
        "tcptrace-common",
        "--package",
        "tcptrace-agent",
        "--package",
        "xtask",
    ];
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().arg("clippy").args(host_crates).args([
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let (mut passed, mut failed) =
        cargo_test_counted(cargo().arg("test").args(host_crates).args(args))?;
    if args.is_empty() {
        // Two other kernels in the default run, under emulation, run the probe tests
        // and the network-namespace ownership test: Debian 6.1, where fexit, kprobes and
        // socket storage for tracing programs exist, and 5.10, the oldest supported,
        // whose verifier is the strictest (it refused a program the newer ones accept)
        // and which has no socket storage for them (the fallback map is tested there).
        // `vm-test` runs the rest.
        let vm = vm::run_kernels(
            &[vm::Kernel::Linux510, vm::Kernel::Linux61],
            &vm::Options::new(
                vec!["probes".into(), "namespaces".into()],
                VM_SKIPPED.iter().map(|s| s.to_string()).collect(),
            ),
        )?;
        passed += vm.tests_passed;
        failed += vm.tests_failed;
        if !vm.all_passed {
            println!("tests: {passed} passed, {failed} failed");
            bail!("the probe tests failed inside Debian 5.10 or 6.1 (cargo xtask vm-test --kernel 5.10 --kernel 6.1)");
        }
        // The container image, run as the docs say (about two minutes, most of it the
        // static build), then beside containers playing pods and a hostile neighbour
        // (under a minute: the build is done).
        let verify_image: fn() -> Result<()> = || image::image(true);
        for (name, step) in [
            ("cargo xtask image --verify", verify_image),
            ("cargo xtask node-sim", image::node_sim),
        ] {
            match step() {
                Ok(()) => passed += 1,
                Err(e) => {
                    failed += 1;
                    println!("tests: {passed} passed, {failed} failed");
                    return Err(e.context(name));
                }
            }
        }
        fuzz(FUZZ_SECONDS)?;
    }
    // One plain closing line for the whole run: cargo's own last line is the doc-tests'
    // "0 passed", which says nothing about the tests that ran.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Tests the default run skips in the VMs: they need tools the guest lacks (`ip netns`,
/// python3) or take minutes under emulation; `cargo xtask vm-test` runs what it is told.
const VM_SKIPPED: [&str; 4] = [
    "--skip",
    "server_handshakes_count_for_the_pod",
    "--skip",
    "handshakes_count_with_more_sockets",
];

/// Run `cargo test`, echoing its output, and add up its "test result" lines.
fn cargo_test_counted(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = test_result_counts(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("tests: {passed} passed, {failed} failed");
        bail!("cargo test failed ({status})");
    }
    Ok((passed, failed))
}

/// (passed, failed) of a libtest "test result: ok. 6 passed; 0 failed; ..." line.
pub fn test_result_counts(line: &str) -> Option<(u64, u64)> {
    let rest = &line[line.find("test result: ")?..];
    let number_before = |word: &str| -> u64 {
        rest.split(word)
            .next()
            .and_then(|h| h.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Some((number_before(" passed"), number_before(" failed")))
}

/// Each fuzz target's time budget in the default test run.
const FUZZ_SECONDS: u32 = 20;
const FUZZ_TARGETS: [&str; 4] = ["http_request", "tracepoint_format", "btf", "pod_source"];

/// Run every fuzz target for a bounded time (nightly, sanitizers; no eBPF object needed).
fn fuzz(seconds: u32) -> Result<()> {
    for target in FUZZ_TARGETS {
        run_cmd(
            Command::new("cargo")
                .current_dir(workspace_root().join("fuzz"))
                .args(["+nightly", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={seconds}"))
                .env("AYA_BUILD_SKIP", "1"),
        )?;
        println!("fuzz: {target}: {seconds}s without a crash");
    }
    Ok(())
}

pub fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: CARGO_TARGET_DIR when set, as cargo itself does, so that
/// checkouts sharing a machine each run the binaries they built.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The agent `cargo build --release --package tcptrace-agent` made.
pub fn release_agent() -> PathBuf {
    target_dir().join("release/tcptrace")
}
