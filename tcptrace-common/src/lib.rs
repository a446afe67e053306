//! Types shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding (explicit `_pad`
//! fields), so the kernel and userspace agree on the byte layout and no uninitialised
//! kernel stack bytes ever reach the ring buffer.
#![no_std]

pub mod config;
pub mod counters;
pub mod event;
pub mod state;
pub mod stats;

pub use config::{Config, Filter, TpLayout, FIELD_ABSENT};
pub use event::{Event, EventKind, HandshakeSide, Owner, RetransmitKind};
pub use state::TcpState;
pub use stats::Stat;

/// `AF_INET` and `AF_INET6` as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and byte arrays,
    // and have no implicit padding (checked by the size tests in each module).
    unsafe impl aya::Pod for crate::Config {}
    unsafe impl aya::Pod for crate::Event {}
    unsafe impl aya::Pod for crate::Owner {}
    unsafe impl aya::Pod for crate::event::SockInfo {}
    unsafe impl aya::Pod for crate::event::ListenKey {}
    unsafe impl aya::Pod for crate::event::Listener {}
}
