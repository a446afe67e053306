//! Micro-benchmarks of the agent's hot userspace paths, each next to a baseline measured
//! in the same run (these machines are noisy: compare ratios, not absolute numbers).
//! Run with `cargo xtask bench micro` (or `cargo bench -p tcptrace-agent --bench micro`).
use std::{collections::HashMap, hint::black_box, net::SocketAddr, time::Instant};

use tcptrace_agent::{
    event::{clock::Clock, Close, Owner, TcpEvent, What},
    exporter::exposition,
    trace::render::Renderer,
};
use tcptrace_common::{
    event::ClosedBy, Event, EventKind, HandshakeSide, RetransmitKind, TcpState, AF_INET,
};

/// Median seconds per call of `f` over `rounds` rounds of `iters` calls.
fn time_per_call(rounds: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    let mut per = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        per.push(start.elapsed().as_secs_f64() / iters as f64);
    }
    per.sort_by(|a, b| a.total_cmp(b));
    per[per.len() / 2]
}

fn render(series: usize) {
    let names = ["namespace", "pod", "container"];
    let values: Vec<(String, String, String)> = (0..series)
        .map(|i| {
            (
                format!("ns-{}", i % 50),
                format!("pod-{i}"),
                format!("c-{}", i % 3),
            )
        })
        .collect();
    let encode = || {
        let family = exposition::counter(
            "tcptrace_retransmits_total",
            "Retransmitted segments.",
            &names,
            values
                .iter()
                .enumerate()
                .map(|(i, (a, b, c))| (vec![a.as_str(), b.as_str(), c.as_str()], i as f64))
                .collect(),
        );
        black_box(exposition::encode(vec![family]));
    };
    // Baseline: the same text written with format! and no data model.
    let plain = || {
        let mut out = String::with_capacity(series * 96);
        for (i, (a, b, c)) in values.iter().enumerate() {
            out.push_str(&format!("tcptrace_retransmits_total{{namespace=\"{a}\",pod=\"{b}\",container=\"{c}\"}} {i}\n"));
        }
        black_box(out);
    };
    let iters = (20_000 / series).max(5);
    let ours = time_per_call(9, iters, encode);
    let base = time_per_call(9, iters, plain);
    println!(
        "| /metrics encode, {series} series | {:.3} ms | {:.3} ms (format! only) | {:.2}x | {} |",
        ours * 1e3,
        base * 1e3,
        ours / base,
        if series == 10_000 {
            if ours <= 0.005 {
                "target <= 5 ms: met"
            } else {
                "target <= 5 ms: MISSED"
            }
        } else {
            ""
        }
    );
}

