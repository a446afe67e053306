//! `tcptrace run`: the long-running agent (the DaemonSet's entrypoint). Keeps the
//! programs attached, drains the ring buffer and serves `/metrics`, `/healthz` and
//! `/readyz` until SIGTERM or SIGINT.
pub mod budget;
pub mod connections;
pub mod drops;
pub mod exposition;
pub mod http;
pub mod listen_queues;
pub mod metrics;
pub mod settings;
pub mod workloads;
pub mod worst_case;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, TryLockError,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use log::info;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use http::{single_flight::SingleFlight, Response, StatusCode};
use metrics::Metrics;
use workloads::{RemoteLabel, WorkloadMetrics};

use crate::{
    k8s::pod_names,
    kernel::{
        self, counters::KernelCounters, listeners::ListenerTable, privileges, ring, LoadOptions,
    },
};

pub struct RunOptions {
    pub listen: SocketAddr,
    /// `--health-listen`: a second listener for /healthz and /readyz only.
    pub health_listen: Option<SocketAddr>,
    pub load: LoadOptions,
    /// `--labels workload`: per-workload series, with these settings.
    pub labels: Option<crate::exporter::workloads::LabelOptions>,
}

/// The ring buffer counts as drained when the drain loop checked in this recently.
const READY_WITHIN: Duration = Duration::from_secs(5);

struct Health {
    started: Instant,
    /// Milliseconds since `started` of the drain loop's last pass.
    drained_at_ms: AtomicU64,
}

impl Health {
    fn mark_drained(&self) {
        self.drained_at_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_drained(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(
            self.drained_at_ms.load(Ordering::Relaxed),
        ))
    }
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // Handle signals from the start: a SIGTERM during loading must still detach cleanly
    // rather than kill the process with the default action.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Take the ports before touching the kernel: a port in use fails with nothing loaded.
    let listener = bind(opts.listen, &http::Limits::MAIN)?;
    let health_listener = opts
        .health_listen
        .map(|addr| bind(addr, &http::Limits::HEALTH))
        .transpose()?;
    // Check the name source before touching the kernel too; start it once privileges
    // are dropped.
    let name_source = opts
        .labels
        .as_ref()
        .map(|l| pod_names::prepare(&l.names, matches!(l.remote, RemoteLabel::Peer(_))))
        .transpose()?;
    let mut loaded = kernel::load(&opts.load)?;
    kernel::log_report(&loaded.hooks);
    let mut ring = ring::take_events(&mut loaded.ebpf)?;
    let metrics = Arc::new(Metrics::new(
        KernelCounters::take(&mut loaded.ebpf)?,
        loaded.hooks.clone(),
        opts.labels
            .clone()
            .zip(name_source.as_ref())
            .map(|(l, source)| WorkloadMetrics::new(l, source.names.clone(), source.peers.clone())),
        // The agent's own listeners are bound by now: Owners notes them.
        listen_queues::Owners::new(
            ListenerTable::take(&mut loaded.ebpf)
                .map_err(|e| log::warn!("listeners' owners unknown (comm=\"unknown\"): {e:#}"))
                .ok(),
        ),
    ));
    privileges::drop_all()?;
    if let Some(source) = name_source {
        source.start();
    }
    let health = Arc::new(Health {
        started: Instant::now(),
        drained_at_ms: AtomicU64::new(0),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let pages = Arc::new(Pages::new(metrics.clone(), health.clone()));
    let mut servers = vec![tokio::spawn(http::serve(
        listener,
        Arc::new(Routes::main(pages.clone())),
        http::Limits::MAIN,
        shutdown_rx.clone(),
    ))];
    info!(
        "serving http://{}/metrics (also /healthz, /readyz)",
        opts.listen
    );
    if let (Some(listener), Some(addr)) = (health_listener, opts.health_listen) {
        servers.push(tokio::spawn(http::serve(
            listener,
            Arc::new(Routes::health(pages)),
            http::Limits::HEALTH,
            shutdown_rx,
        )));
        info!("serving http://{addr}/healthz and /readyz");
    }

    kernel::memory::log_stage("serving");
    let mut tick = tokio::time::interval(kernel::DRAIN_EVERY);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                drain_counting(guard.get_inner_mut(), &metrics, &health);
                guard.clear_ready();
            }
            _ = tick.tick() => drain_counting(ring.get_mut(), &metrics, &health),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    drop(ring);
    drop(loaded);
    info!("stopped; every program detached");
    Ok(())
}

/// The events `run` asks the kernel for: the kinds its per-workload series count, and
/// none without `--labels` (every metric then comes from in-kernel counters). The
/// programs check this before building an event, which is most of their cost.
pub fn event_filter(workload_labels: bool) -> tcptrace_common::Filter {
    let kinds = if workload_labels {
        WorkloadMetrics::KINDS_READ
            .iter()
            .fold(0, |bits, kind| bits | kind.bit())
    } else {
        tcptrace_common::config::NO_EVENTS
    };
    tcptrace_common::Filter {
        kinds,
        ..tcptrace_common::Filter::ANY
    }
}

/// The ring buffer `run` asks for: the configured size with `--labels`; without, one
/// page, since no event reaches it (`event_filter`) and a ring buffer's mapping is
/// resident in full, its data twice (8 MiB of RSS for the default 4 MiB).
pub fn ring_bytes(configured: u32, workload_labels: bool) -> u32 {
    if workload_labels {
        return configured;
    }
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(page).unwrap_or(4096)
}

/// Read every waiting event, count it as delivered (and by workload where asked), and
/// note that the ring is drained.
fn drain_counting(ring: &mut ring::Events, metrics: &Metrics, health: &Health) {
    let delivered = &metrics.agent.events_delivered;
    let mut workloads = match metrics.workloads.as_ref().map(Mutex::try_lock) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(TryLockError::Poisoned(p))) => Some(p.into_inner()),
        // A /metrics render is reading the series. This thread also serves /healthz:
        // rather than wait for the render, leave the events in the ring buffer (what it
        // is for) until the next pass, at most one tick away.
        Some(Err(TryLockError::WouldBlock)) => return,
    };
    if let Some(w) = workloads.as_mut() {
        w.new_batch();
    }
    ring::drain(ring, |event| {
        delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = workloads.as_mut() {
            w.record(event);
        }
        true
    });
    health.mark_drained();
}

