//! The kernel side of the agent: which probes to attach and how (`probes`, `plan`,
//! `attach`), what the programs read (tracepoint `layouts` from tracefs `format` files,
//! struct `offsets` from `btf`, the kernel's BTF read once per load), loading the object, and what comes back from it
//! (`counters`, the event `ring`). `load` does it all; `privileges` checks what it needs
//! and drops it after; `report` is `tcptrace probes`.
//!
//! Each probe lists its attach methods in order of preference: a hook on the kernel
//! function itself (fentry/fexit, then kprobe) or a tracepoint with a guard of its own
//! (BTF-typed, then raw) where the kernel allows it, else the same information from
//! classic tracepoints. The planner attaches the first method that works, records why
//! each one before it was skipped, and keeps going; only the state tracepoint is
//! indispensable.
pub mod attach;
pub mod btf;
pub mod counters;
pub mod drop_reasons;
pub mod format;
pub mod kallsyms;
pub mod layouts;
pub mod listeners;
pub mod memory;
pub mod offsets;
pub mod plan;
pub mod privileges;
pub mod probes;
pub mod report;
pub mod ring;
pub mod tracefs;

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aya::{Ebpf, EbpfLoader};
use log::warn;
use serde::Serialize;
use tcptrace_common::{Config, Filter, FIELD_ABSENT};

pub use plan::{log_report, missed_by_hook, HookStatus};
pub use probes::parse_forced;

/// The eBPF object built by build.rs, embedded in the binary.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
pub const DEFAULT_MAX_SOCKETS: u32 = 65536;

/// The ring buffer must be a power of two pages: 4 KiB .. 1 GiB.
pub fn check_ring_bytes(n: u64) -> Result<u32, String> {
    if !(4096..=1 << 30).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{n} must be a power of two between 4096 and 1073741824"
        ));
    }
    Ok(n as u32)
}

pub fn check_max_sockets(n: u64) -> Result<u32, String> {
    if !(64..=16_777_216).contains(&n) {
        return Err(format!("{n} must be between 64 and 16777216"));
    }
    Ok(n as u32)
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
    /// Also load every program not attached, for the verifier's verdict (`probes`):
    /// done here, while the kernel's BTF is still parsed.
    pub verify_all: bool,
}

impl LoadOptions {
    /// Default ring and socket-map sizes, no filter: what `probes` and `doctor` load.
    pub fn defaults(forced: Vec<(String, String)>) -> LoadOptions {
        LoadOptions {
            ring_bytes: DEFAULT_RING_BYTES,
            max_sockets: DEFAULT_MAX_SOCKETS,
            filter: Filter::ANY,
            forced,
            verify_all: false,
        }
    }
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub kernel: KernelFacts,
    /// Every program's verifier verdict, where `verify_all` asked for them.
    pub programs: Vec<(&'static str, Result<(), String>)>,
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
            btf: Path::new(offsets::VMLINUX_BTF).exists(),
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

/// Mount tracefs if needed, resolve layouts, load the object and attach every probe it can.
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    privileges::check_can_load()?;
    memory::log_stage("start");
    raise_memlock_limit();
    map_large_allocations();
    let tracefs_root = tracefs::ensure_mounted()?;
    let kernel = KernelFacts::gather(&tracefs_root);

    let mut config = Config::DEFAULT;
    config.filter = opts.filter;
    // Batch wakeups: the reader is woken at a quarter full and polls every DRAIN_EVERY.
    config.wakeup_bytes = opts.ring_bytes / 4;
    let layout_errors = layouts::resolve_layouts(&tracefs_root, &mut config);
    // Raw and BTF-typed programs read `err` as an argument where the record has it.
    config.retransmit_err_arg = u32::from(config.retransmit_skb.err != FIELD_ABSENT);
    memory::log_stage("after layouts");
    let mut loader = loader_without_btf();
    memory::log_stage("after the loader");
    let (mut offsets, btf) = offsets::read_kernel_btf(&probes::btf_targets());
    memory::log_stage("after BTF (offsets + target ids)");
    if opts.filter.netns != 0 && offsets.netns.is_none() {
        bail!("--netns needs the network namespace offsets from kernel BTF (/sys/kernel/btf/vmlinux), which this kernel does not provide");
    }
    offsets.drop_reasons = drop_reasons::resolve(&tracefs_root, &mut config);
    offsets.rcv_state_process = syn_consumer(&tracefs_root)
        .map_err(|e| warn!("SYN-time listen overflows cannot be counted: {e:#}"))
        .ok();
    offsets.apply(&mut config);
    if EBPF_OBJECT.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP and holds no eBPF object");
    }
    let mut ebpf = loader
        .override_global("CONFIG", &config, true)
        .map_max_entries("EVENTS", opts.ring_bytes)
        .map_max_entries("SOCKETS", opts.max_sockets)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object into the kernel")?;
    memory::release_static(EBPF_OBJECT);
    release_free_memory();
    memory::log_stage("after object load");
    start_kernel_log(&mut ebpf);
    let hooks = plan::plan_all(
        &mut ebpf,
        btf.as_ref(),
        &opts.forced,
        layout_errors,
        &offsets,
        &kernel,
    )?;
    memory::log_stage("after attach");
    let programs = if opts.verify_all {
        plan::verify_all(&mut ebpf, btf.as_ref())
    } else {
        Vec::new()
    };
    // The programs are loaded: neither is needed any longer.
    drop(loader);
    drop(btf);
    release_free_memory();
    memory::log_stage("after drop+trim");
    memory::log_peak();
    plan::write_sources(&mut ebpf, &hooks)?;
    offsets.log();
    Ok(Loaded {
        ebpf,
        hooks,
        kernel,
        programs,
    })
}

