//! Empty host-side library: lets the agent name this crate as a build dependency so cargo
//! rebuilds the agent when the eBPF sources change. The programs live in `main.rs`.
#![no_std]
