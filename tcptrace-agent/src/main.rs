//! tcptrace: eBPF TCP tracing agent. The command line lives here; each command's work
//! lives in its own module of the library.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use tcptrace_agent::{
    doctor,
    event::clock,
    exporter::{
        self,
        settings::{self, LogFormat},
    },
    kernel::{self, report},
    trace::{self, filter},
};

/// Watch the kernel's TCP state machine: handshakes, state changes and retransmits,
/// with the process that owns each socket.
#[derive(Parser)]
#[command(name = "tcptrace", version, about, long_about = None)]
struct Cli {
    /// Log level for diagnostics on stderr: error, warn, info, debug, trace.
    /// Defaults to warn for `trace` (its output is the events) and info for `run`.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = settings::parse_log_level)]
    log_level: Option<log::LevelFilter>,
    /// Log format on stderr: text, or json (one object per line, for log collectors).
    #[arg(long, global = true, value_name = "FORMAT", value_parser = settings::parse_log_format)]
    log_format: Option<LogFormat>,
    /// Use only this attach method for a probe, e.g. `tcp_v4_connect=tracepoint` to
    /// compare a function hook with its tracepoint-derived fallback. Repeatable.
    /// `tcptrace probes` lists the probes and their methods.
    #[arg(long, global = true, value_name = "PROBE=METHOD", value_parser = kernel::parse_forced)]
    probe_method: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print TCP events live, one line each, until Ctrl-C, --duration or --count.
    ///
    /// Events: `state` (every TCP state transition, with the time spent in the old state),
    /// `handshake` (connect or accept finished: latency, or why it failed),
    /// `retransmit` (data, SYN or SYN-ACK re-sent, with the socket's state),
    /// `connect` (connect() failed before sending a SYN: EADDRNOTAVAIL means no free
    /// local port, ENETUNREACH no route) and, on request, `segment` (a segment received
    /// in LISTEN/SYN_SENT/SYN_RECV with its TCP flags: SYN-ACK, RST, unexpected ACK),
    /// and `error` (the kernel reported an error on a socket: ETIMEDOUT when keep-alive
    /// or retransmissions gave up on the peer, ECONNRESET, ICMP unreachables), `close`
    /// (a connection ended: lifetime, bytes, retransmits, RTT, who closed first), `drop`
    /// (the kernel dropped a TCP packet, with its reason: NETFILTER_DROP, PROTO_MEM, ...),
    /// `overflow` (a full accept queue turned a connection away), and, on request,
    /// `reset` (a RST sent or received on a socket tcptrace tracks).
    /// Filters run in the kernel, so filtered events cost no ring-buffer space.
    ///
    /// Examples:
    ///   tcptrace trace --port 443
    ///   tcptrace trace --events handshakes,retransmits --addr 10.0.0.0/8
    ///   tcptrace trace --netns /var/run/netns/blue --port 8080
    ///   tcptrace trace --json --duration 10 > events.jsonl
    #[command(verbatim_doc_comment)]
    Trace(TraceArgs),
    /// Run the agent: keep the programs attached and serve Prometheus metrics.
    ///
    /// Serves /metrics (text exposition), /healthz (process alive) and /readyz (programs
    /// attached and the ring buffer being drained) until SIGTERM or SIGINT. Counters are
    /// kept in the kernel, so a full ring buffer loses event detail, never counts.
    /// The metric reference is METRICS.md. After loading, the agent drops every
    /// capability it holds.
    ///
    /// HTTP: GET and HEAD only (others 405), one request per connection; a request head
    /// of at most 8 KiB (431) sent within 5 s; 10 s for a whole connection, answer
    /// included: a client that does not read its answer is then cut off. At most 32
    /// connections: a new one evicts the one that moved no byte for the longest, so
    /// stalled clients go before a scraper that reads (and request heads before
    /// answers). Scrapes arriving during a render share the next one. --health-listen
    /// keeps the kubelet's probes on a port of their own (8 connections, 2 s each).
    ///
    /// Settings come from flags, then the --config file, then defaults.
    ///
    /// Examples:
    ///   tcptrace run
    ///   tcptrace run --listen 127.0.0.1:9479 --log-format json
    ///   tcptrace run --health-listen :9480
    ///   tcptrace run --config /etc/tcptrace/tcptrace.toml
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Show how tcptrace hooks into this kernel, then exit.
    ///
    /// Each probe lists its attach methods in order of preference: a hook on the kernel
    /// function (fentry/fexit, then kprobe), then the same information derived from
    /// tracepoints. This loads and attaches exactly as `trace` and `run` do, prints the
    /// method each probe got and why the others were skipped (the verifier refused the
    /// program, or the kernel would not attach it), and checks that the verifier
    /// accepts every program in the object, attached or not.
    ///
    /// Examples:
    ///   tcptrace probes
    ///   tcptrace probes --json | jq '.probes[] | {probe, method}'
    ///   tcptrace probes --probe-method tcp_v4_connect=kprobe
    #[command(verbatim_doc_comment)]
    Probes(ProbesArgs),
    /// Run the TCP troubleshooting checklist on this network namespace, then exit.
    ///
    /// Checks: TIME_WAIT against net.ipv4.tcp_max_tw_buckets and who closes first;
    /// local ports in use per destination against ip_local_port_range (and EADDRNOTAVAIL
    /// seen); how long keep-alive takes to notice a dead peer against common load
    /// balancer idle timeouts; idle connections with and without keep-alive, with their
    /// owner; CLOSE_WAIT sockets by owning process; what tcp_syn_retries and
    /// tcp_synack_retries mean in seconds and an application connect timeout derived
    /// from measured handshakes; tcp_retries2 in seconds and a request timeout from the
    /// RTO and RTT of established connections; orphans and TCP memory (/proc/net/sockstat)
    /// against tcp_max_orphans and tcp_mem; retransmits and ETIMEDOUT seen. Each finding
    /// has a severity, its evidence and the fix.
    ///
    /// For --measure seconds it attaches the programs (root or CAP_BPF+CAP_PERFMON) and
    /// watches the kernel; --measure 0 runs the static checks only, without privileges.
    /// It changes no setting. Exit status: 0 nothing above info, 3 a warning,
    /// 4 a critical finding (1 error, 2 bad usage).
    /// Another namespace: `ip netns exec NAME tcptrace doctor`.
    ///
    /// Examples:
    ///   tcptrace doctor
    ///   tcptrace doctor --measure 30 --json
    ///   tcptrace doctor --watch 60 --measure 10
    #[command(verbatim_doc_comment)]
    Doctor(DoctorArgs),
}

