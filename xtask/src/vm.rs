//! `cargo xtask vm-test --kernel 6.1`: boot Debian kernels under QEMU (pure emulation:
//! this host cannot nest KVM) with an initramfs holding the agent and its integration
//! test binaries, run the tests inside, and report pass/fail per kernel.
//!
//! Kernels come from Debian's archive, newest of a series in the suite and its security
//! pocket, verified against the index's SHA256 and cached, so a rerun downloads nothing.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, run_cmd};

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Printed by the guest's /init once it runs, and as its very last line.
const STARTED_MARKER: &str = "TCPTRACE-VM-KERNEL ";
const EXIT_MARKER: &str = "TCPTRACE-VM-EXIT ";
const FORMAT_MARKER: &str = "TCPTRACE-VM-FORMAT ";
const FORMAT_END: &str = "TCPTRACE-VM-FORMAT-END";

/// Tracepoints whose format files the guest prints, so `--record-formats` can keep them
/// as parser fixtures (tcptrace-agent/tests/formats/<series>-<event>).
const TRACEPOINT_FORMATS: &[&str] = &[
    "sock/inet_sock_set_state",
    "sock/inet_sk_error_report",
    "tcp/tcp_retransmit_skb",
    "tcp/tcp_retransmit_synack",
    "tcp/tcp_receive_reset",
    "tcp/tcp_send_reset",
    "tcp/tcp_destroy_sock",
    "syscalls/sys_exit_connect",
];
/// Lines of the log shown when the guest died without saying how its tests went.
const TAIL_LINES: usize = 30;
/// Without these the guest cannot start, print, or load the agent: no modules are
/// loaded, so each must be built in (=y).
const REQUIRED_CONFIG: &[&str] = &[
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_DEVTMPFS",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_IPV6",
];
/// The cloud flavour first (what cloud nodes run, fewer drivers to probe while booting);
/// the generic flavour is the fallback.
const FLAVOURS: &[&str] = &["cloud-amd64", "amd64"];

/// A Debian kernel series the agent must work on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Debian 11 bullseye: 5.10, the oldest kernel of a Debian release still updated.
    Linux510,
    /// Debian 12 bookworm: 6.1.
    Linux61,
    /// Debian 13 trixie: 6.12.
    Linux612,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Linux510, Kernel::Linux61, Kernel::Linux612];

    fn series(self) -> &'static str {
        match self {
            Kernel::Linux510 => "5.10",
            Kernel::Linux61 => "6.1",
            Kernel::Linux612 => "6.12",
        }
    }

    fn suite(self) -> &'static str {
        match self {
            Kernel::Linux510 => "bullseye",
            Kernel::Linux61 => "bookworm",
            Kernel::Linux612 => "trixie",
        }
    }
}

/// What `--kernel` named: Debian kernels to boot, and whether the host kernel was asked
/// for (it is covered by the ordinary test run, not booted here).
pub fn parse_kernels(args: &[String]) -> Result<(Vec<Kernel>, bool)> {
    let mut kernels = Vec::new();
    let mut host = false;
    for arg in args {
        let named: &[Kernel] = match arg.as_str() {
            "all" => &Kernel::ALL,
            "host" => {
                host = true;
                &[]
            }
            series => match Kernel::ALL.iter().find(|k| k.series() == series) {
                Some(k) => std::slice::from_ref(k),
                None => bail!("unknown kernel {series:?}: expected 5.10, 6.1, 6.12, host or all"),
            },
        };
        for k in named {
            if !kernels.contains(k) {
                kernels.push(*k);
            }
        }
    }
    Ok((kernels, host))
}

pub struct Options {
    /// Integration test targets of tcptrace-agent (tests/<name>.rs) to run in the guest.
    pub tests: Vec<String>,
    /// libtest arguments for every test binary: name filters, `--skip`, `--exact`.
    pub filter: Vec<String>,
    /// Per kernel, boot to power-off.
    pub timeout: Duration,
    /// Look for a newer kernel package even when one is cached.
    pub refresh: bool,
    /// Save the guest's tracepoint format files as parser fixtures.
    pub record_formats: bool,
}

impl Options {
    pub fn new(tests: Vec<String>, filter: Vec<String>) -> Options {
        Options {
            tests,
            filter,
            timeout: DEFAULT_TIMEOUT,
            refresh: false,
            record_formats: false,
        }
    }
}

