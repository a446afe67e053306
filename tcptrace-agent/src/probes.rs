//! The hook table and the loop that loads and attaches the eBPF programs.
//!
//! Each hook names its tracepoint and the fields its program reads. Layouts come from
//! this kernel's tracefs format files; a hook whose tracepoint is missing or whose layout
//! is not understood is skipped with its reason (or, when the agent cannot work without
//! it, refused with a clear error), and the agent reports what it attached.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use aya::{programs::TracePoint, Ebpf, EbpfLoader};
use log::{info, warn};
use serde::Serialize;
use tcptrace_common::{config::OFFSET_UNKNOWN, Config, Filter, TpLayout};

use crate::{
    btf::Btf,
    tp_format::{self, Want},
    tracefs,
};

/// The eBPF object built by build.rs, embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

pub struct Hook {
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    /// Without it tcptrace has nothing to show: refuse to start.
    pub required: bool,
    /// Fields beyond the shared endpoint fields.
    pub extra: &'static [Want],
    pub endpoints: bool,
    pub slot: fn(&mut Config) -> &mut TpLayout,
    pub purpose: &'static str,
}

pub const HOOKS: [Hook; 6] = [
    Hook {
        program: "inet_sock_set_state",
        category: "sock",
        event: "inet_sock_set_state",
        required: true,
        extra: &tp_format::SET_STATE_EXTRA,
        endpoints: true,
        slot: |c| &mut c.set_state,
        purpose: "state changes, handshakes, socket ownership",
    },
    Hook {
        program: "tcp_retransmit_skb",
        category: "tcp",
        event: "tcp_retransmit_skb",
        required: false,
        extra: &tp_format::RETRANSMIT_SKB_EXTRA,
        endpoints: true,
        slot: |c| &mut c.retransmit_skb,
        purpose: "data and SYN retransmits",
    },
    Hook {
        program: "tcp_retransmit_synack",
        category: "tcp",
        event: "tcp_retransmit_synack",
        required: false,
        extra: &[],
        endpoints: true,
        slot: |c| &mut c.retransmit_synack,
        purpose: "SYN-ACK retransmits",
    },
    Hook {
        program: "tcp_receive_reset",
        category: "tcp",
        event: "tcp_receive_reset",
        required: false,
        extra: &tp_format::SKADDR_ONLY,
        endpoints: false,
        slot: |c| &mut c.receive_reset,
        purpose: "refused/reset handshakes when BTF is missing",
    },
    Hook {
        program: "tcp_send_reset",
        category: "tcp",
        event: "tcp_send_reset",
        required: false,
        extra: &[],
        endpoints: false,
        slot: |c| &mut c.send_reset,
        purpose: "RSTs sent",
    },
    Hook {
        program: "tcp_destroy_sock",
        category: "tcp",
        event: "tcp_destroy_sock",
        required: false,
        extra: &tp_format::SKADDR_ONLY,
        endpoints: false,
        slot: |c| &mut c.destroy_sock,
        purpose: "socket-map cleanup for sockets that skip CLOSE",
    },
];

/// What happened to one hook on this kernel.
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub hook: &'static str,
    pub method: &'static str,
    pub attached: bool,
    /// The loaded program's fd, for reading its kernel statistics.
    #[serde(skip)]
    pub prog_fd: Option<i32>,
    /// Why it is not attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How often readers drain the ring buffer without being woken: below a quarter full
/// the kernel does not wake them, which saves a wakeup per event under load.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Sizes and filters chosen on the command line.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub ring_bytes: u32,
    pub max_sockets: u32,
    pub filter: Filter,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
}

