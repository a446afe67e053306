//! The connections one listener serves, and who goes when they are too many. Each
//! connection's stream records when it last moved a byte (`Tracked`); at the cap, a new
//! connection evicts the one that has made no progress for the longest: a client that
//! stopped reading its answer, or trickles its request, goes before a scraper that
//! reads, however many connections the stalled ones open. Under a flood nothing may be
//! stalled yet, so what a connection is doing comes first (`Standing::rank`): request
//! heads go before answers, and a connection waiting for its render goes last.
use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

/// A connection that moved no byte for this long is stalled, whatever it is doing: it is
/// the first to go. A scraper reading its answer never pauses that long.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

/// When a connection last moved a byte, and what it waits for.
pub struct Progress {
    clock: Instant,
    /// Microseconds since `clock` of the last byte read or written (or of the accept).
    last_us: AtomicU64,
    /// A whole request head arrived: the connection is being answered.
    answering: AtomicBool,
    /// Requests whose answer is being made: waiting for a render is our delay, not the
    /// client's.
    busy: AtomicU32,
}

impl Progress {
    pub fn new(clock: Instant) -> Progress {
        let p = Progress {
            clock,
            last_us: AtomicU64::new(0),
            answering: AtomicBool::new(false),
            busy: AtomicU32::new(0),
        };
        p.touch();
        p
    }

    pub fn touch(&self) {
        self.last_us
            .fetch_max(now_us(self.clock), Ordering::Relaxed);
    }

    /// A request arrived: the connection waits on the server until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.answering.store(true, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn standing(&self) -> Standing {
        Standing {
            busy: self.busy.load(Ordering::Relaxed) > 0,
            answering: self.answering.load(Ordering::Relaxed),
            last_us: self.last_us.load(Ordering::Relaxed),
        }
    }
}

fn now_us(clock: Instant) -> u64 {
    clock.elapsed().as_micros() as u64
}

pub struct Busy(Arc<Progress>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The answer is ready: from now on only the client's reading moves it.
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What eviction looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub busy: bool,
    pub answering: bool,
    pub last_us: u64,
}

impl Standing {
    /// Who goes first: a connection stalled for `STALLED_AFTER` (a client that stopped
    /// reading, a silent one); then one still sending its request (a flood, a trickle:
    /// nothing has been spent on it yet); then one reading its answer; last, one whose
    /// answer is still being rendered, however long that takes.
    fn rank(&self, now_us: u64) -> u8 {
        let stalled = now_us.saturating_sub(self.last_us) >= STALLED_AFTER.as_micros() as u64;
        match (self.busy, stalled, self.answering) {
            (true, _, _) => 3,
            (false, true, _) => 0,
            (false, false, false) => 1,
            (false, false, true) => 2,
        }
    }
}

/// The connection to evict at `now_us`: the first by rank, and within a rank the one
/// idle for the longest.
pub fn victim(standings: impl IntoIterator<Item = Standing>, now_us: u64) -> Option<usize> {
    standings
        .into_iter()
        .enumerate()
        .min_by_key(|(_, s)| (s.rank(now_us), s.last_us))
        .map(|(i, _)| i)
}

/// A stream that records its progress: every read or write that moved a byte.
pub struct Tracked<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, progress: Arc<Progress>) -> Tracked<S> {
        Tracked { inner, progress }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Tracked<S> {
    fn note(&self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.progress.touch();
        }
    }
}

/// The connections of one listener, at most `max`.
pub struct Slots {
    max: usize,
    clock: Instant,
    live: Mutex<Vec<Live>>,
    next_id: AtomicU64,
}

struct Live {
    id: u64,
    progress: Arc<Progress>,
    evicted: Arc<Notify>,
}

/// One admitted connection: its progress, the signal that it was evicted, and its
/// place, given back when this drops.
pub struct Slot {
    pub progress: Arc<Progress>,
    pub evicted: Arc<Notify>,
    id: u64,
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            clock: Instant::now(),
            live: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Admit a new connection, evicting one first if every slot is taken.
    pub fn admit(self: &Arc<Self>) -> Slot {
        let mut live = self.live();
        if live.len() >= self.max {
            let standings = live.iter().map(|c| c.progress.standing());
            if let Some(i) = victim(standings, now_us(self.clock)) {
                // notify_one keeps the signal even if the task is not waiting yet.
                live.swap_remove(i).evicted.notify_one();
            }
        }
        let slot = Slot {
            progress: Arc::new(Progress::new(self.clock)),
            evicted: Arc::new(Notify::new()),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            slots: self.clone(),
        };
        live.push(Live {
            id: slot.id,
            progress: slot.progress.clone(),
            evicted: slot.evicted.clone(),
        });
        slot
    }

