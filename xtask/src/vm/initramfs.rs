//! What goes in the guest: busybox, the agent and its integration test binaries as
//! cargo built them, the shared libraries they load, and the /init script that runs them
//! and reports on the console.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{
    cpio::Cpio,
    formats::{FORMAT_END, FORMAT_MARKER, TRACEPOINT_FORMATS},
    qemu::{EXIT_MARKER, STARTED_MARKER},
};
use crate::cargo;

/// The binaries of one `cargo test --no-run`.
pub(super) struct Built {
    /// Where the test binaries expect the agent: they run `env!("CARGO_BIN_EXE_tcptrace")`.
    agent: PathBuf,
    /// (test target name, test binary)
    tests: Vec<(String, PathBuf)>,
}

/// `cargo test --no-run` for the named targets; cargo's JSON messages say where the
/// binaries are (hashed names under deps/) and where the agent binary is.
pub(super) fn build_tests(tests: &[String]) -> Result<Built> {
    if tests.is_empty() {
        bail!("no test targets to run (--tests)");
    }
    let mut cmd = cargo();
    cmd.args(["test", "--package", "tcptrace-agent", "--no-run"])
        // Diagnostics still reach the terminal as text; only stdout is JSON.
        .arg("--message-format=json-render-diagnostics");
    for t in tests {
        cmd.args(["--test", t]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut agent = None;
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match artifact(line) {
            Some(Artifact::Bin(name, path)) if name == "tcptrace" => agent = Some(path),
            Some(Artifact::Test(name, path)) => found.push((name, path)),
            _ => {}
        }
    }
    let agent = agent.context("cargo did not report the tcptrace binary")?;
    let mut built = Vec::new();
    for t in tests {
        let (_, path) = found
            .iter()
            .find(|(name, _)| name == t)
            .with_context(|| format!("cargo did not report the test binary of {t}"))?;
        built.push((t.clone(), path.clone()));
    }
    Ok(Built {
        agent,
        tests: built,
    })
}

enum Artifact {
    Bin(String, PathBuf),
    Test(String, PathBuf),
}

/// An executable from one of cargo's `compiler-artifact` messages.
fn artifact(line: &str) -> Option<Artifact> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" {
        return None;
    }
    let name = msg["target"]["name"].as_str()?.to_string();
    let executable = PathBuf::from(msg["executable"].as_str()?);
    let is_test = msg["profile"]["test"] == true;
    let kind = &msg["target"]["kind"];
    if *kind == serde_json::json!(["test"]) && is_test {
        Some(Artifact::Test(name, executable))
    } else if *kind == serde_json::json!(["bin"]) && !is_test {
        Some(Artifact::Bin(name, executable))
    } else {
        None
    }
}

/// The guest's root: busybox, the agent and test binaries at the absolute paths they
/// were built at (the tests run the agent by its compiled-in path), their shared
/// libraries, and /init.
pub(super) fn build_initramfs(built: &Built, filter: &[String], out: &Path) -> Result<()> {
    let mut root = Cpio::default();
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: apt-get install busybox-static (cargo xtask setup)");
    }
    root.file_from(busybox, "/bin/busybox")?;
    let mut binaries = vec![busybox.to_path_buf(), built.agent.clone()];
    binaries.extend(built.tests.iter().map(|(_, p)| p.clone()));
    let lib_dirs = add_binaries(&mut root, &binaries)?;
    root.file(
        "/init",
        0o755,
        init_script(built, filter, &lib_dirs).into_bytes(),
    );
    // The kernel opens /dev/console for /init before anything can mount devtmpfs.
    root.char_device("/dev/console", 0o600, (5, 1));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    root.write_gzip(out)
}

/// Add each binary and the shared libraries it loads at their host paths; returns the
/// libraries' directories, for LD_LIBRARY_PATH.
fn add_binaries(root: &mut Cpio, binaries: &[PathBuf]) -> Result<Vec<String>> {
    let mut lib_dirs = Vec::new();
    for binary in binaries {
        root.file_from(binary, &binary.to_string_lossy())?;
        for lib in shared_libraries(binary)? {
            root.file_from(&lib, &lib.to_string_lossy())?;
            let dir = lib.parent().map(|d| d.to_string_lossy().into_owned());
            if let Some(dir) = dir.filter(|d| !lib_dirs.contains(d)) {
                lib_dirs.push(dir);
            }
        }
    }
    Ok(lib_dirs)
}

/// The libraries the dynamic loader maps for `binary` (and the loader itself), by
/// absolute path. A static binary has none.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("starting ldd")?;
    if !out.status.success() {
        return Ok(Vec::new()); // "not a dynamic executable"
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Single-quoted for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// /init: mount what the agent needs, say the kernel booted, print the tracepoint
/// formats, run each test binary, and end with the exit marker and a power-off.
fn init_script(built: &Built, filter: &[String], lib_dirs: &[String]) -> String {
    let agent = quote(&built.agent.to_string_lossy());
    let filter: Vec<String> = filter.iter().map(|f| quote(f)).collect();
    let mut s = format!(
        r#"#!/bin/busybox sh
# Generated by xtask/src/vm/initramfs.rs: the vm-test guest's first and only process.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run /root
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
export LD_LIBRARY_PATH={libs}
# An emulated CPU (TCG, one vCPU) verifies and loads the programs many times slower
# than a real one: the tests wait this long for the agent to attach.
export TCPTRACE_TEST_ATTACH_SECS=180
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
echo "{STARTED_MARKER}$(uname -r)"
status=0
if {agent} --help 2>&1 | grep -qE '^ +probes( |$)'; then
    echo '--- tcptrace probes'
    {agent} probes
    echo "--- tcptrace probes: exit $?"
else
    echo '--- tcptrace has no probes subcommand'
fi
for f in {formats}; do
    echo "{FORMAT_MARKER}$f"
    cat /sys/kernel/tracing/events/$f/format 2>/dev/null
    echo "{FORMAT_END}"
done
"#,
        formats = TRACEPOINT_FORMATS.join(" "),
        libs = quote(&lib_dirs.join(":")),
    );
    for (name, binary) in &built.tests {
        s += &format!(
            r#"echo '--- test {name}'
cd / && {binary} --test-threads=1 {filter}
rc=$?
echo "--- test {name}: exit $rc"
[ $rc -eq 0 ] || status=$rc
"#,
            binary = quote(&binary.to_string_lossy()),
            filter = filter.join(" "),
        );
    }
    s += &format!(
        r#"if [ $status -ne 0 ]; then
    echo '--- last kernel messages'
    dmesg | tail -n 20
fi
echo "{EXIT_MARKER}$status"
poweroff -f
"#
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_artifacts() {
        let test = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/a#0.1.0","manifest_path":"/w/a/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"trace","src_path":"/w/a/tests/trace.rs","edition":"2021","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/w/target/debug/deps/trace-1"],"executable":"/w/target/debug/deps/trace-1","fresh":true}"#;
        let bin = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"crate_types":["bin"],"name":"tcptrace","src_path":"/w/a/src/main.rs","test":true},"profile":{"opt_level":"0","test":false},"executable":"/w/target/debug/tcptrace","fresh":true}"#;
        assert!(matches!(artifact(test),
            Some(Artifact::Test(n, p)) if n == "trace" && p == Path::new("/w/target/debug/deps/trace-1")));
        assert!(matches!(artifact(bin),
            Some(Artifact::Bin(n, p)) if n == "tcptrace" && p == Path::new("/w/target/debug/tcptrace")));
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"x"},"profile":{"test":false},"executable":null}"#;
        assert!(artifact(lib).is_none());
    }
}
