//! `cargo xtask image [--verify]`: the container image, `FROM scratch` with the agent
//! built statically (musl), so the image holds one file and no shell. `--verify` runs it
//! with podman as the docs say and checks it attributes another container's connection.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{cargo, run_cmd, workspace_root};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

pub fn tag() -> String {
    format!("localhost/tcptrace:{}", env!("CARGO_PKG_VERSION"))
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
    run_cmd(cargo().args([
        "build",
        "--release",
        "--package",
        "tcptrace-agent",
        "--target",
        MUSL,
    ]))?;
    let binary = workspace_root().join(format!("target/{MUSL}/release/tcptrace"));
    let context = stage(
        "tcptrace",
        &[(binary, "tcptrace")],
        "FROM scratch\nCOPY tcptrace /tcptrace\nENTRYPOINT [\"/tcptrace\"]\nCMD [\"run\"]\n",
    )?;
    run_cmd(podman().args(["build", "-q", "-t", &tag()]).arg(&context))?;
    let size = podman()
        .args(["image", "inspect", "-f", "{{.Size}}", &tag()])
        .output()
        .context("podman image inspect")?;
    println!(
        "image: {} ({} bytes)",
        tag(),
        String::from_utf8_lossy(&size.stdout).trim()
    );
    if verify {
        verify_image()?;
    }
    Ok(())
}

/// A build context in target/image/<name>: the files and a Containerfile.
fn stage(name: &str, files: &[(PathBuf, &str)], containerfile: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/image").join(name);
    std::fs::create_dir_all(&dir)?;
    for (from, to) in files {
        std::fs::copy(from, dir.join(to)).with_context(|| format!("copying {}", from.display()))?;
    }
    std::fs::write(dir.join("Containerfile"), containerfile)?;
    Ok(dir)
}

fn verify_image() -> Result<()> {
    // The other container: a static busybox (Debian's busybox-static), nothing else.
    let client_tag = format!(
        "localhost/tcptrace-test-client:{}",
        env!("CARGO_PKG_VERSION")
    );
    let context = stage(
        "client",
        &[(PathBuf::from("/bin/busybox"), "busybox")],
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )?;
    run_cmd(
        podman()
            .args(["build", "-q", "-t", &client_tag])
            .arg(&context),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let script = workspace_root().join("xtask/scripts/image-verify.sh");
    run_cmd(
        Command::new("unshare")
            .arg("-m")
            .arg("sh")
            .arg(&script)
            .args([tag(), client_tag, port.to_string()])
            .env(
                "CONTAINERS_CONF",
                workspace_root().join("xtask/containers.conf"),
            ),
    )
}
