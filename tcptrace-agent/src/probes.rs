//! The probe table and the loop that loads and attaches the eBPF programs.
//!
//! Each logical probe lists its attach methods in order of preference: a hook on the
//! kernel function itself (fentry/fexit, then kprobe) where the kernel allows it, else
//! the same information derived from tracepoints. The loop attaches the first method
//! that works, records why each one before it was skipped, and keeps going; only the
//! state tracepoint is indispensable. `tcptrace probes` prints the outcome.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use aya::{maps::Array, Btf as AyaBtf, Ebpf, EbpfLoader};
use log::{info, warn};
use serde::Serialize;
use tcptrace_common::{
    config::{
        Source, SOURCE_CONNECT_V4, SOURCE_CONNECT_V6, SOURCE_DESTROY, SOURCE_SEGMENTS,
        SOURCE_TRACKING, TRACKING_SOCKET_STORAGE,
    },
    stats::Guarded,
    Config, Filter, TpLayout, FIELD_ABSENT,
};

use crate::{
    attach::{self, Attach, Failure, Stage},
    offsets::{KernelOffsets, Reads},
    tp_format::{self, Carries, Want},
    tracefs,
};

/// The eBPF object built by build.rs, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

/// A tracepoint a program reads, and the fields it needs from the record.
pub struct Tracepoint {
    pub category: &'static str,
    pub event: &'static str,
    pub carries: Carries,
    /// The event's own fields.
    pub extra: &'static [Want],
    pub slot: fn(&mut Config) -> &mut TpLayout,
}

pub const TRACEPOINTS: [Tracepoint; 8] = [
    Tracepoint {
        category: "sock",
        event: "inet_sock_set_state",
        carries: Carries::SocketAndAddresses,
        extra: &tp_format::SET_STATE_EXTRA,
        slot: |c| &mut c.set_state,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_retransmit_skb",
        carries: Carries::SocketAndAddresses,
        extra: &tp_format::RETRANSMIT_SKB_EXTRA,
        slot: |c| &mut c.retransmit_skb,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_retransmit_synack",
        carries: Carries::SocketAndAddresses,
        extra: &[],
        slot: |c| &mut c.retransmit_synack,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_receive_reset",
        carries: Carries::SocketAndAddresses,
        extra: &[],
        slot: |c| &mut c.receive_reset,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_send_reset",
        carries: Carries::Nothing,
        extra: &tp_format::SKADDR_ONLY,
        slot: |c| &mut c.send_reset,
    },
    Tracepoint {
        category: "tcp",
        event: "tcp_destroy_sock",
        carries: Carries::Nothing,
        extra: &tp_format::SKADDR_ONLY,
        slot: |c| &mut c.destroy_sock,
    },
    Tracepoint {
        category: "sock",
        event: "inet_sk_error_report",
        carries: Carries::Addresses,
        extra: &tp_format::ERROR_REPORT_EXTRA,
        slot: |c| &mut c.error_report,
    },
    Tracepoint {
        category: "syscalls",
        event: "sys_exit_connect",
        carries: Carries::Nothing,
        extra: &tp_format::SYSCALL_RET,
        slot: |c| &mut c.sys_exit_connect,
    },
];

/// One way of providing a probe.
pub struct Method {
    /// `tp_btf`, `raw_tracepoint`, `tracepoint`, `fentry`, `fexit`, `kprobe`, or the name
    /// of a method that attaches nothing of its own (derived, `socket_storage`, `hash`).
    pub name: &'static str,
    /// Programs to load and attach, all or nothing.
    pub attach: &'static [Attach],
    /// Probes (`probe`, or `probe/method` for a particular method) this method needs
    /// attached first: it derives its information from them or shares their state.
    pub derived_from: &'static [&'static str],
    /// Kernel struct fields read at offsets from BTF.
    pub reads: Reads,
}

