//! Loading and attaching one program of a probe method with aya, and undoing it when a
//! later step of the same method fails (so a half-attached method leaves nothing behind).
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId,
        raw_trace_point::RawTracePointLinkId, tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId, BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError,
        RawTracePoint, TracePoint,
    },
    Btf, Ebpf,
};

use super::btf::{AttachBtf, Target};

/// One program and where it goes.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// A classic tracepoint (its layout resolved from tracefs beforehand).
    Tracepoint {
        program: &'static str,
        category: &'static str,
        event: &'static str,
    },
    /// A raw tracepoint: the kernel's arguments, no record.
    RawTracepoint {
        program: &'static str,
        event: &'static str,
    },
    /// A BTF-typed tracepoint (`tp_btf`): the kernel's arguments with their types, so
    /// the program may hand the socket to helpers such as socket storage.
    BtfTracepoint {
        program: &'static str,
        event: &'static str,
    },
    Fentry {
        program: &'static str,
        function: &'static str,
    },
    Fexit {
        program: &'static str,
        function: &'static str,
    },
    /// kprobe or kretprobe: the program's section says which.
    Kprobe {
        program: &'static str,
        function: &'static str,
    },
}

impl Attach {
    pub fn program(&self) -> &'static str {
        match *self {
            Attach::Tracepoint { program, .. }
            | Attach::RawTracepoint { program, .. }
            | Attach::BtfTracepoint { program, .. }
            | Attach::Fentry { program, .. }
            | Attach::Fexit { program, .. }
            | Attach::Kprobe { program, .. } => program,
        }
    }

    /// The kernel type aya looks up by name to load this program, if any.
    pub fn btf_target(&self) -> Option<Target> {
        match *self {
            Attach::BtfTracepoint { event, .. } => {
                Some(Target::Typedef(format!("btf_trace_{event}")))
            }
            Attach::Fentry { function, .. } | Attach::Fexit { function, .. } => {
                Some(Target::Func(function.to_string()))
            }
            Attach::Tracepoint { .. } | Attach::RawTracepoint { .. } | Attach::Kprobe { .. } => {
                None
            }
        }
    }

    /// The kernel function a function hook goes on.
    pub fn function(&self) -> Option<&'static str> {
        match *self {
            Attach::Fentry { function, .. }
            | Attach::Fexit { function, .. }
            | Attach::Kprobe { function, .. } => Some(function),
            Attach::Tracepoint { .. }
            | Attach::RawTracepoint { .. }
            | Attach::BtfTracepoint { .. } => None,
        }
    }
}