fn sample_events(n: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n * std::mem::size_of::<Event>());
    for i in 0..n {
        let mut e = Event::zeroed();
        e.kind = EventKind::StateChange as u8;
        e.family = AF_INET;
        e.old_state = TcpState::SynSent as u8;
        e.new_state = (i % 12 + 1) as u8;
        e.sport = i as u16;
        e.dport = 443;
        e.pid = 42;
        e.comm[..4].copy_from_slice(b"curl");
        // SAFETY: Event is plain old data.
        bytes.extend_from_slice(unsafe {
            std::slice::from_raw_parts(
                (&e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        });
    }
    bytes
}

fn drain_rate() {
    const N: usize = 100_000;
    let bytes = sample_events(N);
    let size = std::mem::size_of::<Event>();
    let ours = time_per_call(9, 1, || {
        let mut by_transition: HashMap<(u8, u8, u8), u64> = HashMap::new();
        for record in bytes.chunks_exact(size) {
            let e = TcpEvent::decode(record).unwrap();
            if let What::State { from, to, .. } = e.what {
                *by_transition.entry((e.kind() as u8, from, to)).or_default() += 1;
            }
        }
        black_box(by_transition);
    });
    // Baseline: touching the same bytes (a sum), the memory-bandwidth floor.
    let base = time_per_call(9, 1, || {
        black_box(
            bytes
                .chunks_exact(size)
                .map(|r| r[46] as u64 + r[48] as u64)
                .sum::<u64>(),
        );
    });
    println!(
        "| ring drain: decode + aggregate | {:.1} M events/s ({:.0} ns/event) | {:.1} M events/s (sum of bytes) | {:.2}x | |",
        N as f64 / ours / 1e6,
        ours / N as f64 * 1e9,
        N as f64 / base / 1e6,
        ours / base
    );
    let one = &bytes[..size];
    let decode = time_per_call(9, 200_000, || {
        black_box(TcpEvent::decode(black_box(one)));
    });
    let copy = time_per_call(9, 200_000, || {
        black_box(black_box(one).to_vec());
    });
    println!(
        "| decode one event | {:.0} ns | {:.0} ns (copy to a Vec) | {:.2}x | |",
        decode * 1e9,
        copy * 1e9,
        decode / copy
    );
}

/// A state change as `tcptrace trace` sees most: an IPv4 client socket with its owner,
/// namespace and time in the previous state known.
fn state_change(from: TcpState, to: TcpState, sport: u16) -> TcpEvent {
    TcpEvent {
        ts_ns: 5_000_000_123_456,
        skaddr: 0xffff_8881_0a2b_3c40,
        local: SocketAddr::from(([10, 0, 0, 12], sport)),
        remote: SocketAddr::from(([10, 96, 14, 203], 443)),
        netns: Some(4_026_531_840),
        owner: Some(Owner::new(12_345, 8_812, "curl")),
        what: What::State {
            from: from as u8,
            to: to as u8,
            time_in_from_ns: Some(1_523_000),
        },
    }
}

/// One connection's worth of events, in the proportions a busy trace shows.
fn event_mix() -> Vec<TcpEvent> {
    use TcpState as S;
    let with = |what| TcpEvent {
        what,
        ..state_change(S::SynSent, S::Established, 40_000)
    };
    vec![
        state_change(S::Close, S::SynSent, 40_000),
        state_change(S::SynSent, S::Established, 40_000),
        with(What::Handshake {
            side: HandshakeSide::Client,
            duration_ns: 1_523_000,
            failure: None,
        }),
        with(What::Retransmit {
            kind: RetransmitKind::Data,
            state: S::Established as u8,
            segments: Some(2),
            error: None,
        }),
        state_change(S::Established, S::FinWait1, 40_000),
        state_change(S::FinWait1, S::FinWait2, 40_000),
        state_change(S::FinWait2, S::TimeWait, 40_000),
        with(What::Close(Close {
            from: S::FinWait2 as u8,
            lifetime_ns: Some(48_250_000),
            bytes_sent: 1_402,
            bytes_received: 65_537,
            segs_out: 4,
            retransmitted: 1,
            rtt_us: Some(1_480),
            closed_by: ClosedBy::Local,
        })),
    ]
}

/// What `trace` renders before each write (`BATCH_BYTES` in trace/mod.rs).
const OUTPUT_BUFFER: usize = 64 * 1024;

/// Nanoseconds per event to render `events` in `format`, and to copy the lines rendered
/// (the floor: the bytes have to reach the output buffer either way).
fn render_cost(events: &[TcpEvent], format: Format) -> (f64, f64) {
    let mut renderer = Renderer::new(Clock::new());
    let mut render = |out: &mut Vec<u8>, e: &TcpEvent| match format {
        Format::Json => renderer.json(out, e, None),
        Format::Text => renderer.text(out, e),
    };
    let lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut line = Vec::new();
            render(&mut line, e);
            line
        })
        .collect();
    // Lines go one after another into a buffer written out every 64 KiB, as `trace`
    // does. (Rendering every line at the start of the buffer measured 130 or 205 ns
    // depending on where the process's memory happened to lie, one or the other for a
    // whole run: the same addresses every time either always or never collided with
    // the renderer's stack in the CPU's store buffer.)
    let mut out = Vec::with_capacity(OUTPUT_BUFFER + 1024);
    let mut append = |write: &mut dyn FnMut(&mut Vec<u8>)| {
        if out.len() >= OUTPUT_BUFFER {
            out.clear();
        }
        write(&mut out);
        black_box(&out);
    };
    // Many short rounds (2000 events, a fraction of a millisecond): on a shared
    // machine most pass without being preempted, and the median is one of them.
    let (rounds, iters) = (101, 2_000 / events.len());
    let ours = time_per_call(rounds, iters, || {
        for e in events {
            append(&mut |out| render(out, black_box(e)));
        }
    });
    let copy = time_per_call(rounds, iters, || {
        for line in &lines {
            append(&mut |out| out.extend_from_slice(black_box(line)));
        }
    });
    let per_event = 1e9 / events.len() as f64;
    (ours * per_event, copy * per_event)
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Text,
}

fn render_events() {
    let headline = [state_change(
        TcpState::SynSent,
        TcpState::Established,
        40_000,
    )];
    let mix = event_mix();
    for (format, name) in [(Format::Json, "JSON"), (Format::Text, "text")] {
        let (ours, copy) = render_cost(&headline, format);
        println!(
            "| render one event, {name} | {ours:.0} ns | {copy:.0} ns (copy the rendered line) | {:.2}x | target <= 150 ns: {} |",
            ours / copy,
            if ours <= 150.0 { "met" } else { "MISSED" }
        );
        let (ours, copy) = render_cost(&mix, format);
        println!(
            "| render a mix of {} events, {name} | {ours:.0} ns/event | {copy:.0} ns (copy the rendered lines) | {:.2}x | |",
            mix.len(),
            ours / copy
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    println!("| benchmark | tcptrace | baseline (same run) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for series in [1_000, 10_000] {
        render(series);
    }
    drain_rate();
    render_events();
}