pub struct Probe {
    pub name: &'static str,
    /// Without it tcptrace has nothing to show: refuse to start.
    pub required: bool,
    pub purpose: &'static str,
    pub methods: &'static [Method],
    /// The `SOURCES` slot telling the programs which method provides this probe.
    pub source_slot: Option<u32>,
    /// Its `RUNNING`/`RECOVERED` slot where its methods pair a main program with a backup.
    pub guarded: Option<Guarded>,
}

/// The method of a probe on one tracepoint whose programs are named after it:
/// `<event>_btf` (BTF-typed: the socket's own storage, a recursion guard per program),
/// `<event>_raw` (raw: the fallback socket map, a guard per program) and `<event>`
/// (classic: the fallback map, the guard that every classic tracepoint and kprobe on a
/// CPU shares). A BTF-typed program keeps socket state where the state program does,
/// so it needs the state program on its BTF-typed tracepoint too. BTF-typed and raw
/// methods attach a main program and its `_backup`, in that order (`guard.rs` in the
/// eBPF crate: the backup takes the events the main one's own guard skipped).
macro_rules! btf_method {
    ($event:literal, $reads:expr) => {
        Method {
            name: "tp_btf",
            attach: &[
                Attach::BtfTracepoint {
                    program: concat!($event, "_btf"),
                    event: $event,
                },
                Attach::BtfTracepoint {
                    program: concat!($event, "_btf_backup"),
                    event: $event,
                },
            ],
            derived_from: &["socket_tracking/socket_storage"],
            reads: $reads,
        }
    };
}
macro_rules! raw_method {
    ($event:literal, $reads:expr) => {
        Method {
            name: "raw_tracepoint",
            attach: &[
                Attach::RawTracepoint {
                    program: concat!($event, "_raw"),
                    event: $event,
                },
                Attach::RawTracepoint {
                    program: concat!($event, "_raw_backup"),
                    event: $event,
                },
            ],
            derived_from: &[],
            reads: $reads,
        }
    };
}
macro_rules! classic_method {
    ($category:literal, $event:literal) => {
        Method {
            name: "tracepoint",
            attach: &[Attach::Tracepoint {
                program: $event,
                category: $category,
                event: $event,
            }],
            derived_from: &[],
            reads: Reads::Nothing,
        }
    };
}

/// A probe on a tracepoint that passes the socket: BTF-typed, raw, classic, in that
/// order.
macro_rules! socket_probe {
    ($category:literal, $event:literal, $guarded:expr, $reads:expr, $purpose:literal) => {
        Probe {
            name: $event,
            required: false,
            purpose: $purpose,
            methods: &[
                btf_method!($event, $reads),
                raw_method!($event, $reads),
                classic_method!($category, $event),
            ],
            source_slot: None,
            guarded: Some($guarded),
        }
    };
}

/// The connect-error probes: fexit, then kprobe + kretprobe, then the state tracepoint
/// plus `sys_exit_connect` (CLOSE -> SYN_SENT runs inside connect()).
macro_rules! connect_probe {
    ($function:literal, $slot:expr) => {
        Probe {
            name: $function,
            required: false,
            purpose: "connect() errors before a SYN is sent (EADDRNOTAVAIL, ENETUNREACH, ...)",
            methods: &[
                Method {
                    name: "fexit",
                    attach: &[Attach::Fexit {
                        program: concat!($function, "_fexit"),
                        function: $function,
                    }],
                    derived_from: &[],
                    reads: Reads::Nothing,
                },
                Method {
                    name: "kprobe",
                    attach: &[
                        Attach::Kprobe {
                            program: "tcp_connect_kprobe",
                            function: $function,
                        },
                        Attach::Kprobe {
                            program: "tcp_connect_kretprobe",
                            function: $function,
                        },
                    ],
                    derived_from: &[],
                    reads: Reads::Nothing,
                },
                Method {
                    name: "tracepoint",
                    attach: &[Attach::Tracepoint {
                        program: "sys_exit_connect",
                        category: "syscalls",
                        event: "sys_exit_connect",
                    }],
                    derived_from: &["inet_sock_set_state"],
                    reads: Reads::Nothing,
                },
            ],
            source_slot: Some($slot),
            guarded: None,
        }
    };
}