#[derive(Args)]
struct DoctorArgs {
    /// Print one JSON object (every finding, the sysctls, the socket census).
    #[arg(long)]
    json: bool,
    /// Seconds to watch the kernel (handshakes, retransmits, connect and socket errors,
    /// who closes first); 0 = static checks only.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds_or_zero)]
    measure: Duration,
    /// Rerun every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = settings::parse_seconds)]
    watch: Option<Duration>,
    /// Connections without data for this long count as idle.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = settings::parse_seconds)]
    idle_after: Duration,
}

#[derive(Args)]
struct ProbesArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    settings: settings::RunSettings,
    /// TOML file with any of these settings, each as a key named like its flag with `_`
    /// for `-` (`ring_bytes = 8388608`, `labels = "workload"`), and `log_level`,
    /// `log_format`. Flags win over the file. Unknown keys and bad values are refused
    /// before anything is loaded.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TraceArgs {
    /// Print JSON lines instead of text (field names are listed in README.md).
    #[arg(long)]
    json: bool,
    /// Only sockets owned by this process id (the process that connected or listened).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Only sockets owned by this command name (exact, at most 15 bytes as the kernel keeps it).
    #[arg(long, value_name = "NAME")]
    comm: Option<String>,
    /// Only connections with this local or remote port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Only connections whose local or remote address is in this CIDR (or equals this address).
    #[arg(long, value_name = "CIDR")]
    addr: Option<String>,
    /// Only sockets of this network namespace: its inode (`ls -iL /proc/PID/ns/net`),
    /// /var/run/netns/NAME (`ip netns`), or /proc/PID/ns/net (a container's process).
    /// Needs kernel BTF.
    #[arg(long, value_name = "INODE|PATH")]
    netns: Option<String>,
    /// Only IPv4.
    #[arg(short = '4', long = "ipv4")]
    ipv4: bool,
    /// Only IPv6.
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,
    /// Which events to print: any of states, handshakes, retransmits, connects,
    /// segments, errors, resets, closes, drops, overflows (comma-separated).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "states,handshakes,retransmits,connects,errors,closes,drops,overflows"
    )]
    events: String,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = settings::parse_seconds)]
    duration: Option<Duration>,
    /// Stop after printing this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Ring buffer size in bytes: a power of two from 4096 to 1 GiB. Events that find
    /// it full are lost and counted, never silently dropped.
    #[arg(long, value_name = "BYTES", default_value_t = kernel::DEFAULT_RING_BYTES, value_parser = settings::parse_ring_bytes)]
    ring_bytes: u32,
    /// How many sockets the fallback socket map tracks at once (owner and state
    /// timing), where the kernel offers no socket storage to tracing programs (before
    /// 5.11, or without BTF); sockets beyond it are counted and reported without owner.
    #[arg(long, value_name = "N", default_value_t = kernel::DEFAULT_MAX_SOCKETS, value_parser = settings::parse_max_sockets)]
    max_sockets: u32,
}

