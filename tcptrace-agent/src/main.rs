//! tcptrace: eBPF TCP tracing agent. The command line lives here; each command's work
//! lives in its own module.
mod btf;
mod clock;
mod events;
mod exposition;
mod filter;
mod http;
mod kernel_counters;
mod metrics;
mod output;
mod privileges;
mod probes;
mod ring;
mod run;
mod sock_diag;
mod tp_format;
mod trace;
mod tracefs;

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Watch the kernel's TCP state machine: handshakes, state changes and retransmits,
/// with the process that owns each socket.
#[derive(Parser)]
#[command(name = "tcptrace", version, about, long_about = None)]
struct Cli {
    /// Log level for diagnostics on stderr: error, warn, info, debug, trace.
    /// Defaults to warn for `trace` (its output is the events) and info for `run`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<log::LevelFilter>,
    /// Log format on stderr: text, or json (one object per line, for log collectors).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print TCP events live, one line each, until Ctrl-C, --duration or --count.
    ///
    /// Events: `state` (every TCP state transition, with the time spent in the old state),
    /// `handshake` (connect or accept finished: latency, or why it failed) and
    /// `retransmit` (data, SYN or SYN-ACK re-sent, with the socket's state).
    /// Filters run in the kernel, so filtered events cost no ring-buffer space.
    ///
    /// Examples:
    ///   tcptrace trace --port 443
    ///   tcptrace trace --events handshakes,retransmits --addr 10.0.0.0/8
    ///   tcptrace trace --json --duration 10 > events.jsonl
    #[command(verbatim_doc_comment)]
    Trace(TraceArgs),
    /// Run the agent: keep the programs attached and serve Prometheus metrics.
    ///
    /// Serves /metrics (text exposition), /healthz (process alive) and /readyz (programs
    /// attached and the ring buffer being drained) until SIGTERM or SIGINT. Counters are
    /// kept in the kernel, so a full ring buffer loses event detail, never counts.
    /// The metric reference is METRICS.md.
    ///
    /// Examples:
    ///   tcptrace run
    ///   tcptrace run --listen 127.0.0.1:9479 --log-format json
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
}

/// The default metrics port.
const DEFAULT_LISTEN: &str = "0.0.0.0:9479";

#[derive(Args)]
struct RunArgs {
    /// Address and port for /metrics, /healthz and /readyz: `0.0.0.0:9479`,
    /// `127.0.0.1:9479`, `[::]:9479`, or `:9479` for every IPv4 address.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    limits: LimitArgs,
}

fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("`{s}` is not ADDR:PORT (e.g. 0.0.0.0:9479, [::]:9479 or :9479)"))
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
    /// Only IPv4.
    #[arg(short = '4', long = "ipv4")]
    ipv4: bool,
    /// Only IPv6.
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,
    /// Which events to print: any of states, handshakes, retransmits (comma-separated).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "states,handshakes,retransmits"
    )]
    events: String,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Stop after printing this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Kernel memory bounds shared by every command that loads the programs.
#[derive(Args)]
struct LimitArgs {
    /// Ring buffer size in bytes: a power of two from 4096 to 1 GiB. Events that find
    /// it full are lost and counted, never silently dropped.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, value_parser = parse_ring_bytes)]
    ring_bytes: u32,
    /// How many sockets the kernel tracks at once (owner and state timing); sockets
    /// beyond it are counted and reported without owner.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    max_sockets: u32,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))?;
    if !(4096..=1 << 30).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{n} must be a power of two between 4096 and 1073741824"
        ));
    }
    Ok(n)
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
            events: Some(self.events.clone()),
        })?;
        Ok(trace::TraceOptions {
            load: probes::LoadOptions {
                ring_bytes: self.limits.ring_bytes,
                max_sockets: self.limits.max_sockets,
                filter,
            },
            json: self.json,
            duration: self.duration,
            count: self.count,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Trace(_) => log::LevelFilter::Warn,
        Command::Run(_) => log::LevelFilter::Info,
    };
    init_logging(
        cli.log_level.unwrap_or(default_level),
        cli.log_format == "json",
    );
    match cli.command {
        Command::Run(args) => run(run::run(run::RunOptions {
            listen: args.listen,
            load: probes::LoadOptions {
                ring_bytes: args.limits.ring_bytes,
                max_sockets: args.limits.max_sockets,
                filter: tcptrace_common::Filter::ANY,
            },
            http: http::Limits::default(),
        })),
        Command::Trace(args) => {
            // Flag values are validated before anything touches the kernel: exit 2.
            let opts = match args.options() {
                Ok(o) => o,
                Err(e) => return usage_error(&e),
            };
            run(trace::run(opts))
        }
    }
}

fn init_logging(level: log::LevelFilter, json: bool) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format_target(false);
    if json {
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

fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcptrace: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcptrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