/// `cargo xtask vm-test`: run the kernels named on the command line; fail if any failed.
pub fn vm_test(kernel_args: &[String], options: &Options) -> Result<()> {
    let (kernels, host) = parse_kernels(kernel_args)?;
    if host {
        println!("vm-test host: the host kernel is tested by `cargo xtask test`; not booted here");
    }
    if kernels.is_empty() {
        return Ok(());
    }
    if !run_kernels(&kernels, options)?.all_passed {
        bail!("vm-test failed on at least one kernel");
    }
    Ok(())
}

/// What a run of several kernels came to.
pub struct Outcome {
    /// Every kernel booted and its guest tests passed.
    pub all_passed: bool,
    /// libtest's counts over every guest, from its "test result:" lines.
    pub tests_passed: u64,
    pub tests_failed: u64,
}

/// Build the tests, boot each kernel with them and print one summary line per kernel.
/// Reusable by `cargo xtask test` for one fast kernel.
pub fn run_kernels(kernels: &[Kernel], options: &Options) -> Result<Outcome> {
    let built = build_tests(&options.tests)?;
    let cache = cache_dir();
    let initrd = cache.join("initramfs.cpio.gz");
    let started = Instant::now();
    // Built beside it and renamed: a guest booting from the old one keeps its copy.
    let partial = cache.join(format!("initramfs.cpio.gz.{}", std::process::id()));
    if let Err(e) = build_initramfs(&built, &options.filter, &partial) {
        std::fs::remove_file(&partial).ok();
        return Err(e);
    }
    std::fs::rename(&partial, &initrd)?;
    println!(
        "vm-test: initramfs {} ({} KiB, {:.1} s)",
        initrd.display(),
        std::fs::metadata(&initrd)?.len() / 1024,
        started.elapsed().as_secs_f64()
    );
    // Each guest is one QEMU process emulating one CPU: they run side by side, a host
    // core each, and their console lines carry the kernel's name.
    let results: Vec<(Kernel, Result<KernelRun>)> = std::thread::scope(|s| {
        let guests: Vec<_> = kernels
            .iter()
            .map(|&kernel| {
                let initrd = &initrd;
                (kernel, s.spawn(move || run_kernel(kernel, initrd, options)))
            })
            .collect();
        guests
            .into_iter()
            .map(|(kernel, guest)| {
                let result = guest
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the guest's thread panicked")));
                (kernel, result)
            })
            .collect()
    });
    let mut summary = Vec::new();
    let (mut tests_passed, mut tests_failed) = (0, 0);
    for (kernel, result) in results {
        if let Ok(run) = &result {
            tests_passed += run.tests.0;
            tests_failed += run.tests.1;
        }
        let line = match &result {
            Ok(run) => format!(
                "vm-test {} ({} {}): {} ({} s)",
                kernel.series(),
                run.image.package,
                run.image.version,
                if run.passed { "PASS" } else { "FAIL" },
                run.seconds
            ),
            Err(e) => format!("vm-test {}: FAIL ({e:#})", kernel.series()),
        };
        summary.push((line, result.is_ok_and(|r| r.passed)));
    }
    println!();
    for (line, _) in &summary {
        println!("{line}");
    }
    Ok(Outcome {
        all_passed: summary.iter().all(|(_, passed)| *passed),
        tests_passed,
        tests_failed,
    })
}

struct KernelRun {
    image: KernelImage,
    passed: bool,
    seconds: u64,
    /// (passed, failed) guest tests.
    tests: (u64, u64),
}