    /// Connections being served now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live().len()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.live().retain(|c| c.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        task::Waker,
        time::{Duration, Instant},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const NOW: u64 = 100_000_000;

    /// A connection that last moved a byte `idle_ms` ago, in one of three states.
    fn head(idle_ms: u64) -> Standing {
        Standing {
            busy: false,
            answering: false,
            last_us: NOW - idle_ms * 1000,
        }
    }

    fn answer(idle_ms: u64) -> Standing {
        Standing {
            answering: true,
            ..head(idle_ms)
        }
    }

    fn render(idle_ms: u64) -> Standing {
        Standing {
            busy: true,
            ..answer(idle_ms)
        }
    }

    #[test]
    fn the_stalled_go_first_then_request_heads_then_readers_never_a_render() {
        // A reader that moved bytes 5 ms ago, a trickled request head, a client that
        // stopped reading 3 s ago, a render running for 5 s.
        let all = [answer(5), head(150), answer(3_000), render(5_000)];
        assert_eq!(victim(all, NOW), Some(2));
        // Nothing stalled: a request head goes before a reader idle for longer.
        assert_eq!(victim([answer(300), head(100)], NOW), Some(1));
        // A stalled reader before a flood of fresh connections.
        assert_eq!(victim([head(1), head(2), answer(1_500)], NOW), Some(2));
        // Within a rank, the longest idle.
        assert_eq!(victim([head(100), head(400), head(200)], NOW), Some(1));
        // Only renders in flight: the one idle longest.
        assert_eq!(victim([render(20), render(70)], NOW), Some(1));
        assert_eq!(victim([], NOW), None);
    }

    /// A progress clock started 10 ms ago, so that any touch records a non-zero time.
    fn progress() -> Arc<Progress> {
        let clock = Instant::now()
            .checked_sub(Duration::from_millis(10))
            .unwrap();
        Arc::new(Progress::new(clock))
    }

    /// Forget the last progress; true if something touched it since.
    fn moved(p: &Progress) -> bool {
        p.last_us.swap(0, Ordering::Relaxed) != 0
    }

    #[tokio::test]
    async fn tracked_streams_count_bytes_moved_not_attempts() {
        let (mut client, server) = tokio::io::duplex(64);
        let p = progress();
        let mut tracked = Tracked::new(server, p.clone());
        moved(&p);

        tracked.write_all(&[1; 64]).await.unwrap();
        assert!(moved(&p), "a write that moved bytes");
        // The client reads nothing: the pipe is full and the write cannot move.
        let mut cx = Context::from_waker(Waker::noop());
        let blocked = Pin::new(&mut tracked).poll_write(&mut cx, &[2; 8]);
        assert!(blocked.is_pending());
        assert!(!moved(&p), "a blocked write is no progress");

        let mut buf = [0u8; 16];
        let nothing = Pin::new(&mut tracked).poll_read(&mut cx, &mut ReadBuf::new(&mut buf));
        assert!(nothing.is_pending());
        assert!(!moved(&p), "a read that found nothing is no progress");
        client.write_all(b"GET").await.unwrap();
        assert_eq!(tracked.read(&mut buf).await.unwrap(), 3);
        assert!(moved(&p), "a read that got bytes");

        assert!(!p.standing().answering);
        let busy = p.busy();
        assert!(p.standing().busy && p.standing().answering);
        drop(busy);
        assert!(!p.standing().busy && p.standing().answering);
        assert!(moved(&p), "an answer ready is a fresh start for the reader");
    }

    /// Whether the eviction signal was given (a stored permit completes at once).
    fn was_evicted(slot: &Slot) -> bool {
        let notified = slot.evicted.notified();
        tokio::pin!(notified);
        notified
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    use std::future::Future as _;

    #[test]
    fn at_the_cap_a_newcomer_evicts_the_stalest() {
        let slots = Slots::new(2);
        let reader = slots.admit();
        let stalled = slots.admit();
        // `reader` connected first but moved bytes since; `stalled` did not. (Set, not
        // `touch()`ed: within the clock's first microsecond both would read 0 or 1.)
        stalled.progress.last_us.store(1, Ordering::Relaxed);
        reader.progress.last_us.store(2, Ordering::Relaxed);
        let newcomer = slots.admit();
        assert!(was_evicted(&stalled));
        assert!(!was_evicted(&reader));
        assert_eq!(slots.len(), 2);
        drop(stalled); // its task ends: nothing more to give back
        assert_eq!(slots.len(), 2);

        // A connection waiting for its render is not a stall.
        let _busy = newcomer.progress.busy();
        newcomer.progress.last_us.store(0, Ordering::Relaxed);
        let _last = slots.admit();
        assert!(was_evicted(&reader));
        assert!(!was_evicted(&newcomer));
        drop(reader);
        drop(newcomer);
        assert_eq!(slots.len(), 1);
    }
}
