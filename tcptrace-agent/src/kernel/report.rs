//! `tcptrace probes`: the probe plan for this kernel, as a table or JSON.
use std::io::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::kernel::{HookStatus, KernelFacts, LoadOptions};

#[derive(Serialize)]
struct Report<'a> {
    kernel: &'a KernelFacts,
    probes: &'a [HookStatus],
    /// Every program of the object: did the verifier accept it on this kernel?
    programs: Vec<ProgramCheck>,
}

#[derive(Serialize)]
struct ProgramCheck {
    program: &'static str,
    verifier: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(json: bool, forced: Vec<(String, String)>) -> Result<()> {
    let loaded = super::load(&LoadOptions {
        verify_all: true,
        ..LoadOptions::defaults(forced)
    })?;
    let programs = loaded
        .programs
        .iter()
        .cloned()
        .map(|(program, r)| ProgramCheck {
            program,
            verifier: if r.is_ok() { "accepted" } else { "refused" },
            error: r.err(),
        })
        .collect();
    let report = Report {
        kernel: &loaded.kernel,
        probes: &loaded.hooks,
        programs,
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", table(&report))?;
    }
    Ok(())
}

fn table(r: &Report) -> String {
    let k = r.kernel;
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut s = format!(
        "kernel {}   BTF: {}   kprobes: {}   tracefs: {}\n\n",
        k.release,
        yes(k.btf),
        yes(k.kprobes),
        k.tracefs
    );
    s.push_str(&format!(
        "{:<24} {:<15} {}\n",
        "PROBE", "METHOD", "WHAT IT GIVES"
    ));
    for h in r.probes {
        let method = if h.attached { h.method } else { "NOT ATTACHED" };
        s.push_str(&format!("{:<24} {:<15} {}\n", h.hook, method, h.purpose));
        for skip in &h.skipped {
            s.push_str(&format!(
                "{:<24}   skipped {} at {}: {}\n",
                "", skip.method, skip.stage, skip.reason
            ));
        }
    }
    s.push_str("\nVERIFIER (every program, attached or not)\n");
    for p in &r.programs {
        match &p.error {
            None => s.push_str(&format!("  {:<32} accepted\n", p.program)),
            Some(e) => s.push_str(&format!("  {:<32} refused: {e}\n", p.program)),
        }
    }
    s
}
