//! TCP states, numbered as in the kernel's `include/net/tcp_states.h`.

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
    BoundInactive = 13,
}

/// One past the largest state number; sizes the per-(from,to) counter table.
pub const TCP_STATE_SLOTS: u32 = 16;

impl TcpState {
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    pub fn from_u8(v: u8) -> Option<TcpState> {
        Self::ALL.iter().copied().find(|s| *s as u8 == v)
    }

    /// The name the kernel's own tracepoint output uses (`TCP_SYN_SENT` without the prefix).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::BoundInactive => "BOUND_INACTIVE",
        }
    }

    pub fn from_name(name: &str) -> Option<TcpState> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }
}

/// Name of a raw state number, `"UNKNOWN"` for values this build does not know.
pub fn state_name(v: u8) -> &'static str {
    TcpState::from_u8(v).map_or("UNKNOWN", TcpState::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_kernel_and_names_round_trip() {
        assert_eq!(TcpState::Established as u8, 1);
        assert_eq!(TcpState::Close as u8, 7);
        assert_eq!(TcpState::Listen as u8, 10);
        assert_eq!(TcpState::NewSynRecv as u8, 12);
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_u8(s as u8), Some(s));
            assert_eq!(TcpState::from_name(s.name()), Some(s));
            assert!((s as u32) < TCP_STATE_SLOTS);
        }
        assert_eq!(state_name(0), "UNKNOWN");
        assert_eq!(state_name(99), "UNKNOWN");
    }
}
