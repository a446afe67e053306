//! doctor's measurement window: attach the programs for a few seconds and summarise what
//! the kernel did in that time. Read-only: nothing is changed on the machine.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;
use tcptrace_common::{HandshakeSide, RetransmitKind, TcpState};

use crate::{
    event::{errno_name, TcpEvent, What},
    kernel::ring,
    kernel::{self, LoadOptions},
};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Measured {
    pub seconds: f64,
    pub handshakes: u64,
    pub handshake_p50_ms: Option<f64>,
    pub handshake_p99_ms: Option<f64>,
    pub failed_handshakes: BTreeMap<&'static str, u64>,
    /// Retransmitted segments by kind (data, syn, synack).
    pub retransmits: BTreeMap<&'static str, u64>,
    /// Data retransmits by remote endpoint, highest first (at most 5).
    pub retransmits_by_remote: Vec<(SocketAddr, u64)>,
    /// Waits between a socket's SYN and its retransmissions, in seconds (up to 5 sockets).
    pub syn_backoff: Vec<Vec<f64>>,
    pub connect_errors: BTreeMap<String, u64>,
    pub socket_errors: BTreeMap<String, u64>,
    /// Processes closing connections first (ESTABLISHED -> FIN_WAIT1): they hold
    /// the TIME_WAIT that follows.
    pub active_closers: Vec<(String, u64)>,
    pub events_lost: u64,
}

#[derive(Default)]
struct Tally {
    handshake_ns: Vec<u64>,
    failed: BTreeMap<&'static str, u64>,
    retransmits: BTreeMap<&'static str, u64>,
    by_remote: HashMap<SocketAddr, u64>,
    syn_sent_at: HashMap<u64, u64>,
    syn_times: HashMap<u64, Vec<u64>>,
    connect_errors: BTreeMap<String, u64>,
    socket_errors: BTreeMap<String, u64>,
    closers: HashMap<String, u64>,
}

/// Attach, collect for `window`, detach.
pub async fn measure(window: Duration) -> Result<Measured> {
    let mut loaded = kernel::load(&LoadOptions::defaults(Vec::new()))?;
    let mut ring = ring::take_events(&mut loaded.ebpf)?;
    let counters = crate::kernel::counters::KernelCounters::take(&mut loaded.ebpf)?;
    let mut tally = Tally::default();
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(kernel::DRAIN_EVERY);
    loop {
        tokio::select! {
            _ = poll.tick() => { ring::drain(ring.get_mut(), |e| { tally.add(e); true }); }
            _ = &mut deadline => break,
        }
    }
    ring::drain(ring.get_mut(), |e| {
        tally.add(e);
        true
    });
    let lost = counters.stat(tcptrace_common::Stat::EventsLost);
    Ok(tally.summary(window, lost))
}

impl Tally {
    fn add(&mut self, e: &TcpEvent) {
        match &e.what {
            What::State { from, to, .. } => self.state_change(e, *from, *to),
            What::Handshake {
                side: HandshakeSide::Client,
                duration_ns,
                failure,
                ..
            } => match failure {
                None => self.handshake_ns.push(*duration_ns),
                Some(f) => *self.failed.entry(f.reason.name()).or_insert(0) += 1,
            },
            What::Retransmit { kind, segments, .. } => {
                self.retransmit(e, *kind, segments.unwrap_or(1).max(1))
            }
            What::ConnectError { errno, .. } => {
                *self
                    .connect_errors
                    .entry(errno_name(*errno).into_owned())
                    .or_insert(0) += 1
            }
            What::SocketError { errno } => {
                *self
                    .socket_errors
                    .entry(errno_name(*errno).into_owned())
                    .or_insert(0) += 1
            }
            _ => {}
        }
    }

    fn state_change(&mut self, e: &TcpEvent, from: u8, to: u8) {
        if to == TcpState::SynSent as u8 {
            self.syn_sent_at.insert(e.skaddr, e.ts_ns);
        }
        if from == TcpState::Established as u8 && to == TcpState::FinWait1 as u8 {
            let who = match &e.owner {
                Some(owner) => format!("{} ({})", owner.comm(), owner.pid),
                None => "unknown (socket older than the measurement)".to_string(),
            };
            *self.closers.entry(who).or_insert(0) += 1;
        }
    }

    fn retransmit(&mut self, e: &TcpEvent, kind: RetransmitKind, segments: u32) {
        *self.retransmits.entry(kind.name()).or_insert(0) += u64::from(segments);
        match kind {
            RetransmitKind::Syn => self.syn_times.entry(e.skaddr).or_default().push(e.ts_ns),
            RetransmitKind::Data => *self.by_remote.entry(e.remote).or_insert(0) += 1,
            RetransmitKind::SynAck => {}
        }
    }

    fn summary(self, window: Duration, lost: u64) -> Measured {
        let mut ns = self.handshake_ns;
        ns.sort_unstable();
        let pct = |p: f64| -> Option<f64> {
            let i = ((ns.len() as f64 * p).ceil() as usize).checked_sub(1)?;
            ns.get(i).map(|v| *v as f64 / 1e6)
        };
        let mut by_remote: Vec<(SocketAddr, u64)> = self.by_remote.into_iter().collect();
        by_remote.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by_remote.truncate(5);
        let syn_backoff = self
            .syn_times
            .iter()
            .filter_map(|(sk, times)| {
                let start = *self.syn_sent_at.get(sk)?;
                let mut at = start;
                Some(
                    times
                        .iter()
                        .map(|t| {
                            let wait = t.saturating_sub(at) as f64 / 1e9;
                            at = *t;
                            (wait * 100.0).round() / 100.0
                        })
                        .collect(),
                )
            })
            .take(5)
            .collect();
        let mut closers: Vec<(String, u64)> = self.closers.into_iter().collect();
        closers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        closers.truncate(5);
        Measured {
            seconds: window.as_secs_f64(),
            handshakes: ns.len() as u64,
            handshake_p50_ms: pct(0.5),
            handshake_p99_ms: pct(0.99),
            failed_handshakes: self.failed,
            retransmits: self.retransmits,
            retransmits_by_remote: by_remote,
            syn_backoff,
            connect_errors: self.connect_errors,
            socket_errors: self.socket_errors,
            active_closers: closers,
            events_lost: lost,
        }
    }
}
