//! Finding (and if needed mounting) tracefs, where tracepoint formats and ids live.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The tracefs root (the directory holding `events/`). Mounts tracefs at
/// /sys/kernel/tracing when no mount is found: it is not mounted at boot on every host,
/// and a DaemonSet pod sees only what the node mounted.
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(root) = find() {
        return Ok(root);
    }
    // Mounted, but closed to this process: tracefs belongs to root (mode 0700), and no
    // capability tcptrace holds opens it. Mounting another would not help.
    if let Err(e) = std::fs::read_dir(TRACEFS) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            bail!(
                "cannot read {TRACEFS}: {e}. tracefs belongs to root (mode 0700): run tcptrace \
                 as uid 0 (in Kubernetes, runAsUser: 0)"
            );
        }
    }
    mount_tracefs()?;
    match find() {
        Some(root) => Ok(root),
        None => bail!("mounted tracefs at {TRACEFS} but {TRACEFS}/events is still missing"),
    }
}

/// The tracefs root if one is mounted already.
pub fn find() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

fn mount_tracefs() -> Result<()> {
    let target = CString::new(TRACEFS)?;
    let fstype = CString::new("tracefs")?;
    let source = CString::new("nodev")?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {err}. Mount it first \
             (`mount -t tracefs nodev {TRACEFS}`), grant CAP_SYS_ADMIN, or in Kubernetes mount \
             the node's {TRACEFS} into the pod"
        );
    }
    Ok(())
}

/// Path of a tracepoint's format file.
pub fn format_path(root: &Path, category: &str, name: &str) -> PathBuf {
    root.join("events").join(category).join(name).join("format")
}