/// Mount tracefs if needed, resolve layouts, load the object and attach every hook it can.
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    crate::privileges::check_can_load()?;
    raise_memlock_limit();
    let tracefs_root = tracefs::ensure_mounted()?;

    let mut config = Config::DEFAULT;
    config.filter = opts.filter;
    // Batch wakeups: the reader is woken at a quarter full and polls every DRAIN_EVERY.
    config.wakeup_bytes = opts.ring_bytes / 4;
    let mut hooks = Vec::new();
    let mut usable = Vec::new();
    for hook in &HOOKS {
        match resolve_layout(&tracefs_root, hook) {
            Ok(layout) => {
                *(hook.slot)(&mut config) = layout;
                usable.push(hook);
            }
            Err(e) if hook.required => {
                return Err(e.context(format!(
                    "tcptrace cannot run without tracepoint {}:{}",
                    hook.category, hook.event
                )))
            }
            Err(e) => hooks.push(skipped(hook, format!("{e:#}"))),
        }
    }
    let offsets = KernelOffsets::from_btf();
    config.sk_err_offset = offsets.sk_err.unwrap_or(OFFSET_UNKNOWN);
    config.srtt_offset = offsets.srtt.unwrap_or(OFFSET_UNKNOWN);
    config.skb_segs_offset = offsets.skb_segs.unwrap_or(OFFSET_UNKNOWN);

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

    for hook in usable {
        let status = match attach(&mut ebpf, hook) {
            Ok(prog_fd) => HookStatus {
                hook: hook.program,
                method: "tracepoint",
                attached: true,
                prog_fd: Some(prog_fd),
                reason: None,
            },
            Err(e) if hook.required => return Err(e),
            Err(e) => skipped(hook, format!("{e:#}")),
        };
        hooks.push(status);
    }
    hooks.sort_by_key(|h| HOOKS.iter().position(|k| k.program == h.hook));
    offsets.log();
    Ok(Loaded { ebpf, hooks })
}

fn skipped(hook: &Hook, reason: String) -> HookStatus {
    HookStatus {
        hook: hook.program,
        method: "tracepoint",
        attached: false,
        prog_fd: None,
        reason: Some(reason),
    }
}

fn resolve_layout(root: &Path, hook: &Hook) -> Result<TpLayout> {
    let path = tracefs::format_path(root, hook.category, hook.event);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {}:{} not found ({})",
            hook.category,
            hook.event,
            path.display()
        )
    })?;
    let fields = tp_format::parse_fields(&text)?;
    let wants: Vec<Want> = if hook.endpoints {
        tp_format::ENDPOINT_FIELDS
            .iter()
            .chain(hook.extra)
            .copied()
            .collect()
    } else {
        hook.extra.to_vec()
    };
    tp_format::layout(&fields, &wants).with_context(|| {
        format!(
            "unsupported layout of {}:{} ({})",
            hook.category,
            hook.event,
            path.display()
        )
    })
}

