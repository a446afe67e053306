//! What the kernel turned away: TCP packets dropped, by the kernel's reason and by the
//! state of their socket, and connections a full accept queue refused. METRICS.md,
//! "Drops and listen overflows", says how each is counted.
use std::collections::BTreeMap;

use tcptrace_common::{event::OverflowAt, state::state_name};

use super::exposition::{counter, Family};
use crate::{event::names::drop_reason_name, kernel::counters::Snapshot};

/// Reason labels are cut to this many bytes (the longest name on Linux 6.18 has 24):
/// a bound for the worst case of `/metrics`, whatever later kernels name.
pub const REASON_LABEL_MAX: usize = 32;

/// A reason's label: its name on this kernel, cut to `REASON_LABEL_MAX`.
pub fn reason_label(reason: u32) -> String {
    let mut name = drop_reason_name(reason);
    name.truncate(REASON_LABEL_MAX);
    name
}

/// The families, each reason labelled by `reason_label` (the worst case of `/metrics`
/// passes the longest label there can be).
pub fn families(s: &Snapshot, reason_label: &dyn Fn(u32) -> String) -> Vec<Family> {
    let mut by_reason: BTreeMap<u32, u64> = BTreeMap::new();
    let mut by_state: BTreeMap<u8, u64> = BTreeMap::new();
    for ((reason, state), n) in &s.drops {
        *by_reason.entry(*reason).or_default() += n;
        *by_state.entry(*state).or_default() += n;
    }
    let reasons: Vec<(String, f64)> = by_reason
        .into_iter()
        .map(|(reason, n)| (reason_label(reason), n as f64))
        .collect();
    vec![
        counter(
            "tcptrace_drops_total",
            "TCP packets the kernel dropped (skb:kfree_skb), by its drop reason (NETFILTER_DROP, PROTO_MEM, TCP_ZEROWINDOW, ...).",
            &["reason"],
            reasons
                .iter()
                .map(|(reason, n)| (vec![reason.as_str()], *n))
                .collect(),
        ),
        counter(
            "tcptrace_drops_by_state_total",
            "The same drops by the state of the packet's socket (none: dropped before a socket took it).",
            &["state"],
            by_state
                .into_iter()
                .map(|(state, n)| (vec![socket_state(state)], n as f64))
                .collect(),
        ),
        counter(
            "tcptrace_listen_overflows_total",
            "Connections a listener's full accept queue turned away, as ListenOverflows counts them: at the SYN (none answered; the client retransmits it) or at the final ACK (the client thinks it is connected).",
            &["at"],
            OverflowAt::ALL
                .iter()
                .map(|at| (vec![at.name()], s.listen_overflows[*at as usize] as f64))
                .collect(),
        ),
        counter(
            "tcptrace_listen_syns_unjudged_total",
            "SYNs that reached a listener tcptrace has not seen open (it was listening before tcptrace started, or the listener table was full): whether its queue overflowed is not known.",
            &[],
            vec![(vec![], s.syns_unjudged as f64)],
        ),
    ]
}

fn socket_state(state: u8) -> &'static str {
    if state == 0 {
        "none"
    } else {
        state_name(state)
    }
}
