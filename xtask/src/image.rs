//! `cargo xtask image [--verify]`: the container image, `FROM scratch` with the agent
//! built statically (musl), so the image holds one file and no shell. `--verify` runs it
//! with podman as the DaemonSet runs it, checks it attributes another container's
//! connection, and shows that it fails, saying why, without each privilege it is given.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::{cargo, run_cmd, target_dir, workspace_root};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

pub fn tag() -> String {
    format!("localhost/tcptrace:{}", env!("CARGO_PKG_VERSION"))
}

/// Tags of this run alone: other checkouts on the same machine build and verify images
/// at the same time, and must not run (or remove) each other's.
fn verify_tag(name: &str) -> String {
    format!(
        "localhost/{name}-verify-{}:{}",
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    )
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env(
        "CONTAINERS_CONF",
        workspace_root().join("xtask/containers.conf"),
    );
    c
}

pub fn image(verify: bool) -> Result<()> {
    let agent_tag = verify_tag("tcptrace");
    build_agent(verify.then_some(agent_tag.as_str()))?;
    if verify {
        let client_tag = verify_tag("tcptrace-test-client");
        let verified =
            build_busybox(&client_tag).and_then(|()| verify_image(&agent_tag, &client_tag));
        untag(&[&agent_tag, &client_tag]);
        verified?;
    }
    Ok(())
}

/// `cargo xtask node-sim`: the image beside containers playing pods and a hostile
/// neighbour (xtask/scripts/node-sim.sh says what it checks).
pub fn node_sim() -> Result<()> {
    let (agent_tag, pod_tag) = (verify_tag("tcptrace-node"), verify_tag("tcptrace-node-pod"));
    build_agent(Some(&agent_tag))?;
    let ports = [free_port()?, free_port()?];
    let simulated = build_busybox(&pod_tag).and_then(|()| {
        run_cmd(
            Command::new("unshare")
                .arg("-m")
                .arg("sh")
                .arg(workspace_root().join("xtask/scripts/node-sim.sh"))
                .args([&agent_tag, &pod_tag])
                .args(ports.map(|p| p.to_string()))
                .arg(workspace_root().join("deploy/seccomp-tcptrace.json"))
                .env(
                    "CONTAINERS_CONF",
                    workspace_root().join("xtask/containers.conf"),
                ),
        )
    });
    untag(&[&agent_tag, &pod_tag]);
    simulated
}

/// The agent image, tagged with its release tag and `extra` (this run's own).
fn build_agent(extra: Option<&str>) -> Result<()> {
    run_cmd(cargo().args([
        "build",
        "--release",
        "--package",
        "tcptrace-agent",
        "--target",
        MUSL,
    ]))?;
    let binary = target_dir().join(format!("{MUSL}/release/tcptrace"));
    let context = stage(
        "tcptrace",
        &[(binary, "tcptrace")],
        "FROM scratch\nCOPY tcptrace /tcptrace\nENTRYPOINT [\"/tcptrace\"]\nCMD [\"run\"]\n",
    )?;
    let mut build = podman();
    build.args(["build", "-q", "-t", &tag()]);
    if let Some(extra) = extra {
        build.args(["-t", extra]);
    }
    run_cmd(build.arg(&context))?;
    let size = podman()
        .args(["image", "inspect", "-f", "{{.Size}}", &tag()])
        .output()
        .context("podman image inspect")?;
    eprintln!(
        "image: {} ({} bytes)",
        tag(),
        String::from_utf8_lossy(&size.stdout).trim()
    );
    Ok(())
}

/// The other containers: a static busybox (Debian's busybox-static), nothing else.
fn build_busybox(tag: &str) -> Result<()> {
    let context = stage(
        "busybox",
        &[(PathBuf::from("/bin/busybox"), "busybox")],
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )?;
    run_cmd(podman().args(["build", "-q", "-t", tag]).arg(&context))
}

/// Untag what a run tagged, whether it passed or not (the agent image keeps its
/// release tag).
fn untag(tags: &[&str]) {
    let _ = podman()
        .args(["rmi", "--ignore"])
        .args(tags)
        .stdout(std::process::Stdio::null())
        .status();
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("0.0.0.0:0")?
        .local_addr()?
        .port())
}

/// A build context in <target>/image/<name>: the files and a Containerfile.
fn stage(name: &str, files: &[(PathBuf, &str)], containerfile: &str) -> Result<PathBuf> {
    let dir = target_dir().join("image").join(name);
    std::fs::create_dir_all(&dir)?;
    for (from, to) in files {
        std::fs::copy(from, dir.join(to)).with_context(|| format!("copying {}", from.display()))?;
    }
    std::fs::write(dir.join("Containerfile"), containerfile)?;
    Ok(dir)
}

fn verify_image(agent_tag: &str, client_tag: &str) -> Result<()> {
    let profile = workspace_root().join("deploy/seccomp-tcptrace.json");
    let without_bpf = profile_without(&profile, "bpf")?;
    let without_perf = profile_without(&profile, "perf_event_open")?;
    let port = free_port()?;
    let script = workspace_root().join("xtask/scripts/image-verify.sh");
    run_cmd(
        Command::new("unshare")
            .arg("-m")
            .arg("sh")
            .arg(&script)
            .args([agent_tag, client_tag, &port.to_string()])
            .args([&profile, &without_bpf, &without_perf])
            .env(
                "CONTAINERS_CONF",
                workspace_root().join("xtask/containers.conf"),
            ),
    )
}

/// deploy's seccomp profile without its rule allowing `syscall`, written next to the
/// staged images: the profile the agent would get without that addition.
fn profile_without(profile: &std::path::Path, syscall: &str) -> Result<PathBuf> {
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(profile)?)
        .with_context(|| format!("parsing {}", profile.display()))?;
    let rules = p["syscalls"].as_array_mut().context("no syscalls")?;
    let added = rules
        .iter_mut()
        .find(|r| {
            r["action"] == "SCMP_ACT_ALLOW" && r["names"] == json!(["bpf", "perf_event_open"])
        })
        .context("no rule allowing bpf and perf_event_open")?;
    added["names"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n != syscall);
    let path = target_dir()
        .join("image")
        .join(format!("seccomp-without-{syscall}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&p)?)?;
    Ok(path)
}
