//! `tcptrace doctor`: the TCP troubleshooting checklist, run against this network
//! namespace: TIME_WAIT and ephemeral ports, keep-alive and idle connections, CLOSE_WAIT
//! by process, what the retry settings mean in seconds, orphans and TCP memory, and
//! (for `--measure` seconds) what the kernel did.
//! Read-only: it changes no setting.
pub mod census;
mod checks;
pub mod listeners;
mod measure;
mod netstat;
pub mod sock_diag;
pub mod sockstat;
pub mod sysctl;
pub mod timeouts;

use std::{io::Write as _, time::Duration};

use anyhow::Result;
use serde::Serialize;

pub use checks::{Finding, Severity};

use crate::{doctor::census::Census, doctor::sockstat::TcpMemory, doctor::sysctl::TcpSysctls};

pub struct DoctorOptions {
    pub json: bool,
    /// Rerun every this often until interrupted.
    pub watch: Option<Duration>,
    /// How long to attach and watch the kernel; zero skips it (no privileges needed).
    pub measure: Duration,
    /// Connections without data for this long count as idle.
    pub idle_after: Duration,
}

#[derive(Serialize)]
struct Report {
    sysctls: TcpSysctls,
    census: Census,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured: Option<measure::Measured>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<TcpMemory>,
    findings: Vec<Finding>,
    worst: Severity,
}

/// Run the checks (repeatedly with `--watch`); the worst severity of the last run.
pub async fn run(opts: DoctorOptions) -> Result<Severity> {
    loop {
        let report = examine(&opts).await?;
        print(&report, opts.json)?;
        let Some(every) = opts.watch else {
            return Ok(report.worst);
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(report.worst),
        }
    }
}

async fn examine(opts: &DoctorOptions) -> Result<Report> {
    let sysctls = TcpSysctls::read()?;
    let mut findings = Vec::new();
    let measured = if opts.measure.is_zero() {
        None
    } else {
        match measure::measure(opts.measure).await {
            Ok(m) => Some(m),
            Err(e) => {
                findings.push(Finding {
                    check: "measurement",
                    severity: Severity::Info,
                    summary: "kernel measurement unavailable; static checks only".into(),
                    evidence: vec![format!("{e:#}")],
                    fix: "Run as root (or with CAP_BPF and CAP_PERFMON), or pass --measure 0."
                        .into(),
                });
                None
            }
        }
    };
    // Sockets are counted after measuring, so what the window produced is included.
    let mut census = Census::take(&sysctls, opts.idle_after)?;
    census.find_owners();
    census.summarize_round_trips();
    let memory = read_memory(&mut findings);
    let m = measured.as_ref();
    findings.push(checks::time_wait(&sysctls, &census, m));
    findings.push(checks::ephemeral_ports(&sysctls, &census, m));
    findings.push(checks::listen_queues(
        &census,
        &listeners::ListenEvidence::read(),
    ));
    findings.push(checks::keepalive(&sysctls, &census));
    findings.push(checks::idle_connections(&census, opts.idle_after));
    findings.push(checks::close_wait(&census, opts.idle_after));
    findings.push(checks::timeouts(&sysctls, m));
    findings.push(checks::retransmission_timeout(&sysctls, &census, m));
    if let Some(memory) = &memory {
        findings.push(checks::orphans_and_memory(memory));
    }
    if let Some(m) = m {
        findings.push(checks::retransmissions(m));
        findings.push(checks::socket_errors(m));
    }
    let worst = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok);
    Ok(Report {
        sysctls,
        census,
        measured,
        memory,
        findings,
        worst,
    })
}

/// /proc/net/sockstat and the limits; a finding saying why where it cannot be read.
fn read_memory(findings: &mut Vec<Finding>) -> Option<TcpMemory> {
    match TcpMemory::read() {
        Ok(memory) => Some(memory),
        Err(e) => {
            findings.push(Finding {
                check: "orphans_and_memory",
                severity: Severity::Info,
                summary: "TCP memory and orphans unavailable".into(),
                evidence: vec![format!("{e:#}")],
                fix: "doctor reads /proc/net/sockstat; mount /proc.".into(),
            });
            None
        }
    }
}

fn print(r: &Report, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
        return Ok(());
    }
    for f in &r.findings {
        let tag = match f.severity {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        };
        writeln!(out, "[{tag}] {}: {}", f.check, f.summary)?;
        for e in &f.evidence {
            writeln!(out, "    - {e}")?;
        }
        if f.severity >= Severity::Warning {
            writeln!(out, "    fix: {}", f.fix)?;
        }
    }
    Ok(())
}

/// The process exit status for the worst finding: 0 nothing above info, 3 warning,
/// 4 critical (1 and 2 stay for failures and usage errors).
pub fn exit_code(worst: Severity) -> u8 {
    match worst {
        Severity::Ok | Severity::Info => 0,
        Severity::Warning => 3,
        Severity::Critical => 4,
    }
}