/// The pseudo-probe that says where per-socket state lives (owner, state timing, what
/// was counted): socket-local storage where the state program runs on its BTF-typed
/// tracepoint, else the fallback socket map (`--max-sockets`).
pub const SOCKET_TRACKING: &str = "socket_tracking";

pub const PROBES: [Probe; 11] = [
    Probe {
        name: "inet_sock_set_state",
        required: true,
        purpose: "state changes, handshakes, socket ownership",
        methods: &[
            Method {
                derived_from: &[],
                ..btf_method!("inet_sock_set_state", Reads::Sock)
            },
            raw_method!("inet_sock_set_state", Reads::Sock),
            classic_method!("sock", "inet_sock_set_state"),
        ],
        source_slot: None,
        guarded: Some(Guarded::SetState),
    },
    Probe {
        name: SOCKET_TRACKING,
        required: true,
        purpose: "per-socket state: owner, time in state, what was counted",
        methods: &[
            // Lives and dies with the socket: no capacity, nothing to clean up.
            Method {
                name: "socket_storage",
                attach: &[],
                derived_from: &["inet_sock_set_state/tp_btf"],
                reads: Reads::Nothing,
            },
            // Bounded by --max-sockets; sockets beyond it are counted, untracked.
            Method {
                name: "hash",
                attach: &[],
                derived_from: &[],
                reads: Reads::Nothing,
            },
        ],
        source_slot: Some(SOURCE_TRACKING),
        guarded: None,
    },
    socket_probe!(
        "tcp",
        "tcp_retransmit_skb",
        Guarded::RetransmitSkb,
        Reads::Sock,
        "data and SYN retransmits"
    ),
    socket_probe!(
        "tcp",
        "tcp_retransmit_synack",
        Guarded::RetransmitSynack,
        Reads::Sock,
        "SYN-ACK retransmits"
    ),
    socket_probe!(
        "tcp",
        "tcp_receive_reset",
        Guarded::ReceiveReset,
        Reads::Sock,
        "RSTs received; refused/reset handshakes when BTF is missing"
    ),
    socket_probe!(
        "tcp",
        "tcp_send_reset",
        Guarded::SendReset,
        Reads::Sock,
        "RSTs sent"
    ),
    // Where sockets are tracked in the fallback map, a socket stays tracked from CLOSE
    // until the kernel frees it: an aborting close (SO_LINGER 0, unread data) sends its
    // RST after CLOSE. Socket storage is freed with the socket by the kernel itself.
    Probe {
        name: "tcp_destroy_sock",
        required: false,
        purpose: "ends socket tracking when the kernel frees a socket (RSTs after CLOSE keep their owner)",
        methods: &[
            Method {
                name: "socket_storage",
                attach: &[],
                derived_from: &["socket_tracking/socket_storage"],
                reads: Reads::Nothing,
            },
            // Counts nothing: no backup needed.
            Method {
                name: "raw_tracepoint",
                attach: &[Attach::RawTracepoint {
                    program: "tcp_destroy_sock_raw",
                    event: "tcp_destroy_sock",
                }],
                derived_from: &[],
                reads: Reads::Nothing,
            },
            classic_method!("tcp", "tcp_destroy_sock"),
        ],
        source_slot: Some(SOURCE_DESTROY),
        guarded: None,
    },
    socket_probe!(
        "sock",
        "inet_sk_error_report",
        Guarded::ErrorReport,
        Reads::SockAndError,
        "socket errors: ETIMEDOUT from keep-alive or retransmission timeouts, resets, ICMP"
    ),
    connect_probe!("tcp_v4_connect", SOURCE_CONNECT_V4),
    connect_probe!("tcp_v6_connect", SOURCE_CONNECT_V6),
    Probe {
        name: "tcp_rcv_state_process",
        required: false,
        purpose: "flags of segments received in LISTEN/SYN_SENT/SYN_RECV (SYN-ACK, RST, stray ACK)",
        methods: &[
            Method {
                name: "fentry",
                attach: &[Attach::Fentry {
                    program: "tcp_rcv_state_process_fentry",
                    function: "tcp_rcv_state_process",
                }],
                derived_from: &[],
                reads: Reads::SockAndSkbFlags,
            },
            Method {
                name: "kprobe",
                attach: &[Attach::Kprobe {
                    program: "tcp_rcv_state_process_kprobe",
                    function: "tcp_rcv_state_process",
                }],
                derived_from: &[],
                reads: Reads::SockAndSkbFlags,
            },
            // Only RSTs: tcp_receive_reset fires for them, with the tracked state.
            Method {
                name: "tracepoint",
                attach: &[],
                derived_from: &["tcp_receive_reset"],
                reads: Reads::Nothing,
            },
        ],
        source_slot: Some(SOURCE_SEGMENTS),
        guarded: None,
    },
];

