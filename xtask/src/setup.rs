//! `cargo xtask setup`: toolchain pieces and Debian packages, each checked before it is
//! installed so that a second run does nothing.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::run_cmd;

/// Debian packages the tests and the peers they compare against use.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "ip netns, ss and nstat: namespaces and the kernel's own counters",
    ),
    ("nftables", "nft: packet loss for retransmit tests"),
    (
        "libbpf-tools",
        "tcpstates: the peer whose transitions the tests compare with",
    ),
    ("bpftool", "listing loaded programs, links and maps"),
    (
        "prometheus",
        "a real Prometheus scraping the agent, and promtool",
    ),
    (
        "bpftrace",
        "the in-kernel counting baseline of the churn benchmark",
    ),
    (
        "linux-perf",
        "cargo xtask bench profile: where the time goes under churn",
    ),
    (
        "qemu-system-x86",
        "cargo xtask vm-test: boots other kernels under emulation",
    ),
    (
        "podman",
        "cargo xtask image: builds and runs the container image",
    ),
    (
        "musl-tools",
        "cargo xtask image: the C compiler for ring (TLS) in the static agent",
    ),
    (
        "curl",
        "cargo xtask image --verify: scrapes the agent in its container",
    ),
    (
        "busybox-static",
        "cargo xtask vm-test: the shell and tools of the guest's initramfs",
    ),
];

pub fn run() -> Result<()> {
    nightly_toolchain()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    musl_target()?;
    debian_packages()?;
    kubernetes_validate()?;
    Ok(())
}

/// The container image holds the agent built for musl, statically.
fn musl_target() -> Result<()> {
    let installed = output_of(rustup().args(["target", "list", "--installed"]))
        .is_some_and(|t| t.lines().any(|l| l.trim() == crate::image::MUSL));
    if installed {
        say(
            "rust target musl",
            "present (the static agent of the container image)",
        );
        return Ok(());
    }
    run_cmd(rustup().args(["target", "add", crate::image::MUSL]))?;
    say("rust target musl", "installed");
    Ok(())
}

/// The Kubernetes manifests' validator, pinned, in a virtualenv of the project's own.
const KUBERNETES_VALIDATE: &str = "1.37.0";

/// Where the tests find `kubernetes-validate`.
pub fn venv() -> PathBuf {
    home().join(".cache/tcptrace/venv")
}

fn kubernetes_validate() -> Result<()> {
    let bin = venv().join("bin/kubernetes-validate");
    let version = output_of(Command::new(&bin).arg("--version"));
    if version.is_some_and(|v| v.contains(KUBERNETES_VALIDATE)) {
        say(
            "kubernetes-validate",
            "present (validates deploy/ against the Kubernetes schema)",
        );
        return Ok(());
    }
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(venv()))?;
    run_cmd(
        Command::new(venv().join("bin/pip"))
            .args(["install", "-q"])
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")),
    )?;
    say("kubernetes-validate", "installed");
    Ok(())
}

/// cargo-fuzz drives the fuzz targets the test run exercises for a bounded time.
fn cargo_fuzz() -> Result<()> {
    if output_of(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        say("cargo-fuzz", "present");
        return Ok(());
    }
    run_cmd(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        "0.13.2",
    ]))?;
    say("cargo-fuzz", "installed");
    Ok(())
}

fn say(what: &str, status: &str) {
    eprintln!("setup: {what:<28} {status}");
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_toolchain() -> Result<()> {
    let list = output_of(rustup().args(["toolchain", "list"])).context("rustup is required")?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        say("nightly toolchain", "present");
        return Ok(());
    }
    run_cmd(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    say("nightly toolchain", "installed");
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed =
        output_of(rustup().args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        say("nightly rust-src", "present");
        return Ok(());
    }
    run_cmd(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    say("nightly rust-src", "installed");
    Ok(())
}

/// bpf-linker must link the same LLVM major as the nightly's rustc. Debian has no LLVM
/// of that version, so link it against the nightly's own libLLVM. A bpf-linker that
/// runs under `rustup run nightly` has found that library: nothing to do.
fn bpf_linker() -> Result<()> {
    if output_of(rustup().args(["run", "nightly", "bpf-linker", "--version"])).is_some() {
        say("bpf-linker", "present (links the nightly's LLVM)");
        return Ok(());
    }
    let major = nightly_llvm_major()?;
    let sysroot = output_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?;
    let nightly_lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&nightly_lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}", nightly_lib.display()))?;
    let prefix = home().join(".cache/tcptrace-llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    run_cmd(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "--force",
                "bpf-linker",
                "--version",
                "0.13.0",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if output_of(rustup().args(["run", "nightly", "bpf-linker", "--version"])).is_none() {
        bail!("bpf-linker was built but does not run under `rustup run nightly`");
    }
    say("bpf-linker", &format!("installed (LLVM {major})"));
    Ok(())
}

fn nightly_llvm_major() -> Result<u32> {
    let vv =
        output_of(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc +nightly -vV")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("no LLVM version in rustc +nightly -vV")?;
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {version}"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !dpkg_installed(p))
        .collect();
    for (pkg, why) in DEBIAN_PACKAGES {
        if !missing.contains(pkg) {
            say(pkg, &format!("present ({why})"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for pkg in missing {
        say(pkg, "installed");
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}