/// Boot the preferred flavour; if its kernel never reached /init, try the next one.
fn run_kernel(kernel: Kernel, initrd: &Path, options: &Options) -> Result<KernelRun> {
    let suite_dir = cache_dir().join(kernel.suite());
    let mut last_err = None;
    for flavour in FLAVOURS {
        let image = match fetch_kernel(kernel, flavour, options.refresh) {
            Ok(image) => image,
            Err(e) => {
                println!("vm-test {}: {flavour}: {e:#}", kernel.series());
                last_err = Some(e);
                continue;
            }
        };
        let log = suite_dir.join("last-run.log");
        let boot = boot(kernel, &image, initrd, options.timeout, &log)?;
        // A kernel that stopped by itself before /init cannot run this guest: try the
        // next flavour. One that was still booting at the timeout is just too slow.
        if !boot.started && !boot.timed_out {
            println!(
                "vm-test {}: {} never reached /init",
                kernel.series(),
                image.package
            );
            print_tail(&boot.lines);
            last_err = Some(anyhow::anyhow!("{} did not boot", image.package));
            continue;
        }
        let passed = match boot.exit_code {
            Some(0) => true,
            Some(code) => {
                println!(
                    "vm-test {}: guest tests exited with {code}",
                    kernel.series()
                );
                false
            }
            None => {
                let why = match (boot.timed_out, boot.started) {
                    (true, false) => "timed out before /init",
                    (true, true) => "timed out",
                    _ => "no exit marker (kernel panic or timeout?)",
                };
                println!("vm-test {}: {why}; log {}", kernel.series(), log.display());
                print_tail(&boot.lines);
                false
            }
        };
        if options.record_formats {
            record_formats(kernel, &boot.lines)?;
        }
        let tests = boot
            .lines
            .iter()
            .filter_map(|l| crate::test_result_counts(l))
            .fold((0, 0), |(p, f), (lp, lf)| (p + lp, f + lf));
        return Ok(KernelRun {
            image,
            passed,
            seconds: boot.elapsed.as_secs(),
            tests,
        });
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no kernel flavour to try")))
}

fn print_tail(lines: &[String]) {
    println!("--- last {TAIL_LINES} lines of the guest's console:");
    for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
        println!("{line}");
    }
    println!("---");
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TCPTRACE_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/tcptrace/vm")
}

// ---------------------------------------------------------------------------------------
// Building the agent and its test binaries.

struct Built {
    /// Where the test binaries expect the agent: they run `env!("CARGO_BIN_EXE_tcptrace")`.
    agent: PathBuf,
    /// (test target name, test binary)
    tests: Vec<(String, PathBuf)>,
}