/// A method that was not used, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub method: &'static str,
    pub stage: Stage,
    pub reason: String,
}

/// What happened to one probe on this kernel.
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub hook: &'static str,
    /// The method attached, or `none`.
    pub method: &'static str,
    pub attached: bool,
    pub purpose: &'static str,
    /// The attached programs' fds, for reading their kernel statistics.
    #[serde(skip)]
    pub prog_fds: Vec<i32>,
    /// Methods tried before the one attached (or all of them), with the reason.
    pub skipped: Vec<Skipped>,
}

/// How often readers drain the ring buffer without being woken: below a quarter full
/// the kernel does not wake them, which saves a wakeup per event under load.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Sizes, filters and method choices from the command line.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub ring_bytes: u32,
    pub max_sockets: u32,
    pub filter: Filter,
    /// `--probe-method PROBE=METHOD`: use only this method for that probe.
    pub forced: Vec<(String, String)>,
}

impl LoadOptions {
    /// Default ring and socket-map sizes, no filter: what `probes` and `doctor` load.
    pub fn defaults(forced: Vec<(String, String)>) -> LoadOptions {
        LoadOptions {
            ring_bytes: crate::settings::DEFAULT_RING_BYTES,
            max_sockets: crate::settings::DEFAULT_MAX_SOCKETS,
            filter: Filter::ANY,
            forced,
        }
    }
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub kernel: KernelFacts,
}

/// What `tcptrace probes` reports about the kernel besides the probes.
#[derive(Clone, Debug, Serialize)]
pub struct KernelFacts {
    pub release: String,
    pub btf: bool,
    pub tracefs: String,
    pub kprobes: bool,
}

impl KernelFacts {
    fn gather(tracefs_root: &Path) -> KernelFacts {
        KernelFacts {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            btf: Path::new(crate::offsets::VMLINUX_BTF).exists(),
            tracefs: tracefs_root.display().to_string(),
            kprobes: kprobes_available(tracefs_root),
        }
    }
}

/// kprobes need the kprobe PMU (4.17+) or the legacy `kprobe_events` file.
fn kprobes_available(tracefs_root: &Path) -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || tracefs_root.join("kprobe_events").exists()
}

/// Check `--probe-method` values against the table; exit-2 material.
pub fn parse_forced(s: &str) -> Result<(String, String), String> {
    let (probe, method) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not PROBE=METHOD"))?;
    let Some(p) = PROBES.iter().find(|p| p.name == probe) else {
        let names: Vec<&str> = PROBES.iter().map(|p| p.name).collect();
        return Err(format!(
            "unknown probe `{probe}`: one of {}",
            names.join(", ")
        ));
    };
    if !p.methods.iter().any(|m| m.name == method) {
        let names: Vec<&str> = p.methods.iter().map(|m| m.name).collect();
        return Err(format!(
            "probe {probe} has no method `{method}`: one of {}",
            names.join(", ")
        ));
    }
    Ok((probe.to_string(), method.to_string()))
}

