//! Attaching the probe table: for each probe the first method that loads and attaches
//! (only the forced one where `--probe-method` names it), all or nothing per method, and
//! why each method before it was skipped; then the programs are told which method
//! provides what (`SOURCES`). Also what the kernel says about the programs afterwards:
//! the verifier's verdict on every one, and the runs it skipped.
use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context as _, Result};
use aya::{maps::Array, Ebpf};
use log::{info, warn};
use serde::Serialize;
use tcptrace_common::config::{Source, SOURCE_TRACKING, TRACKING_SOCKET_STORAGE};

use super::{
    attach::{self, Attach, Failure, Stage},
    btf::AttachBtf,
    offsets::KernelOffsets,
    probes::{Method, Probe, PROBES},
    KernelFacts,
};

/// A method that was not used, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub method: &'static str,
    pub stage: Stage,
    pub reason: String,
}

/// What happened to one probe on this kernel.
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub hook: &'static str,
    /// The method attached, or `none`.
    pub method: &'static str,
    pub attached: bool,
    pub purpose: &'static str,
    /// The attached programs' fds, for reading their kernel statistics.
    #[serde(skip)]
    pub prog_fds: Vec<i32>,
    /// Methods tried before the one attached (or all of them), with the reason.
    pub skipped: Vec<Skipped>,
}

/// Attach every probe with the first method that works (only the forced one where
/// `--probe-method` names it). Fails only when a required probe cannot attach.
pub fn plan_all(
    ebpf: &mut Ebpf,
    btf: Option<&AttachBtf>,
    forced: &[(String, String)],
    layout_errors: HashMap<&'static str, String>,
    offsets: &KernelOffsets,
    kernel: &KernelFacts,
) -> Result<Vec<HookStatus>> {
    let mut planner = Planner {
        btf,
        ebpf,
        layout_errors,
        offsets,
        kernel,
        attached_programs: HashSet::new(),
        hooks: Vec::new(),
    };
    for probe in &PROBES {
        let forced = forced
            .iter()
            .find(|(p, _)| p == probe.name)
            .map(|(_, m)| m.as_str());
        let status = planner.plan(probe, forced);
        if probe.required && !status.attached {
            let why: Vec<String> = status.skipped.iter().map(|s| s.reason.clone()).collect();
            bail!(
                "tcptrace cannot run without {}: {}",
                probe.name,
                why.join("; ")
            );
        }
        planner.hooks.push(status);
    }
    Ok(planner.hooks)
}

struct Planner<'a> {
    /// What fentry/fexit and tp_btf programs load against of the kernel's BTF.
    btf: Option<&'a AttachBtf>,
    ebpf: &'a mut Ebpf,
    layout_errors: HashMap<&'static str, String>,
    offsets: &'a KernelOffsets,
    kernel: &'a KernelFacts,
    /// (program, function) pairs attached so far: methods of two probes may share one.
    attached_programs: HashSet<(&'static str, Option<&'static str>)>,
    hooks: Vec<HookStatus>,
}

impl Planner<'_> {
    /// Try the probe's methods in order (only `forced` if given); the first that
    /// attaches wins.
    fn plan(&mut self, probe: &'static Probe, forced: Option<&str>) -> HookStatus {
        let mut status = HookStatus {
            hook: probe.name,
            method: "none",
            attached: false,
            purpose: probe.purpose,
            prog_fds: Vec::new(),
            skipped: Vec::new(),
        };
        for method in probe.methods {
            if forced.is_some_and(|f| f != method.name) {
                status.skipped.push(Skipped {
                    method: method.name,
                    stage: Stage::Requirement,
                    reason: "not chosen (--probe-method)".into(),
                });
                continue;
            }
            match self.try_method(method) {
                Ok(fds) => {
                    status.method = method.name;
                    status.attached = true;
                    status.prog_fds = fds;
                    return status;
                }
                Err(f) => status.skipped.push(Skipped {
                    method: method.name,
                    stage: f.stage,
                    reason: format!("{:#}", f.error),
                }),
            }
        }
        status
    }

    fn try_method(&mut self, method: &Method) -> Result<Vec<i32>, Failure> {
        self.check_requirements(method).map_err(|error| Failure {
            stage: Stage::Requirement,
            error,
        })?;
        let mut links = Vec::new();
        let mut fds = Vec::new();
        for a in method.attach {
            let key = (a.program(), a.function());
            if self.attached_programs.contains(&key) {
                continue;
            }
            match attach::attach(self.ebpf, self.btf, a) {
                Ok((link, fd)) => {
                    links.push((key, link));
                    fds.push(fd);
                }
                Err(mut f) => {
                    // All or nothing: take back what this method attached.
                    for (_, link) in links {
                        attach::detach(self.ebpf, link);
                    }
                    if f.stage == Stage::Attach
                        && matches!(a, Attach::Kprobe { .. })
                        && !self.kernel.kprobes
                    {
                        f.error = f.error.context(
                            "this kernel offers no kprobes (no kprobe PMU, no kprobe_events)",
                        );
                    }
                    return Err(f);
                }
            }
        }
        self.attached_programs
            .extend(links.into_iter().map(|(key, _)| key));
        Ok(fds)
    }

    fn check_requirements(&self, method: &Method) -> Result<()> {
        for a in method.attach {
            if let Attach::Tracepoint {
                category, event, ..
            } = a
            {
                if let Some(e) = self.layout_errors.get(event) {
                    bail!("tracepoint {category}:{event}: {e}");
                }
            }
        }
        for needed in method.derived_from {
            let (probe, wanted) = match needed.split_once('/') {
                Some((probe, method)) => (probe, Some(method)),
                None => (*needed, None),
            };
            let hook = self.hooks.iter().find(|h| h.hook == probe && h.attached);
            match (hook, wanted) {
                (None, _) => bail!("derived from {probe}, which is not attached"),
                (Some(h), Some(m)) if h.method != m => {
                    bail!("needs {probe} on {m}, and it is on {}", h.method)
                }
                _ => {}
            }
        }
        if !self.offsets.provide(method.reads) {
            bail!("needs {}", method.reads.needs());
        }
        Ok(())
    }
}