/// `cargo test --no-run` for the named targets; cargo's JSON messages say where the
/// binaries are (hashed names under deps/) and where the agent binary is.
fn build_tests(tests: &[String]) -> Result<Built> {
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

// ---------------------------------------------------------------------------------------
// Debian kernel packages.

struct KernelImage {
    vmlinuz: PathBuf,
    package: String,
    version: String,
}

/// One stanza of a Packages index.
struct Deb {
    package: String,
    version: String,
    filename: String,
    sha256: String,
    mirror: &'static str,
}

/// The newest kernel of this series and flavour, from the cache unless `refresh`.
fn fetch_kernel(kernel: Kernel, flavour: &str, refresh: bool) -> Result<KernelImage> {
    let dir = cache_dir().join(kernel.suite()).join(flavour);
    let cached = read_cached(&dir);
    match cached {
        Some(image) if !refresh => {
            say(
                kernel,
                &format!("{} {} cached", image.package, image.version),
            );
            return Ok(image);
        }
        _ => {}
    }
    let deb = newest_deb(kernel, flavour)?;
    if let Some(image) = cached.filter(|c| c.package == deb.package && c.version == deb.version) {
        say(
            kernel,
            &format!("{} {} cached (newest)", deb.package, deb.version),
        );
        return Ok(image);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("kernel.deb");
    let url = format!("{}/{}", deb.mirror, deb.filename);
    run_cmd(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&file)
            .arg(&url),
    )?;
    verify_sha256(&file, &deb.sha256)?;
    extract_kernel(&file, &dir)?;
    std::fs::remove_file(&file).ok();
    check_config(&dir.join("config"))?;
    std::fs::write(
        dir.join("kernel.txt"),
        format!("{} {}\n", deb.package, deb.version),
    )?;
    say(
        kernel,
        &format!("{} {} downloaded", deb.package, deb.version),
    );
    read_cached(&dir).context("kernel extracted but not readable from the cache")
}

fn say(kernel: Kernel, what: &str) {
    println!("vm-test {}: {what}", kernel.series());
}

/// A complete cache entry: `kernel.txt` is written last, so its presence means the
/// vmlinuz beside it was verified and its config checked.
fn read_cached(dir: &Path) -> Option<KernelImage> {
    let text = std::fs::read_to_string(dir.join("kernel.txt")).ok()?;
    let (package, version) = text.trim().split_once(' ')?;
    let vmlinuz = dir.join("vmlinuz");
    vmlinuz.exists().then(|| KernelImage {
        vmlinuz,
        package: package.to_string(),
        version: version.to_string(),
    })
}

/// Newest matching package across the suite and its security pocket (where point
/// releases lag behind kernel security updates).
fn newest_deb(kernel: Kernel, flavour: &str) -> Result<Deb> {
    let suite = kernel.suite();
    let indexes = [
        (MIRROR, format!("{MIRROR}/dists/{suite}")),
        (
            SECURITY_MIRROR,
            format!("{SECURITY_MIRROR}/dists/{suite}-security"),
        ),
    ];
    let mut best: Option<Deb> = None;
    for (mirror, dists) in indexes {
        let index = packages_index(&format!("{dists}/main/binary-amd64/Packages.xz"))?;
        for deb in parse_packages(&index, mirror) {
            if !is_kernel_image(&deb.package, kernel.series(), flavour) {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| version_newer(&deb.version, &b.version))
            {
                best = Some(deb);
            }
        }
    }
    best.with_context(|| {
        format!(
            "no linux-image-{}.*-{flavour} in {suite} or {suite}-security",
            kernel.series()
        )
    })
}

/// `linux-image-<abi>-<flavour>` whose ABI is of this series. The ABI is digits, dots,
/// dashes and a `+debNN` tag; any other word in it is another flavour (cloud, rt), which
/// matters because "amd64" is also the tail of "cloud-amd64".
fn is_kernel_image(package: &str, series: &str, flavour: &str) -> bool {
    let Some(abi) = package
        .strip_prefix("linux-image-")
        .and_then(|rest| rest.strip_suffix(&format!("-{flavour}")))
    else {
        return false;
    };
    abi.starts_with(&format!("{series}."))
        && abi
            .replace("deb", "")
            .chars()
            .all(|c| c.is_ascii_digit() || ".-+".contains(c))
}

/// A Packages.xz index, decompressed by xz as it downloads.
fn packages_index(url: &str) -> Result<String> {
    let mut curl = Command::new("curl")
        .args(["-fsSL", "--retry", "3", url])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting curl")?;
    let out = Command::new("xz")
        .arg("-dc")
        .stdin(curl.stdout.take().context("curl stdout")?)
        .output()
        .context("starting xz")?;
    let fetched = curl.wait().context("waiting for curl")?;
    if !fetched.success() || !out.status.success() || out.stdout.is_empty() {
        bail!(
            "downloading {url} failed (curl {fetched}, xz {})",
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_packages(index: &str, mirror: &'static str) -> Vec<Deb> {
    index
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                    .map(str::to_string)
            };
            Some(Deb {
                package: field("Package")?,
                version: field("Version")?,
                filename: field("Filename")?,
                sha256: field("SHA256")?,
                mirror,
            })
        })
        .collect()
}

/// Debian version order (epochs, `~`, revisions) is dpkg's to define.
fn version_newer(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}

fn verify_sha256(file: &Path, want: &str) -> Result<()> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("starting sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let got = text.split_whitespace().next().unwrap_or_default();
    if got != want {
        std::fs::remove_file(file).ok();
        bail!(
            "{}: SHA256 {got} does not match the index's {want}",
            file.display()
        );
    }
    Ok(())
}

/// Keep only boot/vmlinuz-* and boot/config-* of the package; the modules are not needed
/// (everything the guest uses is built in, see REQUIRED_CONFIG).
fn extract_kernel(deb: &Path, dir: &Path) -> Result<()> {
    let tree = dir.join("extract");
    std::fs::remove_dir_all(&tree).ok();
    run_cmd(Command::new("dpkg").arg("-x").arg(deb).arg(&tree))?;
    for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("config-", "config")] {
        let found = std::fs::read_dir(tree.join("boot"))?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .with_context(|| format!("no boot/{prefix}* in {}", deb.display()))?;
        std::fs::rename(found.path(), dir.join(name))?;
    }
    std::fs::remove_dir_all(&tree).ok();
    Ok(())
}