/// Mount tracefs if needed, resolve layouts, load the object and attach every probe it can.
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    crate::privileges::check_can_load()?;
    raise_memlock_limit();
    let tracefs_root = tracefs::ensure_mounted()?;
    let kernel = KernelFacts::gather(&tracefs_root);

    let mut config = Config::DEFAULT;
    config.filter = opts.filter;
    // Batch wakeups: the reader is woken at a quarter full and polls every DRAIN_EVERY.
    config.wakeup_bytes = opts.ring_bytes / 4;
    let layout_errors = resolve_layouts(&tracefs_root, &mut config);
    // Raw and BTF-typed programs read `err` as an argument where the record has it.
    config.retransmit_err_arg = u32::from(config.retransmit_skb.err != FIELD_ABSENT);
    let offsets = KernelOffsets::from_btf();
    if opts.filter.netns != 0 && offsets.netns.is_none() {
        bail!("--netns needs the network namespace offsets from kernel BTF (/sys/kernel/btf/vmlinux), which this kernel does not provide");
    }
    offsets.apply(&mut config);
    release_free_memory();

    if EBPF_OBJECT.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP and holds no eBPF object");
    }
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", opts.ring_bytes)
        .map_max_entries("SOCKETS", opts.max_sockets)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object into the kernel")?;
    start_kernel_log(&mut ebpf);
    // The loader parsed the kernel's BTF (megabytes of it) and freed it; hand that memory
    // back before the planner parses it again for the fentry/fexit programs, so the
    // parses (ours for offsets, the loader's, the planner's) do not add up in the peak RSS.
    release_free_memory();

    let hooks = plan_all(&mut ebpf, &opts.forced, layout_errors, &offsets, &kernel)?;
    release_free_memory();
    write_sources(&mut ebpf, &hooks)?;
    offsets.log();
    Ok(Loaded {
        ebpf,
        hooks,
        kernel,
    })
}

/// Attach every probe with the first method that works (only the forced one where
/// `--probe-method` names it). Fails only when a required probe cannot attach.
fn plan_all(
    ebpf: &mut Ebpf,
    forced: &[(String, String)],
    layout_errors: HashMap<&'static str, String>,
    offsets: &KernelOffsets,
    kernel: &KernelFacts,
) -> Result<Vec<HookStatus>> {
    let mut planner = Planner {
        btf: AyaBtf::from_sys_fs().ok(),
        ebpf,
        layout_errors,
        offsets,
        kernel,
        attached_programs: HashSet::new(),
        hooks: Vec::new(),
    };
    for probe in &PROBES {
        let forced = forced
            .iter()
            .find(|(p, _)| p == probe.name)
            .map(|(_, m)| m.as_str());
        let status = planner.plan(probe, forced);
        if probe.required && !status.attached {
            let why: Vec<String> = status.skipped.iter().map(|s| s.reason.clone()).collect();
            bail!(
                "tcptrace cannot run without {}: {}",
                probe.name,
                why.join("; ")
            );
        }
        planner.hooks.push(status);
    }
    Ok(planner.hooks)
}

/// Resolve every tracepoint's layout into the config; the error of each one that failed.
fn resolve_layouts(root: &Path, config: &mut Config) -> HashMap<&'static str, String> {
    let mut errors = HashMap::new();
    for tp in &TRACEPOINTS {
        match resolve_layout(root, tp) {
            Ok(layout) => *(tp.slot)(config) = layout,
            Err(e) => {
                errors.insert(tp.event, format!("{e:#}"));
            }
        }
    }
    errors
}

struct Planner<'a> {
    btf: Option<AyaBtf>,
    ebpf: &'a mut Ebpf,
    layout_errors: HashMap<&'static str, String>,
    offsets: &'a KernelOffsets,
    kernel: &'a KernelFacts,
    /// (program, function) pairs attached so far: methods of two probes may share one.
    attached_programs: HashSet<(&'static str, Option<&'static str>)>,
    hooks: Vec<HookStatus>,
}

