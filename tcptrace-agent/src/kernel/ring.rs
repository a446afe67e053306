//! The event ring buffer on the agent side: waking up when it has records, and draining
//! it into decoded events.
use std::os::fd::AsRawFd;

use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use tokio::io::{unix::AsyncFd, Interest};

use crate::event::TcpEvent;

/// Wrap a ring buffer (ours or aya-log's) so tokio wakes us when it has records.
pub fn watch<T: AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: aya's RingBuf and EbpfLogger own their map fd and keep it open, unchanged,
    // until they are dropped, which is when the AsyncFd that owns them is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering ring buffer with the event loop: {e}"))
}

/// The `EVENTS` ring buffer, ready to be awaited.
pub fn take_events(ebpf: &mut Ebpf) -> Result<AsyncFd<RingBuf<MapData>>> {
    let map = ebpf
        .take_map("EVENTS")
        .context("EVENTS map missing from the eBPF object")?;
    watch(RingBuf::try_from(map)?)
}

/// Hand every record, decoded, to `each` until the ring is empty or `each` returns
/// false. Returns how many records did not decode (a layout mismatch: never expected).
pub fn drain(ring: &mut RingBuf<MapData>, mut each: impl FnMut(&TcpEvent) -> bool) -> u64 {
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        let Some(event) = TcpEvent::decode(&item) else {
            malformed += 1;
            continue;
        };
        drop(item);
        if !each(&event) {
            break;
        }
    }
    malformed
}
