//! The event ring buffer on the agent side: waking up when it has records, and draining
//! it into decoded events.
//!
//! `Events` reads the kernel's BPF ring buffer itself rather than with aya's `RingBuf`,
//! which maps the data pages twice in a row, so that a record that wraps around the end
//! reads as one slice. The kernel maps every page of a ring buffer mapping as it is
//! made, so that second copy was resident from the start: 4 MiB more RSS for the default
//! ring, twice `--ring-bytes`. Here the data is mapped once and the rare record that
//! wraps is copied out.
use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Map, MapData},
    Ebpf,
};
use tokio::io::{unix::AsyncFd, Interest};

use crate::event::TcpEvent;

/// A record's header: its length, and these two flags (`BPF_RINGBUF_*` in the kernel).
const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;

/// Wrap a ring buffer (ours or aya-log's) so tokio wakes us when it has records.
pub fn watch<T: AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: Events and aya-log's EbpfLogger own their map fd and keep it open,
    // unchanged, until they are dropped, which is when the AsyncFd that owns them is.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering ring buffer with the event loop: {e}"))
}

/// The `EVENTS` ring buffer, ready to be awaited.
pub fn take_events(ebpf: &mut Ebpf) -> Result<AsyncFd<Events>> {
    let map = ebpf
        .take_map("EVENTS")
        .context("EVENTS map missing from the eBPF object")?;
    let Map::RingBuf(map) = map else {
        bail!("EVENTS is not a ring buffer");
    };
    watch(Events::new(map)?)
}

/// Hand every record, decoded, to `each` until the ring is empty or `each` returns
/// false. Returns how many records did not decode (a layout mismatch: never expected).
pub fn drain(ring: &mut Events, mut each: impl FnMut(&TcpEvent) -> bool) -> u64 {
    let mut malformed = 0;
    while let Some(event) = ring.next_record(TcpEvent::decode) {
        let Some(event) = event else {
            malformed += 1;
            continue;
        };
        if !each(&event) {
            break;
        }
    }
    malformed
}

/// A BPF ring buffer's consumer: its position (a page, shared read-write with the
/// kernel) and the producer's position and the data (mapped read-only, once).
pub struct Events {
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    /// Where the data starts in the producer mapping: one page in (asked for once;
    /// `sysconf` per record was a twentieth of the tracer's time).
    page: usize,
    /// Bytes of data: a power of two, a whole number of pages.
    size: usize,
    /// Where the next record's header is, counted from the start (never wrapped).
    pos: usize,
    /// A record that wraps around the end of the data, made whole.
    wrapped: Vec<u8>,
}

impl Events {
    fn new(map: MapData) -> Result<Events> {
        let size = map.info()?.max_entries() as usize;
        let page = page_size();
        let fd = map.fd().as_fd().as_raw_fd();
        if !size.is_power_of_two() || !size.is_multiple_of(page) {
            bail!("the ring buffer's size ({size}) is not a power of two of pages");
        }
        let consumer = Mapping::new(fd, page, 0, libc::PROT_READ | libc::PROT_WRITE)
            .context("mapping the ring buffer's consumer page")?;
        let producer = Mapping::new(fd, page + size, page, libc::PROT_READ)
            .context("mapping the ring buffer's data")?;
        let pos = consumer.position().load(Ordering::Acquire);
        Ok(Events {
            map,
            consumer,
            producer,
            page,
            size,
            pos,
            wrapped: Vec::new(),
        })
    }

    /// `read` applied to the next record, which is then released to the kernel; None
    /// when no committed record is left.
    fn next_record<T>(&mut self, mut read: impl FnMut(&[u8]) -> T) -> Option<T> {
        loop {
            if self.pos == self.producer.position().load(Ordering::Acquire) {
                // Either this sees a record committed meanwhile, or its producer sees the
                // position just published and wakes the reader (as aya and libbpf do).
                fence(Ordering::SeqCst);
                if self.pos == self.producer.position().load(Ordering::Acquire) {
                    return None;
                }
            }
            // The kernel clears BUSY with a fully ordered exchange once the record is
            // written: pair it with Acquire so that the record is seen whole.
            let header = self.header().load(Ordering::Acquire);
            if header & BUSY != 0 {
                return None; // still being written: the next drain gets it
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            let value = (header & DISCARD == 0).then(|| read(self.record(len)));
            self.pos += (HEADER + len).next_multiple_of(8);
            // Release: the kernel reuses the space only after this store.
            self.consumer.position().store(self.pos, Ordering::Release);
            if value.is_some() {
                return value;
            }
        }
    }

    fn data(&self) -> &[u8] {
        // SAFETY: the producer mapping is one page of positions then `size` bytes of
        // data, mapped read-only for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.producer.ptr.as_ptr().add(self.page), self.size) }
    }

    fn header(&self) -> &AtomicU32 {
        let at = self.pos & (self.size - 1);
        // SAFETY: headers are 8-byte aligned and the size a multiple of 8, so a header
        // lies whole within the data; the kernel writes it atomically.
        unsafe { &*self.data()[at..at + 4].as_ptr().cast::<AtomicU32>() }
    }

    /// The record after the current header, copied out only where it wraps.
    fn record(&mut self, len: usize) -> &[u8] {
        let start = (self.pos + HEADER) & (self.size - 1);
        let len = len.min(self.size);
        if start + len <= self.size {
            // SAFETY: as `data`; the borrow ends before `self` changes.
            return unsafe {
                std::slice::from_raw_parts(self.producer.ptr.as_ptr().add(self.page + start), len)
            };
        }
        let head = self.size - start;
        let mut whole = std::mem::take(&mut self.wrapped);
        whole.clear();
        whole.extend_from_slice(&self.data()[start..]);
        whole.extend_from_slice(&self.data()[..len - head]);
        self.wrapped = whole;
        &self.wrapped
    }
}

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// A shared mapping of a ring buffer's pages, unmapped when dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, offset: usize, prot: i32) -> Result<Mapping> {
        let offset = libc::off_t::try_from(offset)?;
        // SAFETY: a fresh mapping of the map's fd, owned by the returned value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let ptr = NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(Mapping { ptr, len })
    }

    /// The position at the start of the mapping (the consumer's or the producer's).
    fn position(&self) -> &AtomicUsize {
        // SAFETY: the mapping starts page-aligned with the kernel's position word.
        unsafe { &*self.ptr.as_ptr().cast::<AtomicUsize>() }
    }
}

// SAFETY: the mapping is shared memory read and written through atomics and plain
// reads, from whichever thread holds the `Events`; nothing ties it to a thread.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}