impl Planner<'_> {
    /// Try the probe's methods in order (only `forced` if given); the first that
    /// attaches wins.
    fn plan(&mut self, probe: &'static Probe, forced: Option<&str>) -> HookStatus {
        let mut status = HookStatus {
            hook: probe.name,
            method: "none",
            attached: false,
            purpose: probe.purpose,
            prog_fds: Vec::new(),
            skipped: Vec::new(),
        };
        for method in probe.methods {
            if forced.is_some_and(|f| f != method.name) {
                status.skipped.push(Skipped {
                    method: method.name,
                    stage: Stage::Requirement,
                    reason: "not chosen (--probe-method)".into(),
                });
                continue;
            }
            match self.try_method(method) {
                Ok(fds) => {
                    status.method = method.name;
                    status.attached = true;
                    status.prog_fds = fds;
                    return status;
                }
                Err(f) => status.skipped.push(Skipped {
                    method: method.name,
                    stage: f.stage,
                    reason: format!("{:#}", f.error),
                }),
            }
        }
        status
    }

    fn try_method(&mut self, method: &Method) -> Result<Vec<i32>, Failure> {
        self.check_requirements(method).map_err(|error| Failure {
            stage: Stage::Requirement,
            error,
        })?;
        let mut links = Vec::new();
        let mut fds = Vec::new();
        for a in method.attach {
            let key = (a.program(), a.function());
            if self.attached_programs.contains(&key) {
                continue;
            }
            match attach::attach(self.ebpf, self.btf.as_ref(), a) {
                Ok((link, fd)) => {
                    links.push((key, link));
                    fds.push(fd);
                }
                Err(mut f) => {
                    // All or nothing: take back what this method attached.
                    for (_, link) in links {
                        attach::detach(self.ebpf, link);
                    }
                    if f.stage == Stage::Attach
                        && matches!(a, Attach::Kprobe { .. })
                        && !self.kernel.kprobes
                    {
                        f.error = f.error.context(
                            "this kernel offers no kprobes (no kprobe PMU, no kprobe_events)",
                        );
                    }
                    return Err(f);
                }
            }
        }
        self.attached_programs
            .extend(links.into_iter().map(|(key, _)| key));
        Ok(fds)
    }

    fn check_requirements(&self, method: &Method) -> Result<()> {
        for a in method.attach {
            if let Attach::Tracepoint {
                category, event, ..
            } = a
            {
                if let Some(e) = self.layout_errors.get(event) {
                    bail!("tracepoint {category}:{event}: {e}");
                }
            }
        }
        for needed in method.derived_from {
            let (probe, wanted) = match needed.split_once('/') {
                Some((probe, method)) => (probe, Some(method)),
                None => (*needed, None),
            };
            let hook = self.hooks.iter().find(|h| h.hook == probe && h.attached);
            match (hook, wanted) {
                (None, _) => bail!("derived from {probe}, which is not attached"),
                (Some(h), Some(m)) if h.method != m => {
                    bail!("needs {probe} on {m}, and it is on {}", h.method)
                }
                _ => {}
            }
        }
        if !self.offsets.provide(method.reads) {
            bail!(
                "needs kernel BTF for the offsets of {}",
                method.reads.fields()
            );
        }
        Ok(())
    }
}

/// Tell the programs which method provides each piece of information.
fn write_sources(ebpf: &mut Ebpf, hooks: &[HookStatus]) -> Result<()> {
    let mut sources: Array<_, u32> = Array::try_from(
        ebpf.map_mut("SOURCES")
            .context("map SOURCES missing from the eBPF object")?,
    )?;
    for probe in &PROBES {
        let Some(slot) = probe.source_slot else {
            continue;
        };
        let hook = hooks.iter().find(|h| h.hook == probe.name && h.attached);
        let source = match hook.map(|h| h.method) {
            Some("socket_storage") if slot == SOURCE_TRACKING => TRACKING_SOCKET_STORAGE,
            Some("tracepoint") => Source::Tracepoint as u32,
            Some(_) => Source::Function as u32,
            None => Source::None as u32,
        };
        sources
            .set(slot, source, 0)
            .with_context(|| format!("writing the source of {}", probe.name))?;
    }
    Ok(())
}

