//! Per-CPU scratch space for one program run: a copy of the tracepoint record, a copy of
//! a socket's fields, and the event being built (an `Event` does not fit the 512-byte
//! BPF stack next to everything else a handler keeps there).
//!
//! Programs nest on one CPU: a softirq interrupts a task in the middle of a program, a
//! raw or BTF-typed tracepoint runs inside a classic one's softirq (each kind has its
//! own recursion guard, or none shared). So every nesting level gets its own frame: a
//! run takes the next free one and gives it back when it returns, and no run can
//! overwrite the buffers of the run it interrupted.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use tcptrace_common::{config::RECORD_MAX, Event, Stat};

use crate::emit::bump;

/// Task, softirq, hardirq and NMI are four levels; the rest is margin.
const MAX_NESTING: u32 = 8;

#[repr(C)]
pub struct Frame {
    /// The tracepoint record (`tracepoint::Record`).
    pub record: [u8; RECORD_MAX],
    /// A socket's `sock_common`, read like a record (`sock::endpoints`).
    pub sock: [u8; RECORD_MAX],
    pub event: Event,
}

#[map]
static FRAMES: PerCpuArray<Frame> = PerCpuArray::with_max_entries(MAX_NESTING, 0);

/// How many frames this CPU's running programs hold.
#[map]
static NESTING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// This run's frame; given back when dropped (every return path of a program).
pub struct Scratch {
    depth: *mut u32,
    frame: *mut Frame,
}

impl Scratch {
    #[inline(always)]
    pub fn enter() -> Option<Scratch> {
        let depth = NESTING.get_ptr_mut(0)?;
        // SAFETY: per-CPU slot of this CPU; programs on it run strictly nested.
        let level = unsafe { *depth };
        let Some(frame) = FRAMES.get_ptr_mut(level) else {
            bump(Stat::NestingTooDeep);
            return None;
        };
        unsafe { *depth = level + 1 };
        Some(Scratch { depth, frame })
    }

    /// The frame's buffers, borrowed separately.
    #[inline(always)]
    pub fn frame(&mut self) -> &mut Frame {
        // SAFETY: this run owns the frame until it drops the Scratch.
        unsafe { &mut *self.frame }
    }
}

impl Drop for Scratch {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the slot `enter` incremented; nothing else on this CPU runs between.
        unsafe { *self.depth -= 1 };
    }
}
