//! Indices of the kernel's per-CPU self-observability counters (`STATS` map).

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events written to the ring buffer.
    EventsSubmitted = 0,
    /// Events that found the ring buffer full and were dropped.
    EventsLost = 1,
    /// Sockets that could not be tracked because the socket map was full.
    SocketMapFull = 2,
    /// Listeners that could not be tracked because the listener map was full.
    ListenerMapFull = 3,
    /// Events filtered out in the kernel: by `tcptrace trace` filters, or of kinds
    /// `tcptrace run` does not read.
    EventsFiltered = 4,
    /// A counter key could not be created (its map was full): the count is short.
    CounterUpdateFailed = 5,
    /// Events that passed the filters and were offered to the ring buffer, counted
    /// before the attempt: produced = submitted + lost, checked by the tests.
    EventsProduced = 6,
    /// A program found every per-CPU scratch frame taken (deeper nesting of programs
    /// on one CPU than task, softirq, hardirq and NMI give): that run did nothing.
    NestingTooDeep = 7,
}

pub const STAT_SLOTS: u32 = 8;

impl Stat {
    pub const ALL: [Stat; 8] = [
        Stat::EventsSubmitted,
        Stat::EventsLost,
        Stat::SocketMapFull,
        Stat::ListenerMapFull,
        Stat::EventsFiltered,
        Stat::CounterUpdateFailed,
        Stat::EventsProduced,
        Stat::NestingTooDeep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stat::EventsSubmitted => "events_submitted",
            Stat::EventsLost => "events_lost",
            Stat::SocketMapFull => "socket_map_full",
            Stat::ListenerMapFull => "listener_map_full",
            Stat::EventsFiltered => "events_filtered",
            Stat::CounterUpdateFailed => "counter_update_failed",
            Stat::EventsProduced => "events_produced",
            Stat::NestingTooDeep => "nesting_too_deep",
        }
    }
}

/// Probes whose BTF-typed and raw programs come in pairs: a main program, and a backup
/// on the same tracepoint that handles what the kernel skipped the main one for (an
/// interrupt that fired the same tracepoint on the CPU while the main program ran
/// there). Slots of the `RUNNING` and `RECOVERED` maps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarded {
    SetState = 0,
    RetransmitSkb = 1,
    RetransmitSynack = 2,
    ReceiveReset = 3,
    SendReset = 4,
    ErrorReport = 5,
    KfreeSkb = 6,
}

pub const GUARDED_SLOTS: u32 = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_fit_the_map() {
        for s in Stat::ALL {
            assert!((s as u32) < STAT_SLOTS);
        }
    }
}