fn check_config(config: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let missing: Vec<&str> = REQUIRED_CONFIG
        .iter()
        .copied()
        .filter(|option| !text.lines().any(|l| l == format!("{option}=y")))
        .collect();
    if !missing.is_empty() {
        bail!("kernel config lacks {}", missing.join(", "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The initramfs.

/// The guest's root: busybox, the agent and test binaries at the absolute paths they
/// were built at (the tests run the agent by its compiled-in path), their shared
/// libraries, and /init.
fn build_initramfs(built: &Built, filter: &[String], out: &Path) -> Result<()> {
    let mut root = Cpio::default();
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: apt-get install busybox-static (cargo xtask setup)");
    }
    root.file_from(busybox, "/bin/busybox")?;
    let mut binaries = vec![busybox.to_path_buf(), built.agent.clone()];
    binaries.extend(built.tests.iter().map(|(_, p)| p.clone()));
    let mut lib_dirs = Vec::new();
    for binary in &binaries {
        root.file_from(binary, &binary.to_string_lossy())?;
        for lib in shared_libraries(binary)? {
            root.file_from(&lib, &lib.to_string_lossy())?;
            let dir = lib.parent().map(|d| d.to_string_lossy().into_owned());
            if let Some(dir) = dir.filter(|d| !lib_dirs.contains(d)) {
                lib_dirs.push(dir);
            }
        }
    }
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

/// Write the format files the guest printed as parser fixtures of this kernel series.
fn record_formats(kernel: Kernel, lines: &[String]) -> Result<()> {
    let dir = crate::workspace_root().join("tcptrace-agent/tests/formats");
    // A tracepoint this kernel lacks prints nothing: no fixture, and the parser tests
    // treat the missing file as a missing tracepoint.
    for (event, text) in formats_in(lines)
        .into_iter()
        .filter(|(_, t)| t.contains("field:"))
    {
        let path = dir.join(format!("{}-{event}", kernel.series()));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("vm-test {}: recorded {}", kernel.series(), path.display());
    }
    Ok(())
}

/// (event name, format text) for every format section of a guest log.
fn formats_in(lines: &[String]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in lines {
        if let Some(path) = after_marker(line, FORMAT_MARKER) {
            let event = path.rsplit('/').next().unwrap_or(path).to_string();
            current = Some((event, String::new()));
        } else if line.trim() == FORMAT_END {
            found.extend(current.take());
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    found
}

/// Single-quoted for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn init_script(built: &Built, filter: &[String], lib_dirs: &[String]) -> String {
    let agent = quote(&built.agent.to_string_lossy());
    let filter: Vec<String> = filter.iter().map(|f| quote(f)).collect();
    let mut s = format!(
        r#"#!/bin/busybox sh
# Generated by xtask/src/vm.rs: the vm-test guest's first and only process.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run /root
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
export LD_LIBRARY_PATH={libs}
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

/// A cpio archive in the "newc" format the kernel unpacks as its initramfs; parent
/// directories are added for every path.
#[derive(Default)]
struct Cpio {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    CharDevice { mode: u32, rdev: (u32, u32) },
}

impl Cpio {
    fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.entries
                .entry(dir.to_string_lossy().into_owned())
                .or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path.to_string(), entry);
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.add(path, Entry::File { mode, data });
    }

    /// Copy a host file (following symlinks) to `path`, keeping its permission bits.
    fn file_from(&mut self, host: &Path, path: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        self.file(path, mode, data);
        Ok(())
    }

    fn char_device(&mut self, path: &str, mode: u32, rdev: (u32, u32)) {
        self.add(path, Entry::CharDevice { mode, rdev });
    }

    /// Parents sort before their children (a prefix sorts first), as unpacking needs.
    fn write_gzip(&self, out: &Path) -> Result<()> {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut gzip = Command::new("gzip")
            .arg("-1")
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context("starting gzip")?;
        let mut stdin = std::io::BufWriter::new(gzip.stdin.take().context("gzip stdin")?);
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040_755, &[], (0, 0)),
                Entry::File { mode, data } => (0o100_000 | mode, data, (0, 0)),
                Entry::CharDevice { mode, rdev } => (0o020_000 | mode, &[], *rdev),
            };
            write_cpio_entry(&mut stdin, ino as u32 + 1, path, mode, data, rdev)?;
        }
        write_cpio_entry(&mut stdin, 0, "TRAILER!!!", 0, &[], (0, 0))?;
        stdin.flush()?;
        drop(stdin);
        let status = gzip.wait()?;
        if !status.success() {
            bail!("gzip failed ({status})");
        }
        Ok(())
    }
}

fn write_cpio_entry(
    out: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<()> {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).context("file too large for cpio")?,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::from("070701");
    for f in fields {
        header += &format!("{f:08x}");
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])?;
    Ok(())
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

// ---------------------------------------------------------------------------------------
// Running the guest.

struct Boot {
    /// The guest's /init printed its first line: the kernel booted.
    started: bool,
    /// Killed at the timeout rather than powered off.
    timed_out: bool,
    exit_code: Option<i32>,
    lines: Vec<String>,
    elapsed: Duration,
}

/// Boot the kernel, stream its console with a prefix and into `log`, and stop it at the
/// timeout.
fn boot(
    kernel: Kernel,
    image: &KernelImage,
    initrd: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<Boot> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        // -enable-kvm fails on this host (a Firecracker VM): pure emulation.
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .arg("-kernel")
        .arg(&image.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        // No network card: the tests use loopback, and no NIC means no PXE option ROM.
        .args(["-nic", "none", "-nographic", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    let readers = [
        forward_lines(qemu.stdout.take().context("qemu stdout")?, tx.clone()),
        forward_lines(qemu.stderr.take().context("qemu stderr")?, tx),
    ];
    let prefix = format!("[vm {}]", kernel.series());
    let deadline = start + timeout;
    let mut boot = Boot {
        started: false,
        timed_out: false,
        exit_code: None,
        lines: Vec::new(),
        elapsed: Duration::ZERO,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log_file, "{line}")?;
                println!("{prefix} {line}");
                if let Some(release) = after_marker(&line, STARTED_MARKER) {
                    boot.started = true;
                    println!(
                        "{prefix} booted {release} in {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                }
                if let Some(code) = after_marker(&line, EXIT_MARKER) {
                    boot.exit_code = code.parse().ok();
                }
                boot.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                println!(
                    "{prefix} timed out after {} s: killing qemu",
                    timeout.as_secs()
                );
                qemu.kill().ok();
                boot.timed_out = true;
                break;
            }
            // Both streams closed: qemu exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    qemu.wait().context("waiting for qemu")?;
    for r in readers {
        r.join().ok();
    }
    boot.elapsed = start.elapsed();
    Ok(boot)
}

/// What follows `marker` on a console line. Not only at its start: the firmware's
/// terminal resets may share the line with the guest's first output.
fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| line[i + marker.len()..].trim())
}

/// The line without terminal control sequences: the firmware clears the screen and
/// resets the terminal, which must not happen to the user's terminal.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // CSI: ESC [ parameters, then one final byte in @..~.
            '\x1b' if chars.clone().next() == Some('[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // Any other escape is ESC plus one byte (ESC c: reset).
            '\x1b' => {
                chars.next();
            }
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Send each line of `stream` (serial output ends lines with \r\n) to `tx`.
fn forward_lines(
    stream: impl Read + Send + 'static,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = printable(&String::from_utf8_lossy(&buf));
            buf.clear();
            if tx.send(line).is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packages_of_one_flavour_and_series() {
        assert!(is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64",
            "6.1",
            "cloud-amd64"
        ));
        assert!(is_kernel_image(
            "linux-image-6.1.0-56-amd64",
            "6.1",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64",
            "6.1",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-rt-amd64",
            "6.1",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.12.117+deb12-amd64",
            "6.1",
            "amd64"
        ));
        assert!(is_kernel_image(
            "linux-image-6.12.117+deb13-amd64",
            "6.12",
            "amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "6.1",
            "cloud-amd64"
        ));
        assert!(!is_kernel_image(
            "linux-image-6.1.0-56-cloud-amd64-dbg",
            "6.1",
            "cloud-amd64"
        ));
    }

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

    #[test]
    fn markers_after_terminal_resets() {
        let line = printable("\x1bc\x1b[?7l\x1b[2JTCPTRACE-VM-EXIT 101\r\n");
        assert_eq!(line, "TCPTRACE-VM-EXIT 101");
        assert_eq!(after_marker(&line, EXIT_MARKER), Some("101"));
        assert_eq!(printable("a\tb\x1b[0mc"), "a\tbc");
    }

    #[test]
    fn cpio_entries_are_four_byte_aligned() {
        let mut out = Vec::new();
        write_cpio_entry(&mut out, 1, "init", 0o100_755, b"abcde", (0, 0)).unwrap();
        // 110-byte header + "init\0" = 115, padded to 116; 5 data bytes padded to 8.
        assert_eq!(out.len(), 116 + 8);
        assert!(out.starts_with(b"070701"));
    }
}