fn bind(addr: SocketAddr, limits: &http::Limits) -> Result<TcpListener> {
    http::bind(addr, limits).with_context(|| format!("cannot listen on {addr}"))
}

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What both listeners answer from.
struct Pages {
    /// Concurrent scrapes share one render (see `single_flight`).
    metrics: SingleFlight<Option<Bytes>>,
    health: Arc<Health>,
}

impl Pages {
    fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Pages {
        let render = move || match metrics.render() {
            Ok(text) => Some(Bytes::from(text)),
            Err(e) => {
                log::error!("rendering /metrics: {e}");
                None
            }
        };
        Pages {
            metrics: SingleFlight::new(render),
            health,
        }
    }

    async fn metrics(&self) -> Response {
        match self.metrics.get().await.flatten() {
            Some(body) => Response {
                status: StatusCode::OK,
                content_type: METRICS_CONTENT_TYPE,
                body,
            },
            None => Response::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering metrics failed; see the agent's log\n",
            ),
        }
    }

    fn ready(&self) -> Response {
        let since = self.health.since_drained();
        if since <= READY_WITHIN {
            return Response::text(StatusCode::OK, "ready\n");
        }
        Response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: ring buffer not drained for {}s\n",
                since.as_secs()
            ),
        )
    }
}

/// One listener's paths: `--listen` serves /metrics and the probes, `--health-listen`
/// only the probes, so that a full /metrics port cannot fail them.
struct Routes {
    pages: Arc<Pages>,
    metrics: bool,
}

impl Routes {
    fn main(pages: Arc<Pages>) -> Routes {
        Routes {
            pages,
            metrics: true,
        }
    }

    fn health(pages: Arc<Pages>) -> Routes {
        Routes {
            pages,
            metrics: false,
        }
    }

    /// What to try instead of a path not served.
    fn hint(&self) -> &'static str {
        if self.metrics {
            "/metrics, /healthz or /readyz"
        } else {
            "/healthz or /readyz (the health port serves no /metrics)"
        }
    }
}

impl http::Routes for Routes {
    async fn get(&self, path: &str) -> Response {
        match path {
            "/metrics" if self.metrics => self.pages.metrics().await,
            "/healthz" => Response::text(StatusCode::OK, "ok\n"),
            "/readyz" => self.pages.ready(),
            "/" => Response::text(StatusCode::OK, format!("tcptrace: try {}\n", self.hint())),
            _ => Response::text(
                StatusCode::NOT_FOUND,
                format!("not found: try {}\n", self.hint()),
            ),
        }
    }
}
