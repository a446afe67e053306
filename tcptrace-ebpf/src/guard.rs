//! Main and backup programs: nothing skipped by a program's own recursion guard.
//!
//! The kernel runs a raw or BTF-typed tracepoint program under a guard of its own: it
//! skips the program on a CPU where that same program is already running. That happens
//! when an interrupt fires the tracepoint again in the middle of a run (a softirq state
//! change while a close() was being traced), and the event would be lost. So each such
//! probe attaches two programs to its tracepoint, main first; the backup runs after the
//! main one for every event. The main program adds each event it handles (by the
//! tracepoint's arguments) to a small per-CPU set of pending events; the backup takes
//! it out again, and handles an event it does not find there itself: the kernel
//! skipped the main program for it. Every event that interrupts a pair on the CPU is
//! added and taken out by its own pair, so the set holds only the events whose backup
//! has not run yet: a handful at most, however many events an interrupt handles in
//! between. (A ring of the last four events handled lost the event to an interrupt
//! handling more than four, and the backup counted it twice; a stack checked only at
//! its top did the same when an interrupt's backup was itself skipped.)
//! Skipped runs the backup handled are counted as recovered; the agent reports only
//! the rest as missed.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use tcptrace_common::stats::{Guarded, GUARDED_SLOTS};

use crate::emit::add_slot;

/// Events that can be pending at once on one CPU (task, softirq, hardirq, NMI, with
/// margin); an entry whose backup was skipped is overwritten in time.
const PENDING_MAX: u64 = 8;

/// An event, as the tracepoint's arguments identify it; all zero marks a free entry
/// (no event has a null first argument: it is the socket or the skb).
pub type EventId = [u64; 3];

#[repr(C)]
pub struct Pending {
    ids: [EventId; PENDING_MAX as usize],
    /// Where the next event goes (modulo `PENDING_MAX`).
    next: u64,
}

/// The events each probe's main program handled and its backup has not yet seen, per CPU.
#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(GUARDED_SLOTS, 0);

/// Events the main program was skipped for and the backup handled.
#[map]
pub static RECOVERED: PerCpuArray<u64> = PerCpuArray::with_max_entries(GUARDED_SLOTS, 0);

/// In the main program, before handling `id`.
#[inline(always)]
pub fn handling(probe: Guarded, id: EventId) {
    if let Some(p) = PENDING.get_ptr_mut(probe as u32) {
        // SAFETY: this CPU's slot.
        let p = unsafe { &mut *p };
        let slot = &mut p.ids[(p.next % PENDING_MAX) as usize];
        // Word by word: a copy or comparison of the whole array becomes a byte loop,
        // and the verifier refuses byte reads of a spilled pointer (the socket).
        slot[0] = id[0];
        slot[1] = id[1];
        slot[2] = id[2];
        p.next = p.next.wrapping_add(1);
    }
}

/// In the backup program: was the main program skipped for `id`? Counts it when so.
#[inline(always)]
pub fn main_was_skipped(probe: Guarded, id: EventId) -> bool {
    let Some(p) = PENDING.get_ptr_mut(probe as u32) else {
        return false;
    };
    // SAFETY: this CPU's slot.
    let p = unsafe { &mut *p };
    let mut i = 0;
    while i < PENDING_MAX as usize {
        let entry = &mut p.ids[i];
        if entry[0] == id[0] && entry[1] == id[1] && entry[2] == id[2] {
            entry[0] = 0;
            entry[1] = 0;
            entry[2] = 0;
            return false;
        }
        i += 1;
    }
    add_slot(&RECOVERED, probe as u32, 1);
    true
}

/// The first `args` (1 to 3: no more than the tracepoint has, which the verifier checks
/// for BTF-typed ones) arguments of a raw or BTF-typed tracepoint.
#[inline(always)]
pub fn event_id<C: aya_ebpf::EbpfContext>(ctx: &C, args: usize) -> EventId {
    let p = ctx.as_ptr() as *const u64;
    // SAFETY: the context is the array of the tracepoint's u64 arguments.
    unsafe {
        [
            *p,
            if args > 1 { *p.add(1) } else { 0 },
            if args > 2 { *p.add(2) } else { 0 },
        ]
    }
}

/// A BTF-typed tracepoint's main and backup programs around one handler; `$args`
/// arguments identify an event.
#[macro_export]
macro_rules! btf_programs {
    ($probe:expr, $event:literal, $main:ident, $backup:ident, $args:literal, |$ctx:ident| $body:block) => {
        #[aya_ebpf::macros::btf_tracepoint(function = $event)]
        pub fn $main($ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
            $crate::guard::handling($probe, $crate::guard::event_id(&$ctx, $args));
            $body;
            0
        }

        #[aya_ebpf::macros::btf_tracepoint(function = $event)]
        pub fn $backup($ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
            if $crate::guard::main_was_skipped($probe, $crate::guard::event_id(&$ctx, $args)) {
                $body;
            }
            0
        }
    };
}

/// The same for a raw tracepoint.
#[macro_export]
macro_rules! raw_programs {
    ($probe:expr, $event:literal, $main:ident, $backup:ident, $args:literal, |$ctx:ident| $body:block) => {
        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $event)]
        pub fn $main($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            $crate::guard::handling($probe, $crate::guard::event_id(&$ctx, $args));
            $body;
            0
        }

        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $event)]
        pub fn $backup($ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            if $crate::guard::main_was_skipped($probe, $crate::guard::event_id(&$ctx, $args)) {
                $body;
            }
            0
        }
    };
}