/// Tell the programs which method provides each piece of information.
pub fn write_sources(ebpf: &mut Ebpf, hooks: &[HookStatus]) -> Result<()> {
    let mut sources: Array<_, u32> = Array::try_from(
        ebpf.map_mut("SOURCES")
            .context("map SOURCES missing from the eBPF object")?,
    )?;
    for probe in &PROBES {
        let Some(slot) = probe.source_slot else {
            continue;
        };
        let hook = hooks.iter().find(|h| h.hook == probe.name && h.attached);
        let source = match hook.map(|h| h.method) {
            Some("socket_storage") if slot == SOURCE_TRACKING => TRACKING_SOCKET_STORAGE,
            Some("tracepoint") => Source::Tracepoint as u32,
            Some(_) => Source::Function as u32,
            None => Source::None as u32,
        };
        sources
            .set(slot, source, 0)
            .with_context(|| format!("writing the source of {}", probe.name))?;
    }
    Ok(())
}

/// Load every program of the table that is not loaded yet, without attaching: does the
/// verifier accept it on this kernel? For `tcptrace probes` and the tests.
pub fn verify_all(
    ebpf: &mut Ebpf,
    btf: Option<&AttachBtf>,
) -> Vec<(&'static str, Result<(), String>)> {
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for probe in &PROBES {
        for method in probe.methods {
            for a in method.attach {
                if !seen.insert(a.program()) {
                    continue;
                }
                let r = attach::load(ebpf, btf, a).map_err(|e| format!("{e:#}"));
                results.push((a.program(), r));
            }
        }
    }
    results
}

/// How often the kernel skipped this program because another BPF program was already
/// running on the same CPU (its recursion protection): those invocations, their events
/// and their counts are missing. Read from the program fd's fdinfo (`recursion_misses`,
/// Linux 5.12+; `None` where the kernel does not report it).
pub fn missed_runs(prog_fd: i32) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{prog_fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs of every attached probe the kernel skipped and nothing handled: for a probe with
/// a main and a backup program, the main program's skipped runs less those the backup
/// recovered (the backup's own skips are of events the main program handled); for
/// others, every skipped run of its programs. `recovered` is indexed by `Guarded`.
pub fn missed_by_hook(hooks: &[HookStatus], recovered: &[u64]) -> Vec<(&'static str, u64)> {
    hooks
        .iter()
        .filter(|h| h.attached && !h.prog_fds.is_empty())
        .filter_map(|h| {
            let guarded = PROBES
                .iter()
                .find(|p| p.name == h.hook)
                .and_then(|p| p.guarded)
                .filter(|_| h.method == "tp_btf" || h.method == "raw_tracepoint");
            let missed = match guarded {
                Some(slot) => {
                    let main = missed_runs(h.prog_fds[0])?;
                    main.saturating_sub(recovered.get(slot as usize).copied().unwrap_or(0))
                }
                None => {
                    let runs: Option<Vec<u64>> =
                        h.prog_fds.iter().map(|fd| missed_runs(*fd)).collect();
                    runs?.iter().sum()
                }
            };
            Some((h.hook, missed))
        })
        .collect()
}

/// Log what was attached and what was not, one line per probe, with the reasons.
pub fn log_report(hooks: &[HookStatus]) {
    for h in hooks {
        let skipped: Vec<String> = h
            .skipped
            .iter()
            .map(|s| format!("{} ({}: {})", s.method, s.stage, s.reason))
            .collect();
        if h.attached {
            info!("attached {} ({}): {}", h.hook, h.method, h.purpose);
            if !skipped.is_empty() {
                info!("  {} skipped before that: {}", h.hook, skipped.join("; "));
            }
        } else {
            warn!(
                "not attached {} ({}): {}",
                h.hook,
                h.purpose,
                skipped.join("; ")
            );
        }
    }
}
