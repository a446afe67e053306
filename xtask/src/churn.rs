//! `cargo xtask bench churn`: what each tracer costs a host making connections. Runs one
//! loopback connection-churn load (threads doing connect / 1-byte write / close) under
//! each configuration with a bare run between every two (A B A C A D ..., the order of
//! B C D ... rotated each round, plan.rs), and reports connections/s against the bare
//! runs next to each one, the tracer's CPU per 1,000 connections, its peak RSS and its
//! event accounting.
mod plan;
mod report;
mod stats;

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, release_agent, run_cmd};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Config {
    Bare,
    Tcpstates,
    BpftraceCount,
    TcptraceRun,
    TcptraceTraceJson,
    /// An empty bpftrace program on `inet_sock_set_state`: what attaching anything to
    /// the tracepoint costs, the floor under (c) and (d).
    BpftraceEmpty,
    /// (d) again with `--compare-args`, for A/B runs of agent settings.
    TcptraceRunCompare,
}

impl Config {
    /// Every configuration but the bare one, which runs between them.
    const MEASURED: [Config; 5] = [
        Config::Tcpstates,
        Config::BpftraceCount,
        Config::TcptraceRun,
        Config::TcptraceTraceJson,
        Config::BpftraceEmpty,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Config::Bare => "(a) nothing attached",
            Config::Tcpstates => "(b) tcpstates > /dev/null",
            Config::BpftraceCount => "(c) bpftrace count in map",
            Config::TcptraceRun => "(d) tcptrace run",
            Config::TcptraceTraceJson => "(e) tcptrace trace --json",
            Config::BpftraceEmpty => "(f) empty program (attach floor)",
            Config::TcptraceRunCompare => "(d') tcptrace run --compare-args",
        }
    }

    fn is_tcptrace(self) -> bool {
        matches!(
            self,
            Config::TcptraceRun | Config::TcptraceTraceJson | Config::TcptraceRunCompare
        )
    }

    /// The configurations this invocation measures against the bare runs between them.
    fn chosen(opts: &Options) -> Vec<Config> {
        let mut all = Config::MEASURED.to_vec();
        if !opts.compare_args.is_empty() {
            all.push(Config::TcptraceRunCompare);
        }
        all
    }
}

pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub threads: usize,
    pub ipv6: bool,
    /// Appended to both tcptrace command lines.
    pub agent_args: Vec<String>,
    /// When set, (d) runs a second time per round with these arguments instead.
    pub compare_args: Vec<String>,
}

impl Options {
    /// One IPv4 load for the commands that measure a single run of each tool
    /// (`bench programs`, `bench profile`); the arguments as typed, split at spaces.
    pub fn one_load(seconds: u64, threads: usize, agent_args: &str, compare_args: &str) -> Options {
        let words = |s: &str| s.split_whitespace().map(String::from).collect();
        Options {
            rounds: 1,
            seconds,
            threads,
            ipv6: false,
            agent_args: words(agent_args),
            compare_args: words(compare_args),
        }
    }
}

/// One measured run of one configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    conns_per_s: f64,
    tool_cpu_s: f64,
    conns: u64,
    peak_rss_kib: u64,
    delivered: Option<u64>,
    lost: Option<u64>,
}

/// A sample and where in the schedule it ran.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    round: usize,
    config: Config,
    sample: Sample,
}

pub fn churn(opts: &Options) -> Result<()> {
    if opts.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    run_cmd(cargo().args(["build", "--release", "--package", "tcptrace-agent"]))?;
    let start = Instant::now();
    let slots = plan::schedule(&Config::chosen(opts), opts.rounds);
    eprintln!(
        "churn: {} rounds, {} runs of {} s each, plus each tool's start-up",
        opts.rounds,
        slots.len(),
        opts.seconds
    );
    let mut runs = Vec::with_capacity(slots.len());
    for slot in slots {
        let config = slot.config;
        let sample = measure(config, opts)
            .with_context(|| format!("{} (round {})", config.label(), slot.round + 1))?;
        eprintln!(
            "round {} {:<32} {:>8.0} conn/s",
            slot.round + 1,
            config.label(),
            sample.conns_per_s
        );
        runs.push(Run {
            round: slot.round,
            config,
            sample,
        });
    }
    report::print(&runs, opts, start.elapsed());
    Ok(())
}

fn measure(config: Config, opts: &Options) -> Result<Sample> {
    let args = if config == Config::TcptraceRunCompare {
        &opts.compare_args
    } else {
        &opts.agent_args
    };
    let tool = Tool::start(config, args)?;
    let before_cpu = tool.as_ref().map(|t| t.cpu_seconds()).transpose()?;
    let (conns, elapsed) = run_load(opts)?;
    let mut sample = Sample {
        conns_per_s: conns as f64 / elapsed.as_secs_f64(),
        conns,
        ..Default::default()
    };
    if let Some(tool) = tool {
        sample.tool_cpu_s = tool.cpu_seconds()? - before_cpu.unwrap_or(0.0);
        sample.peak_rss_kib = tool.peak_rss_kib()?;
        (sample.delivered, sample.lost) = tool.finish()?;
    }
    Ok(sample)
}

