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
