//! Everything that leaves the kernel: the ring buffer (after the trace filters) and the
//! per-CPU counters.
use tcptrace_common::{
    event::{FLAG_OWNER_UNKNOWN, FLAG_RST_RECEIVED},
    Event, EventKind, Owner, Stat, AF_INET,
};

use aya_ebpf::maps::{PerCpuArray, PerCpuHashMap};

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;
/// Ring buffer flags and queries (uapi `BPF_RB_*`).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

use crate::{
    conf,
    maps::{EVENTS, STATS},
    sockets::{self, Store},
    tracepoint::Endpoints,
};

/// Add one to a self-observability counter and return its new value on this CPU.
#[inline(always)]
pub fn bump(stat: Stat) -> u64 {
    add_slot(&STATS, stat as u32, 1)
}

/// Add `n` to a slot of a per-CPU array counter; returns this CPU's new value.
#[inline(always)]
pub fn add_slot(map: &PerCpuArray<u64>, index: u32, n: u64) -> u64 {
    match map.get_ptr_mut(index) {
        Some(p) => {
            add_to(p, n);
            // SAFETY: this CPU's slot; read again rather than fetched (see `add_to`).
            unsafe { p.read_volatile() }
        }
        None => 0,
    }
}

/// Add `n` to this CPU's value of a counter, in one instruction. Programs nest on a
/// CPU (a backup program, or a softirq's run, inside a task's), and with a load, an add
/// and a store the interrupted run would store over what the nested one added. The
/// result is not used: this is the plain atomic add every kernel accepts (a fetching
/// one needs Linux 5.12), written as the instruction because `AtomicU64::fetch_add`
/// does not exist for this target.
#[inline(always)]
fn add_to(p: *mut u64, n: u64) {
    // SAFETY: a map value, 8-aligned, valid for the program's run.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {n}",
            p = in(reg) p,
            n = in(reg) n,
            options(nostack)
        )
    };
}

/// Add `n` to a key of a per-CPU hash counter, creating the key on first use.
#[inline(always)]
pub fn add_key(map: &PerCpuHashMap<u32, u64>, key: u32, n: u64) {
    if let Some(p) = map.get_ptr_mut(key) {
        add_to(p, n);
        return;
    }
    if map.insert(key, n, BPF_NOEXIST).is_ok() {
        return;
    }
    // Another CPU created the key first: this CPU's slot exists now, zeroed.
    match map.get_ptr_mut(key) {
        Some(p) => add_to(p, n),
        None => {
            bump(Stat::CounterUpdateFailed);
        }
    }
}

/// Send an event to userspace unless a trace filter rejects it. A full ring buffer
/// loses the event and counts the loss; nothing is dropped silently.
#[inline(always)]
pub fn submit(event: &Event) {
    if !passes_filter(event) {
        bump(Stat::EventsFiltered);
        return;
    }
    bump(Stat::EventsProduced);
    // Wake the reader only once enough has piled up; it also polls on a timer.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= conf!(wakeup_bytes) as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.output::<Event>(event, flags) {
        Ok(()) => bump(Stat::EventsSubmitted),
        Err(_) => bump(Stat::EventsLost),
    };
}

/// Does the reader want events of this kind at all? Checked before an event is built:
/// `tcptrace run` asks only for the kinds its per-workload series use (none without
/// `--labels`), and building an event costs more than the counters. A skipped event is
/// counted as filtered, as `submit` would have.
#[inline(always)]
pub fn wanted(kind: EventKind) -> bool {
    if kind_selected(kind as u8) {
        return true;
    }
    bump(Stat::EventsFiltered);
    false
}

/// Is this kind (an `EventKind` value) among those the reader asked for?
#[inline(always)]
fn kind_selected(kind: u8) -> bool {
    let kinds = conf!(filter.kinds);
    kinds == 0 || kinds & (1u32 << kind) != 0
}

#[inline(always)]
fn passes_filter(e: &Event) -> bool {
    if !kind_selected(e.kind) {
        return false;
    }
    let pid = conf!(filter.pid);
    if pid != 0 && pid != e.pid {
        return false;
    }
    let port = conf!(filter.port);
    if port != 0 && port != e.sport && port != e.dport {
        return false;
    }
    let family = conf!(filter.family);
    if family != 0 && family != e.family {
        return false;
    }
    let netns = conf!(filter.netns);
    if netns != 0 && netns != e.netns {
        return false;
    }
    comm_matches(e) && cidr_matches(e)
}

#[inline(always)]
fn comm_matches(e: &Event) -> bool {
    let len = conf!(filter.comm_len) as usize;
    if len == 0 {
        return true;
    }
    let want = &conf!(filter.comm);
    let mut i = 0;
    while i < 16 {
        // Compare the name and its terminating NUL (or the kernel's 15-byte truncation).
        if i <= len && want[i] != e.comm[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn cidr_matches(e: &Event) -> bool {
    let family = conf!(filter.cidr_family);
    if family == 0 {
        return true;
    }
    if family != e.family {
        return false;
    }
    let addr = &conf!(filter.cidr_addr);
    let prefix = conf!(filter.cidr_prefix) as u32;
    in_prefix(&e.saddr, addr, prefix, family) || in_prefix(&e.daddr, addr, prefix, family)
}

#[inline(always)]
fn in_prefix(ip: &[u8; 16], net: &[u8; 16], prefix: u32, family: u16) -> bool {
    let bytes = if family == AF_INET { 4 } else { 16 };
    let mut i = 0u32;
    while i < 16 {
        if i < bytes {
            let bits = if prefix >= (i + 1) * 8 {
                8
            } else if prefix > i * 8 {
                prefix - i * 8
            } else {
                0
            };
            let mask = if bits == 0 { 0u8 } else { 0xffu8 << (8 - bits) };
            if ip[i as usize] & mask != net[i as usize] & mask {
                return false;
            }
        }
        i += 1;
    }
    true
}

/// The event for this socket and owner, with everything but the kind-specific fields,
/// built in the run's frame.
#[inline(always)]
pub fn base_event<'a>(
    event: &'a mut Event,
    ep: &Endpoints,
    owner: &Owner,
    now: u64,
    flags: u8,
) -> &'a mut Event {
    crate::zero::zero_words(event);
    event.ts_ns = now;
    event.skaddr = ep.skaddr;
    event.family = ep.family;
    event.sport = ep.sport;
    event.dport = ep.dport;
    event.saddr = ep.saddr;
    event.daddr = ep.daddr;
    event.netns = crate::sock::netns(ep.skaddr);
    event.pid = owner.pid;
    event.cgroup_id = owner.cgroup_id;
    event.comm = owner.comm;
    event.flags = flags & (FLAG_OWNER_UNKNOWN | FLAG_RST_RECEIVED);
    event
}

/// `base_event` for the socket `store` tracks, as of now, with its recorded owner.
#[inline(always)]
pub fn tracked_event<'a>(
    event: &'a mut Event,
    ep: &Endpoints,
    store: &impl Store,
) -> &'a mut Event {
    let (owner, flags) = owner_of(store);
    // SAFETY: a helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    base_event(event, ep, &owner, now, flags)
}

/// The owner and flags recorded for a socket, or "unknown" when it is not tracked.
#[inline(always)]
pub fn owner_of(store: &impl Store) -> (Owner, u8) {
    match store.entry() {
        Some(info) => (info.owner, info.flags as u8),
        None => (sockets::unknown_owner(), FLAG_OWNER_UNKNOWN),
    }
}
