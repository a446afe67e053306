//! Micro-benchmarks of the agent's hot userspace paths, each next to a baseline measured
//! in the same run (these machines are noisy: compare ratios, not absolute numbers).
//! Run with `cargo xtask bench micro` (or `cargo bench -p tcptrace-agent --bench micro`).
use std::{collections::HashMap, hint::black_box, time::Instant};

use tcptrace_agent::{
    event::{clock::Clock, TcpEvent, What},
    exporter::exposition,
    trace::render::Renderer,
};
use tcptrace_common::{Event, EventKind, TcpState, AF_INET};

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
    let e = TcpEvent::decode(one).unwrap();
    let mut renderer = Renderer::new(Clock::new());
    let mut out = Vec::with_capacity(512);
    let json = time_per_call(9, 50_000, || {
        out.clear();
        renderer.json(&mut out, black_box(&e), None);
        black_box(&out);
    });
    let text = time_per_call(9, 50_000, || {
        out.clear();
        renderer.text(&mut out, black_box(&e));
        black_box(&out);
    });
    println!(
        "| render one event | {:.0} ns JSON | {:.0} ns text | {:.2}x | |",
        json * 1e9,
        text * 1e9,
        json / text
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    println!("| benchmark | tcptrace | baseline (same run) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for series in [1_000, 10_000] {
        render(series);
    }
    drain_rate();
}
