//! The agent's own memory: resident now and at its peak (VmRSS and VmHWM of
//! /proc/self/status), logged at each stage of a load so that what costs memory shows
//! (`--log-level debug`).

/// Resident and peak resident memory, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

/// This process's memory now; None where /proc is not mounted.
pub fn usage() -> Option<Usage> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_status(status: &str) -> Option<Usage> {
    let field = |name: &str| -> Option<u64> {
        let value = status.lines().find_map(|l| l.strip_prefix(name))?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some(Usage {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Log the memory at a stage of loading (debug level: reading /proc costs a syscall
/// or three, so not when nobody looks).
pub fn log_stage(stage: &str) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    if let Some(u) = usage() {
        log::debug!(
            "memory {stage}: rss {} KiB, peak {} KiB",
            u.rss_kib,
            u.peak_kib
        );
    }
}

/// Say what loading cost at its peak, at info level (what `run` logs by default).
pub fn log_peak() {
    if let Some(u) = usage() {
        log::info!(
            "loaded: peak resident memory {:.1} MiB, {:.1} MiB now",
            u.peak_kib as f64 / 1024.0,
            u.rss_kib as f64 / 1024.0
        );
    }
}

/// Unmap the resident pages of bytes embedded in the binary that nothing reads again
/// (the eBPF object once loaded: aya keeps copies of what it needs). They are
/// file-backed and never written, so a later read would page them in from the binary
/// again, unchanged; until then they no longer count in RSS. Only whole pages are
/// released: those at either end may hold other read-only data.
pub fn release_static(bytes: &'static [u8]) {
    // SAFETY: sysconf only reads a system constant.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start {
        // SAFETY: [start, end) lies within a read-only static that is never written:
        // MADV_DONTNEED only drops its pages, whose contents stay those of the file.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_peak_from_a_status_file() {
        let status = "Name:\ttcptrace\nVmHWM:\t   13200 kB\nVmRSS:\t   12100 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Usage {
                rss_kib: 12100,
                peak_kib: 13200
            })
        );
        assert_eq!(parse_status("Name:\ttcptrace\n"), None);
    }

    #[test]
    fn this_process_has_a_peak_at_least_its_rss() {
        let u = usage().unwrap();
        assert!(u.peak_kib >= u.rss_kib && u.rss_kib > 0, "{u:?}");
    }
}