/// Load and attach one hook's program; returns the program's fd.
fn attach(ebpf: &mut Ebpf, hook: &Hook) -> Result<i32> {
    let program: &mut TracePoint = ebpf
        .program_mut(hook.program)
        .with_context(|| format!("program {} missing from the eBPF object", hook.program))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the verifier rejected {}", hook.program))?;
    program.attach(hook.category, hook.event).with_context(|| {
        format!(
            "attaching {} to {}:{}",
            hook.program, hook.category, hook.event
        )
    })?;
    Ok(program.fd()?.as_fd().as_raw_fd())
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

/// Missed runs of every attached hook.
pub fn missed_by_hook(hooks: &[HookStatus]) -> Vec<(&'static str, u64)> {
    hooks
        .iter()
        .filter_map(|h| Some((h.hook, missed_runs(h.prog_fd?)?)))
        .collect()
}

/// Offsets of the two socket fields the programs read directly, from the kernel's BTF.
struct KernelOffsets {
    /// `struct sock.sk_err`: why a handshake failed (ECONNREFUSED, ETIMEDOUT, ...).
    sk_err: Option<u32>,
    /// `struct tcp_sock.srtt_us`: the SYN-ACK round trip of a server handshake.
    srtt: Option<u32>,
    /// `TCP_SKB_CB(skb)->tcp_gso_segs`: segments per retransmitted skb.
    skb_segs: Option<u32>,
}

impl KernelOffsets {
    fn from_btf() -> KernelOffsets {
        const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
        match Btf::from_file(VMLINUX) {
            Ok(btf) => KernelOffsets {
                sk_err: btf.member_offset("sock", "sk_err").ok(),
                srtt: btf.member_offset("tcp_sock", "srtt_us").ok(),
                skb_segs: btf
                    .member_offset("sk_buff", "cb")
                    .and_then(|cb| Ok(cb + btf.member_offset("tcp_skb_cb", "tcp_gso_segs")?))
                    .ok(),
            },
            Err(e) => {
                warn!("no kernel BTF ({e:#})");
                KernelOffsets {
                    sk_err: None,
                    srtt: None,
                    skb_segs: None,
                }
            }
        }
    }

    fn log(&self) {
        match self.sk_err {
            Some(off) => info!("BTF: sock.sk_err at {off}: failed handshakes carry their errno"),
            None => warn!("sock.sk_err unknown: failed handshakes are classified only as refused/reset (RST seen) or other"),
        }
        match self.srtt {
            Some(off) => info!("BTF: tcp_sock.srtt_us at {off}: server handshakes include the SYN-ACK round trip"),
            None => warn!("tcp_sock.srtt_us unknown: server handshake latency covers only the final-ACK processing"),
        }
        match self.skb_segs {
            Some(off) => info!("BTF: tcp_gso_segs at sk_buff+{off}: retransmits count segments like TcpRetransSegs"),
            None => warn!("tcp_skb_cb unknown: retransmits count skbs, which under GSO is fewer than TcpRetransSegs"),
        }
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

fn purpose(program: &str) -> &'static str {
    HOOKS
        .iter()
        .find(|h| h.program == program)
        .map_or("", |h| h.purpose)
}

/// Log what was attached and what was not, one line per hook.
pub fn log_report(hooks: &[HookStatus]) {
    for h in hooks {
        match &h.reason {
            None => info!("attached {} ({}): {}", h.hook, h.method, purpose(h.hook)),
            Some(why) => warn!("not attached {}: {}", h.hook, why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake tracefs holding only the events named, with this kernel's recorded formats.
    fn fake_tracefs(events: &[(&str, &str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "tcptrace-fake-tracefs-{}-{}",
            std::process::id(),
            events.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (category, name, fixture) in events {
            let dir = root.join("events").join(category).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let text = std::fs::read_to_string(format!(
                "{}/tests/formats/{fixture}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            std::fs::write(dir.join("format"), text).unwrap();
        }
        root
    }

    #[test]
    fn a_missing_tracepoint_is_named() {
        let root = fake_tracefs(&[]);
        let err = resolve_layout(&root, &HOOKS[0]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("tracepoint sock:inet_sock_set_state not found"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn every_hook_resolves_on_recorded_6_18_formats() {
        let root = fake_tracefs(&[
            ("sock", "inet_sock_set_state", "6.18-inet_sock_set_state"),
            ("tcp", "tcp_retransmit_skb", "6.18-tcp_retransmit_skb"),
            ("tcp", "tcp_retransmit_synack", "6.18-tcp_retransmit_synack"),
            ("tcp", "tcp_receive_reset", "6.18-tcp_receive_reset"),
            ("tcp", "tcp_send_reset", "6.18-tcp_send_reset"),
            ("tcp", "tcp_destroy_sock", "6.18-tcp_destroy_sock"),
        ]);
        for hook in &HOOKS {
            let layout = resolve_layout(&root, hook).unwrap();
            let skaddr = match hook.event {
                "tcp_retransmit_skb" => 16,
                "tcp_send_reset" => tcptrace_common::FIELD_ABSENT, // counted, nothing read
                _ => 8,
            };
            assert_eq!(layout.skaddr, skaddr, "{}", hook.event);
        }
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_layout_that_is_not_understood_is_refused_with_the_file_named() {
        let root = fake_tracefs(&[("sock", "inet_sock_set_state", "6.18-tcp_destroy_sock")]);
        let msg = format!("{:#}", resolve_layout(&root, &HOOKS[0]).unwrap_err());
        assert!(
            msg.contains("unsupported layout of sock:inet_sock_set_state"),
            "{msg}"
        );
        assert!(msg.contains("`oldstate` is missing"), "{msg}");
        let _ = std::fs::remove_dir_all(root);
    }
}
