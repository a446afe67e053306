//! One `/metrics` render for every scrape waiting on it. Rendering reads every kernel
//! map on a blocking thread; without sharing, N concurrent scrapes are N renders (and N
//! pages in memory). Here at most one render runs at a time, and every request that
//! arrives while it runs shares the next one — started after they arrived, so no
//! answer is older than its request — handed out as the same `Bytes`.
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The render's result, shared by every waiter.
type Slot<T> = watch::Receiver<Option<T>>;

pub struct SingleFlight<T> {
    render: Arc<dyn Fn() -> T + Send + Sync>,
    state: Arc<Mutex<State<T>>>,
}

struct State<T> {
    running: bool,
    /// Requests that arrived while a render ran wait here for the next one.
    queued: Option<(watch::Sender<Option<T>>, Slot<T>)>,
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// `render` runs on a blocking thread, one call at a time.
    pub fn new(render: impl Fn() -> T + Send + Sync + 'static) -> SingleFlight<T> {
        SingleFlight {
            render: Arc::new(render),
            state: Arc::new(Mutex::new(State {
                running: false,
                queued: None,
            })),
        }
    }

    /// A result rendered after this call began; `None` if the render panicked.
    pub async fn get(&self) -> Option<T> {
        let mut slot = self.join();
        let page = slot.wait_for(Option::is_some).await.ok()?;
        page.clone()
    }

    /// Start a render now if none runs, else join (or open) the queue for the next one.
    fn join(&self) -> Slot<T> {
        let mut state = lock(&self.state);
        if !state.running {
            state.running = true;
            let (tx, rx) = watch::channel(None);
            self.spawn(tx);
            return rx;
        }
        state
            .queued
            .get_or_insert_with(|| watch::channel(None))
            .1
            .clone()
    }

    /// The render runs to its end whatever its waiters do (a dropped scrape cannot
    /// cancel it halfway), then starts the queued one, if any.
    fn spawn(&self, tx: watch::Sender<Option<T>>) {
        let (render, state) = (self.render.clone(), self.state.clone());
        tokio::spawn(async move {
            let mut tx = tx;
            loop {
                let r = render.clone();
                if let Ok(page) = tokio::task::spawn_blocking(move || r()).await {
                    tx.send_replace(Some(page));
                }
                // Dropping `tx` unsent tells waiters the render failed.
                let mut s = lock(&state);
                match s.queued.take() {
                    Some((next, _)) => tx = next,
                    None => {
                        s.running = false;
                        return;
                    }
                }
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };

    use bytes::Bytes;

    use super::*;

    /// A render that numbers itself and waits for the test to let it finish.
    fn gated() -> (SingleFlight<Bytes>, Arc<AtomicUsize>, mpsc::Sender<()>) {
        let started = Arc::new(AtomicUsize::new(0));
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let count = started.clone();
        let flight = SingleFlight::new(move || {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            lock(&gate).recv().unwrap();
            Bytes::from(format!("render {n}"))
        });
        (flight, started, release)
    }

    /// Yield to the spawned tasks until `done` holds (the renders run on other threads).
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "waited for {what}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    fn queued(flight: &SingleFlight<Bytes>) -> usize {
        lock(&flight.state)
            .queued
            .as_ref()
            .map_or(0, |(tx, _)| tx.receiver_count() - 1)
    }

    #[tokio::test]
    async fn scrapes_during_a_render_share_the_next_one() {
        let (flight, started, release) = gated();
        let flight = Arc::new(flight);
        let get = |f: &Arc<SingleFlight<Bytes>>| {
            let f = f.clone();
            tokio::spawn(async move { f.get().await })
        };
        let first = get(&flight);
        until("the first render", || started.load(Ordering::SeqCst) == 1).await;
        let later: Vec<_> = (0..3).map(|_| get(&flight)).collect();
        until("three queued scrapes", || queued(&flight) == 3).await;

        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), "render 1");
        // The three arrived after render 1 began: they get render 2, never render 1.
        until("the second render", || started.load(Ordering::SeqCst) == 2).await;
        release.send(()).unwrap();
        let mut pages = Vec::new();
        for l in later {
            pages.push(l.await.unwrap().unwrap());
        }
        assert!(pages.iter().all(|p| p == "render 2"), "{pages:?}");
        assert!(
            pages.iter().all(|p| p.as_ptr() == pages[0].as_ptr()),
            "one page shared, not copied"
        );
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "four scrapes, two renders"
        );
    }

    #[tokio::test]
    async fn a_scrape_that_gives_up_does_not_stop_the_render() {
        let (flight, started, release) = gated();
        let flight = Arc::new(flight);
        let f = flight.clone();
        let impatient = tokio::spawn(async move { f.get().await });
        until("the render", || started.load(Ordering::SeqCst) == 1).await;
        impatient.abort();
        let _ = impatient.await;
        release.send(()).unwrap();
        until("the render to end", || !lock(&flight.state).running).await;
        // The next scrape starts a render of its own.
        release.send(()).unwrap();
        assert_eq!(flight.get().await.unwrap(), "render 2");
    }

    #[tokio::test]
    async fn a_render_that_panics_fails_its_waiters_not_the_next() {
        let calls = Arc::new(AtomicUsize::new(0));
        let count = calls.clone();
        let flight = SingleFlight::new(move || {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first render fails");
            }
            Bytes::from_static(b"ok")
        });
        assert_eq!(flight.get().await, None);
        assert_eq!(flight.get().await.unwrap(), "ok");
    }
}
