//! Checking, before anything is loaded, that the process may load eBPF programs.
use anyhow::{bail, Context as _, Result};

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
pub fn effective() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(line.trim(), 16).context("parsing CapEff")
}

pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Loading tracepoint programs and ring buffers needs CAP_BPF and CAP_PERFMON
/// (kernel >= 5.8), or CAP_SYS_ADMIN which implies both.
pub fn check_can_load() -> Result<()> {
    let caps = effective()?;
    if has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .iter()
        .filter(|(c, _)| !has(caps, *c))
        .map(|(_, n)| *n)
        .collect();
    bail!(
        "missing capability {}: tcptrace needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to \
         load its eBPF programs. Run it as root, or grant them (e.g. \
         `setpriv --inh-caps +bpf,+perfmon --ambient-caps +bpf,+perfmon tcptrace ...`)",
        missing.join(" and ")
    )
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Once the programs are attached nothing else needs a capability: map reads, the ring
/// buffers and the perf links work through file descriptors already held, the listen
/// socket is bound, sock_diag and /proc need none. Drop every capability of every set,
/// and forbid regaining any through exec. Call before any other thread exists.
///
/// One exception, found on Debian's 5.10 kernel: before Linux 5.19, a set
/// `kernel.unprivileged_bpf_disabled` (the default of many distributions) makes the
/// bpf() syscall refuse *every* command without CAP_BPF, map reads included. There the
/// agent keeps CAP_BPF alone, says so, and drops the rest.
pub fn drop_all() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
    }
    let bpf = 1u64 << CAP_BPF;
    let had_bpf = has(effective()?, CAP_BPF);
    // Nothing effective, CAP_BPF still permitted so that it can come back if needed.
    set_caps(0, if had_bpf { bpf } else { 0 })?;
    if had_bpf && bpf_syscall_needs_capability() {
        set_caps(bpf, bpf)?;
        log::warn!(
            "this kernel refuses every bpf() call without CAP_BPF (kernel.unprivileged_bpf_disabled \
             before Linux 5.19): keeping CAP_BPF, and only it, to read the counters"
        );
        return Ok(());
    }
    set_caps(0, 0)?;
    let left = effective()?;
    if left != 0 {
        bail!("capabilities still effective after dropping them: {left:#x}");
    }
    log::info!("dropped every capability; programs stay attached through their file descriptors");
    Ok(())
}

/// Set this thread's effective and permitted sets (inheritable emptied).
fn set_caps(effective: u64, permitted: u64) -> Result<()> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: 0,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are valid capset(2) arguments for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("capset: dropping capabilities");
    }
    Ok(())
}

/// Does bpf() refuse commands on existing objects without a capability? Asked with a
/// command that needs none (object info of fd -1): EPERM means the syscall itself is
/// closed to us, EBADF that it reached the command.
fn bpf_syscall_needs_capability() -> bool {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // bpf_fd, info_len, info: an invalid fd and no buffer.
    let attr = [0u8; 16];
    let mut attr = attr;
    attr[..4].copy_from_slice(&(-1i32).to_ne_bytes());
    // SAFETY: bpf(2) with a zeroed, correctly sized attribute block.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