/// An attachment that can be taken back.
pub enum Link {
    Tracepoint(&'static str, TracePointLinkId),
    RawTracepoint(&'static str, RawTracePointLinkId),
    BtfTracepoint(&'static str, BtfTracePointLinkId),
    Fentry(&'static str, FEntryLinkId),
    Fexit(&'static str, FExitLinkId),
    Kprobe(&'static str, KProbeLinkId),
}

/// Where a method failed: the verifier refused a program, or the kernel would not
/// attach a loaded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Requirement,
    Load,
    Attach,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Requirement => "requirement",
            Stage::Load => "load",
            Stage::Attach => "attach",
        })
    }
}

pub struct Failure {
    pub stage: Stage,
    pub error: anyhow::Error,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Load a program (once: programs shared by two probes are loaded by the first).
pub fn load(ebpf: &mut Ebpf, btf: Option<&AttachBtf>, a: &Attach) -> Result<()> {
    let prog = program(ebpf, a.program())?;
    if prog.fd().is_ok() {
        return Ok(());
    }
    let name = a.program();
    let target = a.btf_target();
    let needs_btf = || {
        btf.zip(target.as_ref()).context(
            "no kernel BTF (/sys/kernel/btf/vmlinux), which fentry/fexit and BTF-typed \
             tracepoints need",
        )
    };
    match (a, prog) {
        (Attach::Tracepoint { .. }, Program::TracePoint(p)) => p.load()?,
        (Attach::RawTracepoint { .. }, Program::RawTracePoint(p)) => p.load()?,
        (Attach::BtfTracepoint { event, .. }, Program::BtfTracePoint(p)) => {
            let (btf, target) = needs_btf()?;
            p.load(event, &btf.for_target(target))?
        }
        (Attach::Fentry { function, .. }, Program::FEntry(p)) => {
            let (btf, target) = needs_btf()?;
            load_on_function(btf, target, |b| p.load(function, b))?
        }
        (Attach::Fexit { function, .. }, Program::FExit(p)) => {
            let (btf, target) = needs_btf()?;
            load_on_function(btf, target, |b| p.load(function, b))?
        }
        (Attach::Kprobe { .. }, Program::KProbe(p)) => p.load()?,
        _ => anyhow::bail!("program {name} is not of the kind its probe table entry says"),
    }
    Ok(())
}

/// Load an fentry/fexit program, asking first with a target that is not a function
/// (`AttachBtf::not_a_function`): a kernel that refuses such programs outright answers
/// EPERM then, before the stand-in for the function's own id is built (8.3 MB near id
/// 115,000), which could only be refused the same way.
fn load_on_function(
    btf: &AttachBtf,
    target: &Target,
    mut load: impl FnMut(&Btf) -> Result<(), ProgramError>,
) -> Result<()> {
    if let Some(stand_in) = btf.not_a_function(target) {
        match load(&stand_in) {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() != Some(libc::EPERM) => {}
            Err(refused) => return Err(refused.into()),
            // Never attach a program loaded against the wrong type.
            Ok(()) => anyhow::bail!("the kernel loaded a function hook on a typedef"),
        }
    }
    load(&btf.for_target(target))?;
    Ok(())
}

/// Load (if needed) and attach; returns the link and the program's fd.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: Option<&AttachBtf>,
    a: &Attach,
) -> Result<(Link, i32), Failure> {
    load(ebpf, btf, a).map_err(|error| Failure {
        stage: Stage::Load,
        error: explain_refusal(a, error),
    })?;
    let at = |error| Failure {
        stage: Stage::Attach,
        error,
    };
    let prog = program(ebpf, a.program()).map_err(at)?;
    let fd = prog.fd().map_err(|e| at(e.into()))?.as_fd().as_raw_fd();
    let link = match *a {
        Attach::Tracepoint {
            program,
            category,
            event,
        } => {
            let p: &mut TracePoint = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| at(e.into()))?;
            Link::Tracepoint(
                program,
                p.attach(category, event).map_err(|e| at(e.into()))?,
            )
        }
        Attach::RawTracepoint { program, event } => {
            let p: &mut RawTracePoint = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| at(e.into()))?;
            Link::RawTracepoint(program, p.attach(event).map_err(|e| at(e.into()))?)
        }
        Attach::BtfTracepoint { program, .. } => {
            let p: &mut BtfTracePoint = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| at(e.into()))?;
            Link::BtfTracepoint(program, p.attach().map_err(|e| at(e.into()))?)
        }
        Attach::Fentry { program, .. } => {
            let p: &mut FEntry = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| at(e.into()))?;
            Link::Fentry(program, p.attach().map_err(|e| at(e.into()))?)
        }
        Attach::Fexit { program, .. } => {
            let p: &mut FExit = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| at(e.into()))?;
            Link::Fexit(program, p.attach().map_err(|e| at(e.into()))?)
        }
        Attach::Kprobe { program, function } => {
            let p: &mut KProbe = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| at(e.into()))?;
            Link::Kprobe(program, p.attach(function, 0).map_err(|e| at(e.into()))?)
        }
    };
    Ok((link, fd))
}

/// EPERM for an fentry/fexit program comes before the verifier: the kernel (or the
/// sandbox it runs in) does not allow BPF trampolines. Say that instead of "verifier".
fn explain_refusal(a: &Attach, error: anyhow::Error) -> anyhow::Error {
    let trampoline = matches!(a, Attach::Fentry { .. } | Attach::Fexit { .. });
    if trampoline && format!("{error:#}").contains("Operation not permitted") {
        return error.context(
            "this kernel refuses fentry/fexit programs (EPERM before verification: \
             no BPF trampoline support, lockdown, or a sandboxed VM)",
        );
    }
    error
}

/// Take an attachment back (best effort: the program is dropped with the object anyway).
pub fn detach(ebpf: &mut Ebpf, link: Link) {
    let _ = match link {
        Link::Tracepoint(name, id) => detach_as::<TracePoint, _>(ebpf, name, |p| p.detach(id)),
        Link::RawTracepoint(name, id) => {
            detach_as::<RawTracePoint, _>(ebpf, name, |p| p.detach(id))
        }
        Link::BtfTracepoint(name, id) => {
            detach_as::<BtfTracePoint, _>(ebpf, name, |p| p.detach(id))
        }
        Link::Fentry(name, id) => detach_as::<FEntry, _>(ebpf, name, |p| p.detach(id)),
        Link::Fexit(name, id) => detach_as::<FExit, _>(ebpf, name, |p| p.detach(id)),
        Link::Kprobe(name, id) => detach_as::<KProbe, _>(ebpf, name, |p| p.detach(id)),
    };
}

fn detach_as<P, F>(ebpf: &mut Ebpf, name: &str, f: F) -> Result<()>
where
    for<'a> &'a mut P: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
    F: FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
{
    let p: &mut P = program(ebpf, name)?.try_into()?;
    f(p)?;
    Ok(())
}
