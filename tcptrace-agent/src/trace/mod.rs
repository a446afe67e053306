//! `tcptrace trace`: print every event as it happens, then a summary.
pub mod filter;
pub mod render;
use std::{
    io::{self, Write},
    time::Duration,
};

use anyhow::Result;
use tcptrace_common::Stat;
use tokio::signal::unix::{signal, SignalKind};

use render::Renderer;

use crate::{
    event::{clock::Clock, names::KINDS, TcpEvent},
    k8s::cgroup::CgroupIndex,
    kernel::{self, counters::KernelCounters, privileges, ring, LoadOptions},
};

pub struct TraceOptions {
    pub load: LoadOptions,
    pub json: bool,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
}

/// What was seen, for the closing summary.
#[derive(Default)]
struct Tally {
    printed: u64,
    /// Events printed, by `names::KINDS` index.
    by_kind: [u64; KINDS.len()],
    malformed: u64,
    stdout_closed: bool,
}

pub async fn run(opts: TraceOptions) -> Result<()> {
    // Handle signals from the start: Ctrl-C during loading must still end cleanly, with
    // the summary, rather than kill the process with the default action.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut loaded = kernel::load(&opts.load)?;
    kernel::log_report(&loaded.hooks);
    let mut ring = ring::take_events(&mut loaded.ebpf)?;
    let stats = KernelCounters::take(&mut loaded.ebpf)?;
    privileges::drop_all()?;
    let mut printer = Printer {
        json: opts.json,
        renderer: Renderer::new(Clock::new()),
        cgroups: CgroupIndex::new(),
        batch: Vec::with_capacity(BATCH_BYTES),
    };
    let mut out = io::stdout().lock();
    if !opts.json {
        writeln!(out, "{}", render::TEXT_HEADER)?;
        out.flush()?;
    }
    let mut tally = Tally::default();
    // Announce readiness only now that everything is in place (the tests wait for it).
    let attached = loaded.hooks.iter().filter(|h| h.attached).count();
    log::info!(
        "tracing: {attached} of {} hooks attached",
        loaded.hooks.len()
    );
    kernel::memory::log_stage("tracing");

    let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(kernel::DRAIN_EVERY);

    while !done(&tally, opts.count) {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), &opts, &mut printer, &mut out, &mut tally);
                guard.clear_ready();
            }
            _ = poll.tick() => drain(ring.get_mut(), &opts, &mut printer, &mut out, &mut tally),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline, if opts.duration.is_some() => break,
        }
    }
    // Whatever the kernel produced before we stopped is still reported.
    drain(ring.get_mut(), &opts, &mut printer, &mut out, &mut tally);
    let missed: u64 = kernel::missed_by_hook(&loaded.hooks, &stats.recovered())
        .iter()
        .map(|(_, n)| n)
        .sum();
    drop(loaded); // detach every program before the summary
    print_summary(&tally, &stats, missed);
    Ok(())
}

fn done(tally: &Tally, count: Option<u64>) -> bool {
    tally.stdout_closed || count.is_some_and(|c| tally.printed >= c)
}

/// How events are written: text or JSON, and owners' cgroups (JSON); drained events
/// are rendered into `batch` and written `BATCH_BYTES` at a time.
struct Printer {
    json: bool,
    renderer: Renderer,
    cgroups: CgroupIndex,
    batch: Vec<u8>,
}

/// Rendered events are written once about this much has piled up, and at the end of
/// each drain: few writes under load, and a buffer that stays this size however much a
/// drain holds (a full 4 MiB ring renders to megabytes of text).
const BATCH_BYTES: usize = 64 << 10;

fn drain(
    ring: &mut ring::Events,
    opts: &TraceOptions,
    printer: &mut Printer,
    out: &mut impl Write,
    tally: &mut Tally,
) {
    printer.cgroups.new_batch();
    if !done(tally, opts.count) {
        tally.malformed += ring::drain(ring, |event| {
            render_event(event, printer);
            tally.add(event);
            if printer.batch.len() >= BATCH_BYTES {
                write_batch(printer, out, tally);
            }
            !done(tally, opts.count)
        });
    }
    write_batch(printer, out, tally);
}

/// Write what is rendered; a reader that went away (`| head`) ends the trace quietly,
/// like any well-behaved filter.
fn write_batch(printer: &mut Printer, out: &mut impl Write, tally: &mut Tally) {
    if out
        .write_all(&printer.batch)
        .and_then(|()| out.flush())
        .is_err()
    {
        tally.stdout_closed = true;
    }
    printer.batch.clear();
}

fn render_event(e: &TcpEvent, printer: &mut Printer) {
    if printer.json {
        let workload = e
            .owner
            .as_ref()
            .filter(|o| o.cgroup_id != 0)
            .and_then(|o| printer.cgroups.lookup(o.cgroup_id));
        printer.renderer.json(&mut printer.batch, e, workload);
    } else {
        printer.renderer.text(&mut printer.batch, e);
    }
}

impl Tally {
    fn add(&mut self, e: &TcpEvent) {
        self.printed += 1;
        if let Some(i) = KINDS.iter().position(|k| k.kind == e.kind()) {
            self.by_kind[i] += 1;
        }
    }
}

fn print_summary(t: &Tally, stats: &KernelCounters, missed: u64) {
    let lost = stats.stat(Stat::EventsLost);
    let filtered = stats.stat(Stat::EventsFiltered);
    let untracked = stats.stat(Stat::SocketMapFull);
    let by_kind: Vec<String> = KINDS
        .iter()
        .zip(t.by_kind)
        .map(|(k, n)| format!("{n} {}", k.counted))
        .collect();
    let mut line = format!(
        "tcptrace: {} events printed ({}); {lost} lost (ring buffer full); {filtered} \
         filtered in the kernel",
        t.printed,
        by_kind.join(", ")
    );
    if untracked > 0 {
        line.push_str(&format!(
            "; {untracked} sockets untracked (socket map full)"
        ));
    }
    if missed > 0 {
        line.push_str(&format!(
            "; {missed} hook runs skipped by the kernel (another BPF program was running on that CPU)"
        ));
    }
    if t.malformed > 0 {
        line.push_str(&format!("; {} malformed records", t.malformed));
    }
    if lost > 0 {
        line.push_str(". Raise --ring-bytes or narrow the filters to lose fewer");
    }
    eprintln!("{line}");
}