/// A listener with a deep accept queue. std listens with a backlog of 128: a burst of
/// loopback connects overflows it, dropped SYNs stall clients for the 1 s SYN timeout,
/// and the benchmark would measure those stalls instead of the tracer.
pub fn deep_listener(addr: SocketAddr) -> Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind(addr)?;
    // SAFETY: listen(2) on a socket we own; calling it again only resizes the queue.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(listener)
}

/// Threads hammering a loopback listener for the configured time.
pub(crate) fn run_load(opts: &Options) -> Result<(u64, Duration)> {
    let ip: IpAddr = if opts.ipv6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    let listener = deep_listener(SocketAddr::new(ip, 0))?;
    let target = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                drop(conn);
            }
        })
    };
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(opts.seconds);
    let workers: Vec<_> = (0..opts.threads)
        .map(|_| {
            let count = count.clone();
            std::thread::spawn(move || {
                while Instant::now() < until {
                    if let Ok(mut c) = TcpStream::connect(target) {
                        let _ = c.write_all(b"x");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().ok();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(target);
    acceptor.join().ok();
    Ok((count.load(Ordering::Relaxed), elapsed))
}

/// A tracer process under test, its stderr collected for readiness and summaries.
pub(crate) struct Tool {
    config: Config,
    pub(crate) child: Child,
    stderr: mpsc::Receiver<String>,
    metrics: Option<SocketAddr>,
}

impl Tool {
    pub(crate) fn start(config: Config, agent_args: &[String]) -> Result<Option<Tool>> {
        let bin = release_agent().display().to_string();
        let free = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let (mut cmd, metrics) = match config {
            Config::Bare => return Ok(None),
            Config::Tcpstates => (Command::new("tcpstates"), None),
            Config::BpftraceCount => {
                let mut c = Command::new("bpftrace");
                c.args(["-e", "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }"]);
                (c, None)
            }
            Config::BpftraceEmpty => {
                let mut c = Command::new("bpftrace");
                c.args(["-e", "tracepoint:sock:inet_sock_set_state { }"]);
                (c, None)
            }
            Config::TcptraceRun | Config::TcptraceRunCompare => {
                let mut c = Command::new(&bin);
                c.args(["run", "--listen", &free.to_string()])
                    .args(agent_args);
                (c, Some(free))
            }
            Config::TcptraceTraceJson => {
                let mut c = Command::new(&bin);
                c.args(["--log-level", "info", "trace", "--json"])
                    .args(agent_args);
                (c, None)
            }
        };
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().with_context(
            || format!("starting {config:?}: is it installed? (cargo xtask setup installs libbpf-tools and bpftrace)"),
        )?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().context("stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let tool = Tool {
            config,
            child,
            stderr: rx,
            metrics,
        };
        tool.wait_ready()?;
        Ok(Some(tool))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        match self.config {
            Config::TcptraceRun | Config::TcptraceRunCompare => {
                let addr = self.metrics.context("no metrics address")?;
                while crate::bench::get(addr, "/readyz").is_err() {
                    if Instant::now() > deadline {
                        bail!("tcptrace run not ready");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Config::TcptraceTraceJson => self.wait_line("tracing:", deadline)?,
            // tcpstates and bpftrace say nothing on stderr once attached; give them the
            // time they take to load (measured here: well under a second).
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
        Ok(())
    }

    fn wait_line(&self, needle: &str, deadline: Instant) -> Result<()> {
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                if line.contains(needle) {
                    return Ok(());
                }
            }
        }
        bail!("never printed {needle:?}")
    }

    /// user + system CPU seconds of the tool so far, from /proc.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after_comm = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / clock_ticks())
    }

    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM")
    }

    /// Stop the tool; for tcptrace, its delivered and lost event counts.
    pub(crate) fn finish(mut self) -> Result<(Option<u64>, Option<u64>)> {
        let counts = match self.config {
            Config::TcptraceRun | Config::TcptraceRunCompare => {
                let body =
                    crate::bench::get(self.metrics.context("no metrics address")?, "/metrics")?;
                let value = |name: &str| {
                    body.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                        .map(|v| v as u64)
                };
                (
                    value("tcptrace_events_delivered_total "),
                    value("tcptrace_ringbuf_events_lost_total "),
                )
            }
            _ => (None, None),
        };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        if self.config == Config::TcptraceTraceJson {
            let summary = self
                .stderr
                .try_iter()
                .find(|l| l.contains("events printed"))
                .unwrap_or_default();
            let number_before = |word: &str| {
                summary
                    .split(word)
                    .next()?
                    .split_whitespace()
                    .last()?
                    .trim_start_matches("tcptrace:")
                    .parse()
                    .ok()
            };
            return Ok((number_before(" events printed"), number_before(" lost")));
        }
        Ok(counts)
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory arguments.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