fn resolve_layout(root: &Path, tp: &Tracepoint) -> Result<TpLayout> {
    let path = tracefs::format_path(root, tp.category, tp.event);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {}:{} not found ({})",
            tp.category,
            tp.event,
            path.display()
        )
    })?;
    let fields = tp_format::parse_fields(&text)?;
    tp_format::layout(&fields, &tp_format::wants(tp.carries, tp.extra)).with_context(|| {
        format!(
            "unsupported layout of {}:{} ({})",
            tp.category,
            tp.event,
            path.display()
        )
    })
}

/// Load every program of the table that is not loaded yet, without attaching: does the
/// verifier accept it on this kernel? For `tcptrace probes` and the tests.
pub fn verify_all(ebpf: &mut Ebpf) -> Vec<(&'static str, Result<(), String>)> {
    let btf = AyaBtf::from_sys_fs().ok();
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for probe in &PROBES {
        for method in probe.methods {
            for a in method.attach {
                if !seen.insert(a.program()) {
                    continue;
                }
                let r = attach::load(ebpf, btf.as_ref(), a).map_err(|e| format!("{e:#}"));
                results.push((a.program(), r));
            }
        }
    }
    results
}

/// How often the kernel skipped this program because another BPF program was already
/// running on the same CPU (its recursion protection): those invocations, their events
/// and their counts are missing. Read from the program fd's fdinfo (`recursion_misses`,
/// Linux 5.12+; `None` where the kernel does not report it).
pub fn missed_runs(prog_fd: i32) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{prog_fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs of every attached probe the kernel skipped and nothing handled: for a probe with
/// a main and a backup program, the main program's skipped runs less those the backup
/// recovered (the backup's own skips are of events the main program handled); for
/// others, every skipped run of its programs. `recovered` is indexed by `Guarded`.
pub fn missed_by_hook(hooks: &[HookStatus], recovered: &[u64]) -> Vec<(&'static str, u64)> {
    hooks
        .iter()
        .filter(|h| h.attached && !h.prog_fds.is_empty())
        .filter_map(|h| {
            let guarded = PROBES
                .iter()
                .find(|p| p.name == h.hook)
                .and_then(|p| p.guarded)
                .filter(|_| h.method == "tp_btf" || h.method == "raw_tracepoint");
            let missed = match guarded {
                Some(slot) => {
                    let main = missed_runs(h.prog_fds[0])?;
                    main.saturating_sub(recovered.get(slot as usize).copied().unwrap_or(0))
                }
                None => {
                    let runs: Option<Vec<u64>> =
                        h.prog_fds.iter().map(|fd| missed_runs(*fd)).collect();
                    runs?.iter().sum()
                }
            };
            Some((h.hook, missed))
        })
        .collect()
}

/// Return freed heap pages to the kernel (glibc keeps them otherwise; musl's allocator,
/// used by the static build of the container image, returns them by itself).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Raising it needs
/// CAP_SYS_RESOURCE; where that is missing, newer kernels do not need it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}

/// Forward the programs' rare diagnostics (map full, ...) to the agent's log.
fn start_kernel_log(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            tokio::spawn(async move {
                let Ok(mut fd) = crate::ring::watch(logger) else {
                    return;
                };
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!("eBPF diagnostics unavailable: {e}"),
    }
}

/// Log what was attached and what was not, one line per probe, with the reasons.
pub fn log_report(hooks: &[HookStatus]) {
    for h in hooks {
        let skipped: Vec<String> = h
            .skipped
            .iter()
            .map(|s| format!("{} ({}: {})", s.method, s.stage, s.reason))
            .collect();
        if h.attached {
            info!("attached {} ({}): {}", h.hook, h.method, h.purpose);
            if !skipped.is_empty() {
                info!("  {} skipped before that: {}", h.hook, skipped.join("; "));
            }
        } else {
            warn!(
                "not attached {} ({}): {}",
                h.hook,
                h.purpose,
                skipped.join("; ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake tracefs holding only the events named, with this kernel's recorded formats.
    fn fake_tracefs(events: &[(&str, &str, &str)]) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "tcptrace-fake-tracefs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (category, name, fixture) in events {
            // No recording: the tracepoint does not exist on that kernel.
            let Ok(text) = std::fs::read_to_string(format!(
                "{}/tests/formats/{fixture}",
                env!("CARGO_MANIFEST_DIR")
            )) else {
                continue;
            };
            let dir = root.join("events").join(category).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("format"), text).unwrap();
        }
        root
    }

    #[test]
    fn a_missing_tracepoint_is_named() {
        let root = fake_tracefs(&[]);
        let err = resolve_layout(&root, &TRACEPOINTS[0]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("tracepoint sock:inet_sock_set_state not found"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    /// A fake tracefs with every tracepoint tcptrace uses, as recorded on `series`.
    fn recorded_tracefs(series: &str) -> std::path::PathBuf {
        let files: Vec<(&str, &str, String)> = TRACEPOINTS
            .iter()
            .map(|tp| (tp.category, tp.event, format!("{series}-{}", tp.event)))
            .collect();
        let events: Vec<(&str, &str, &str)> =
            files.iter().map(|(c, e, f)| (*c, *e, f.as_str())).collect();
        fake_tracefs(&events)
    }

    /// Formats recorded on Debian's 5.10, 6.1 and 6.12 (`cargo xtask vm-test
    /// --record-formats`) and on the 6.18 development kernel.
    #[test]
    fn every_tracepoint_resolves_on_the_formats_of_every_kernel() {
        for series in ["5.10", "6.1", "6.12", "6.18"] {
            let root = recorded_tracefs(series);
            let mut config = Config::DEFAULT;
            let errors = resolve_layouts(&root, &mut config);
            // inet_sk_error_report came with 5.14: on 5.10 it is missing, and says so.
            let missing: Vec<&&str> = errors.keys().collect();
            let expected: Vec<&&str> = if series == "5.10" {
                vec![&"inet_sk_error_report"]
            } else {
                vec![]
            };
            assert_eq!(missing, expected, "{series}: {errors:?}");
            for (layout, skaddr) in [
                (config.set_state, 8),
                (config.retransmit_skb, 16),
                (config.retransmit_synack, 8),
                (config.receive_reset, 8),
                (config.destroy_sock, 8),
            ] {
                assert_eq!(layout.skaddr, skaddr, "{series}: {layout:?}");
            }
            // `err` came after 6.12; before it the tracepoint fires only for retransmits
            // that were sent.
            let has_err = config.retransmit_skb.err != tcptrace_common::FIELD_ABSENT;
            assert_eq!(has_err, series == "6.18", "{series}");
            assert_eq!(config.sys_exit_connect.err, 16, "{series}: ret");
            if series != "5.10" {
                assert_eq!(config.error_report.err, 8, "{series}: error");
            }
            assert_eq!(config.send_reset.skaddr, 16, "{series}: send_reset skaddr");
            let _ = std::fs::remove_dir_all(root);
        }
    }

    #[test]
    fn a_layout_that_is_not_understood_is_refused_with_the_file_named() {
        let root = fake_tracefs(&[("sock", "inet_sock_set_state", "6.18-tcp_destroy_sock")]);
        let msg = format!("{:#}", resolve_layout(&root, &TRACEPOINTS[0]).unwrap_err());
        assert!(
            msg.contains("unsupported layout of sock:inet_sock_set_state"),
            "{msg}"
        );
        assert!(msg.contains("`oldstate` is missing"), "{msg}");
        let _ = std::fs::remove_dir_all(root);
    }
}
