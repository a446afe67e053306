//! `tcp:tcp_send_reset`: this host sent a RST (to a closed port, an aborted connection,
//! a bad segment). Only counted: the event may have no socket at all.
use tcptrace_common::counters::RESET_SENT;

use crate::{emit::add_slot, maps::RESETS};

pub fn handle() {
    add_slot(&RESETS, RESET_SENT, 1);
}
