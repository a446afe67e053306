//! Checking, before anything is loaded, that the process may load eBPF programs.
use anyhow::{bail, Context as _, Result};

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// One field of this thread's /proc status, e.g. `CapEff` or `Seccomp` (both are
/// per thread).
fn status_field(name: &str) -> Result<String> {
    const STATUS: &str = "/proc/thread-self/status";
    let status = std::fs::read_to_string(STATUS).with_context(|| format!("reading {STATUS}"))?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .with_context(|| format!("no {name} line in {STATUS}"))?;
    Ok(value.trim().to_string())
}

/// The effective capability set of this thread (the agent's only one until it drops
/// them), from /proc/thread-self/status.
pub fn effective() -> Result<u64> {
    u64::from_str_radix(&status_field("CapEff")?, 16).context("parsing CapEff")
}

pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Loading tracepoint programs and ring buffers needs CAP_BPF and CAP_PERFMON
/// (kernel >= 5.8), or CAP_SYS_ADMIN which implies both, and bpf() and
/// perf_event_open() not filtered out by seccomp.
pub fn check_can_load() -> Result<()> {
    let caps = effective()?;
    if !(has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON))) {
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
        );
    }
    check_syscalls_reach_the_kernel()
}

/// With the capabilities held, bpf() and perf_event_open() can still be stopped before
/// the kernel sees them: the default seccomp profiles of podman and CRI-O refuse both to
/// a container without CAP_SYS_ADMIN, whatever else it holds. Each is asked something
/// the kernel rejects at once (bpf: the info of fd -1, EBADFD; perf_event_open: no
/// attribute, EFAULT); any other answer comes from a filter, and is reported as such
/// rather than as a map the kernel would not create.
fn check_syscalls_reach_the_kernel() -> Result<()> {
    let refused: Vec<(&str, std::io::Error)> = [
        ("bpf", bpf_info_of_no_fd(), libc::EBADFD),
        (
            "perf_event_open",
            perf_event_open_without_attr(),
            libc::EFAULT,
        ),
    ]
    .into_iter()
    .filter(|(_, err, expected)| err.raw_os_error() != Some(*expected))
    .map(|(name, err, _)| (name, err))
    .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let calls: Vec<String> = refused
        .iter()
        .map(|(name, _)| format!("{name}()"))
        .collect();
    let errors: Vec<String> = refused
        .iter()
        .map(|(name, err)| format!("{name}: {err}"))
        .collect();
    // Seccomp: 0 none, 1 strict, 2 filter.
    let by = if status_field("Seccomp").is_ok_and(|mode| mode == "2") {
        "a seccomp filter (the default profiles of podman and CRI-O refuse bpf and \
         perf_event_open without CAP_SYS_ADMIN). Run the container with \
         deploy/seccomp-tcptrace.json (podman: --security-opt \
         seccomp=deploy/seccomp-tcptrace.json; Kubernetes: seccompProfile Localhost, see \
         DEPLOY.md)"
    } else {
        "something other than seccomp (no filter on this process: a Linux security module?)"
    };
    bail!(
        "{} refused although the capabilities are held ({}): stopped by {by}",
        calls.join(" and "),
        errors.join("; ")
    )
}

/// bpf(BPF_OBJ_GET_INFO_BY_FD) on fd -1, a command that needs no privilege, and its
/// error: EBADFD when the call reached the command.
fn bpf_info_of_no_fd() -> std::io::Error {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // bpf_fd, info_len, info: an invalid fd and no buffer.
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(-1i32).to_ne_bytes());
    // SAFETY: bpf(2) with a correctly sized attribute block.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc == 0 {
        // Cannot happen for fd -1; taken as "reached the kernel".
        return std::io::Error::from_raw_os_error(libc::EBADFD);
    }
    std::io::Error::last_os_error()
}

/// perf_event_open() with no attribute, and its error: EFAULT when the kernel read it.
fn perf_event_open_without_attr() -> std::io::Error {
    // SAFETY: perf_event_open(2) with a null attribute pointer, which the kernel refuses
    // before doing anything.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::null::<u8>(),
            0,
            -1,
            -1,
            0,
        )
    };
    if rc >= 0 {
        // Cannot happen without an attribute; close what was opened all the same.
        // SAFETY: rc is a file descriptor this call returned.
        unsafe { libc::close(rc as i32) };
        return std::io::Error::from_raw_os_error(libc::EFAULT);
    }
    std::io::Error::last_os_error()
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
/// closed to us, EBADFD that it reached the command.
fn bpf_syscall_needs_capability() -> bool {
    bpf_info_of_no_fd().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Make `syscall` fail with EPERM on this thread from now on, as podman's default
    /// seccomp profile makes bpf and perf_event_open fail (a filter is per thread: it
    /// goes with the thread).
    fn filter_out(syscall: libc::c_long) {
        let insn = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let mut program = [
            // Load the syscall number (seccomp_data.nr, at offset 0).
            insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            insn(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                0,
                1,
                syscall as u32,
            ),
            insn(
                libc::BPF_RET | libc::BPF_K,
                0,
                0,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            insn(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: prctl with a valid filter program that outlives the call.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
        }
    }

    #[test]
    fn unfiltered_syscalls_reach_the_kernel() {
        assert_eq!(status_field("Seccomp").unwrap(), "0");
        check_syscalls_reach_the_kernel().unwrap();
    }

    #[test]
    fn a_filtered_syscall_is_blamed_on_seccomp() {
        for (syscall, name) in [
            (libc::SYS_bpf, "bpf"),
            (libc::SYS_perf_event_open, "perf_event_open"),
        ] {
            let error = std::thread::spawn(move || {
                filter_out(syscall);
                check_syscalls_reach_the_kernel().unwrap_err()
            })
            .join()
            .unwrap();
            assert_eq!(
                format!("{error:#}").split(" (the default").next().unwrap(),
                format!(
                    "{name}() refused although the capabilities are held ({name}: Operation \
                     not permitted (os error 1)): stopped by a seccomp filter"
                )
            );
        }
    }
}