/// A loader that has not parsed the kernel's BTF, and does not need it: the object has
/// no CO-RE relocations (a test checks), and attaching needs only the ids of a few
/// types (`offsets::read_kernel_btf`). aya 0.14's `EbpfLoader::new()` reads and parses
/// /sys/kernel/btf/vmlinux all the same, a 19 MB peak for Linux 6.18's 5.5 MB, and no
/// constructor skips it; but it keeps no parse when the file does not open. So it is
/// built while no file can be opened: a soft RLIMIT_NOFILE of 0 fails every open with
/// EMFILE, for the microseconds `new()` takes, and the limit is put back at once
/// (a soft limit up to the hard one needs no privilege). The load runs before any
/// other thread of ours could open a file.
fn loader_without_btf() -> EbpfLoader<'static> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return EbpfLoader::new();
        }
        let closed = libc::rlimit {
            rlim_cur: 0,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &closed) != 0 {
            return EbpfLoader::new();
        }
        let loader = EbpfLoader::new();
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            // Nothing could open a file after this: better to stop here than later.
            panic!(
                "cannot restore RLIMIT_NOFILE: {}",
                std::io::Error::last_os_error()
            );
        }
        loader
    }
}

/// Where `tcp_rcv_state_process` lies, for the consume_skb programs, which also need the
/// caller's address the tracepoint passes since Linux 6.3.
fn syn_consumer(tracefs_root: &Path) -> Result<(u64, u64)> {
    let format = tracefs::format_path(tracefs_root, "skb", "consume_skb");
    let text = std::fs::read_to_string(&format)
        .with_context(|| format!("reading {}", format.display()))?;
    if !format::parse_fields(&text)?.contains_key("location") {
        bail!("skb:consume_skb passes no caller address before Linux 6.3");
    }
    kallsyms::function_range("tcp_rcv_state_process")
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

/// Serve every allocation of 128 KiB or more with its own mapping, returned to the
/// kernel when freed. glibc otherwise raises that threshold to the size of each mapped
/// block freed (megabytes, after a BTF parse), so the next parse's vectors grow inside
/// the heap, copied at each doubling, and the heap keeps the peak: `trace` peaked at
/// 31.5 MB RSS instead of 24.7 MB. musl maps allocations that large always.
fn map_large_allocations() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
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
                let Ok(mut fd) = ring::watch(logger) else {
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

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _};

    use super::*;

    /// The loader gets no kernel BTF (`loader_without_btf`), so it relocates nothing:
    /// a program that read a kernel struct through CO-RE (`bpf_core_read!`,
    /// `preserve_access_index`) would be loaded with the compiler's offsets. Such a
    /// program needs the loader given a parse of the kernel's BTF again.
    #[test]
    fn the_object_has_no_core_relocations() {
        if EBPF_OBJECT.is_empty() {
            eprintln!("skipped: built with AYA_BUILD_SKIP, no eBPF object embedded");
            return;
        }
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded object");
        let Some(ext) = file.section_by_name(".BTF.ext") else {
            return;
        };
        let ext = ext.data().unwrap();
        let u32_at = |o: usize| u32::from_le_bytes(ext[o..o + 4].try_into().unwrap());
        // struct btf_ext_header: magic, version, flags, hdr_len, then offset and length
        // of func_info, line_info and (when hdr_len reaches it) core_relo.
        let core_relo_len = if u32_at(4) >= 32 { u32_at(28) } else { 0 };
        assert_eq!(core_relo_len, 0, "the eBPF object has CO-RE relocations");
    }
}
