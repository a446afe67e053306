//! Registering the ring buffers' file descriptors with tokio.
use std::os::fd::AsRawFd;

use anyhow::Result;
use tokio::io::{unix::AsyncFd, Interest};

/// Wrap a ring buffer (ours or aya-log's) so tokio wakes us when it has records.
pub fn watch<T: AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: aya's RingBuf and EbpfLogger own their map fd and keep it open, unchanged,
    // until they are dropped, which is when the AsyncFd that owns them is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering ring buffer with the event loop: {}", e))
}
