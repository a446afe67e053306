//! Reading the network sysctls that decide TCP's timeouts, in the caller's network
//! namespace (`/proc/sys/net` answers for the namespace of the process reading it).
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::doctor::timeouts;

/// One integer sysctl, e.g. `net.ipv4.tcp_syn_retries`.
pub fn read_u64(name: &str) -> Result<u64> {
    let text = read(name)?;
    text.trim()
        .parse()
        .with_context(|| format!("{name} = {text:?} is not a number"))
}

fn read(name: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// The TCP settings doctor reasons about, as this namespace has them.
#[derive(Clone, Debug, Serialize)]
pub struct TcpSysctls {
    pub syn_retries: u64,
    /// 0 on kernels before 6.5, which lack the setting.
    pub syn_linear_timeouts: u64,
    pub synack_retries: u64,
    pub retries1: u64,
    pub retries2: u64,
    /// `net.ipv4.tcp_rto_max_ms` (Linux 6.15+); None before it: TCP_RTO_MAX, 120 s.
    pub rto_max_ms: Option<u64>,
    /// `net.ipv4.tcp_rto_min_us` (Linux 6.11+), the least RTO of new connections; None
    /// before it: TCP_RTO_MIN, 200 ms.
    pub rto_min_us: Option<u64>,
    pub keepalive_time_s: u64,
    pub keepalive_intvl_s: u64,
    pub keepalive_probes: u64,
    pub max_tw_buckets: u64,
    pub tw_reuse: u64,
    pub fin_timeout_s: u64,
    pub local_port_range: (u16, u16),
}

impl TcpSysctls {
    pub fn read() -> Result<TcpSysctls> {
        Ok(TcpSysctls {
            syn_retries: read_u64("net.ipv4.tcp_syn_retries")?,
            syn_linear_timeouts: read_u64("net.ipv4.tcp_syn_linear_timeouts").unwrap_or(0),
            synack_retries: read_u64("net.ipv4.tcp_synack_retries")?,
            retries1: read_u64("net.ipv4.tcp_retries1")?,
            retries2: read_u64("net.ipv4.tcp_retries2")?,
            rto_max_ms: read_u64("net.ipv4.tcp_rto_max_ms").ok(),
            rto_min_us: read_u64("net.ipv4.tcp_rto_min_us").ok(),
            keepalive_time_s: read_u64("net.ipv4.tcp_keepalive_time")?,
            keepalive_intvl_s: read_u64("net.ipv4.tcp_keepalive_intvl")?,
            keepalive_probes: read_u64("net.ipv4.tcp_keepalive_probes")?,
            max_tw_buckets: read_u64("net.ipv4.tcp_max_tw_buckets")?,
            tw_reuse: read_u64("net.ipv4.tcp_tw_reuse")?,
            fin_timeout_s: read_u64("net.ipv4.tcp_fin_timeout")?,
            local_port_range: parse_range(&read("net.ipv4.ip_local_port_range")?)?,
        })
    }

    /// Ports connect() can pick from for one destination.
    pub fn ephemeral_ports(&self) -> u64 {
        let (lo, hi) = self.local_port_range;
        u64::from(hi.saturating_sub(lo)) + 1
    }

    pub fn in_ephemeral_range(&self, port: u16) -> bool {
        (self.local_port_range.0..=self.local_port_range.1).contains(&port)
    }

    /// The RTO's ceiling, and the step of `tcp_retries2` beyond the doubling phase.
    pub fn rto_max(&self) -> Duration {
        self.rto_max_ms
            .map_or(timeouts::RTO_MAX, Duration::from_millis)
    }

    /// The RTO's floor for new connections: a connection's RTO is its smoothed RTT plus
    /// at least this.
    pub fn rto_min(&self) -> Duration {
        self.rto_min_us
            .map_or(timeouts::RTO_MIN, Duration::from_micros)
    }

    /// How long an idle connection to a dead peer lives before keep-alive notices:
    /// `tcp_keepalive_time + tcp_keepalive_intvl * tcp_keepalive_probes` (7200 + 75 * 9 s
    /// by default), for sockets that enabled SO_KEEPALIVE without their own values.
    pub fn keepalive_detection(&self) -> Duration {
        Duration::from_secs(self.keepalive_time_s + self.keepalive_intvl_s * self.keepalive_probes)
    }
}

/// `32768\t60999` -> (32768, 60999).
fn parse_range(text: &str) -> Result<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Ok((lo, hi)),
        _ => anyhow::bail!("ip_local_port_range {text:?} is not `low high`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_and_keepalive() {
        assert_eq!(parse_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert!(parse_range("5 1").is_err());
        let s = TcpSysctls::read().unwrap();
        assert!(s.ephemeral_ports() >= 1);
        let mut defaults = s.clone();
        (
            defaults.keepalive_time_s,
            defaults.keepalive_intvl_s,
            defaults.keepalive_probes,
        ) = (7200, 75, 9);
        assert_eq!(defaults.keepalive_detection(), Duration::from_secs(7875));
    }
}