fn parse_seconds_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    settings::parse_seconds(s)
}

impl TraceArgs {
    fn options(&self) -> anyhow::Result<trace::TraceOptions> {
        let filter = filter::build(&filter::FilterArgs {
            pid: self.pid,
            comm: self.comm.clone(),
            port: self.port,
            addr: self.addr.clone(),
            ipv4_only: self.ipv4,
            ipv6_only: self.ipv6,
            netns: self.netns.clone(),
            events: Some(self.events.clone()),
        })?;
        Ok(trace::TraceOptions {
            load: kernel::LoadOptions {
                ring_bytes: self.ring_bytes,
                max_sockets: self.max_sockets,
                filter,
                forced: Vec::new(),
                verify_all: false,
            },
            json: self.json,
            duration: self.duration,
            count: self.count,
        })
    }
}

impl RunArgs {
    /// Flags (the global log ones included) over the config file over defaults.
    fn settings(&self, cli: &Cli) -> anyhow::Result<settings::Settings> {
        let file = match &self.config {
            Some(path) => settings::RunSettings::load(path)?,
            None => settings::RunSettings::default(),
        };
        let flags = settings::RunSettings {
            log_level: cli.log_level,
            log_format: cli.log_format,
            ..self.settings.clone()
        };
        settings::resolve(flags.or(file))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Trace(args) => {
            init_logging(
                cli.log_level.unwrap_or(log::LevelFilter::Warn),
                cli.log_format.unwrap_or(LogFormat::Text),
            );
            // Flag values are validated before anything touches the kernel: exit 2.
            match args.options() {
                Ok(mut opts) => {
                    opts.load.forced = cli.probe_method.clone();
                    block_on(trace::run(opts))
                }
                Err(e) => usage_error(&e),
            }
        }
        Command::Run(args) => {
            let s = match args.settings(&cli) {
                Ok(s) => s,
                Err(e) => return usage_error(&e),
            };
            init_logging(s.log_level, s.log_format);
            block_on(exporter::run(exporter::RunOptions {
                listen: s.listen,
                health_listen: s.health_listen,
                load: kernel::LoadOptions {
                    ring_bytes: exporter::ring_bytes(s.ring_bytes, s.labels.is_some()),
                    max_sockets: s.max_sockets,
                    filter: exporter::event_filter(s.labels.is_some()),
                    forced: cli.probe_method.clone(),
                    verify_all: false,
                },
                labels: s.labels,
            }))
        }
        Command::Probes(args) => {
            init_logging(
                cli.log_level.unwrap_or(log::LevelFilter::Error),
                cli.log_format.unwrap_or(LogFormat::Text),
            );
            block_on(report::run(args.json, cli.probe_method.clone()))
        }
        Command::Doctor(args) => {
            init_logging(
                cli.log_level.unwrap_or(log::LevelFilter::Error),
                cli.log_format.unwrap_or(LogFormat::Text),
            );
            let opts = doctor::DoctorOptions {
                json: args.json,
                watch: args.watch,
                measure: args.measure,
                idle_after: args.idle_after,
            };
            match run_async(doctor::run(opts)) {
                Ok(worst) => ExitCode::from(doctor::exit_code(worst)),
                Err(code) => code,
            }
        }
    }
}

fn init_logging(level: log::LevelFilter, format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format_target(false);
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": clock::Clock::new().rfc3339_now(),
                "level": record.level().as_str().to_lowercase(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

fn usage_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("tcptrace: {e:#}");
    ExitCode::from(2)
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match run_async(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Run a command on a single-threaded runtime; an error is printed and becomes exit 1.
fn run_async<T>(fut: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("tcptrace: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })?;
    runtime.block_on(fut).map_err(|e| {
        eprintln!("tcptrace: {e:#}");
        ExitCode::FAILURE
    })
}
