//! `cargo xtask vm-test --kernel 6.1`: boot Debian kernels under QEMU (pure emulation:
//! this host cannot nest KVM) with an initramfs holding the agent and its integration
//! test binaries, run the tests inside, and report pass/fail per kernel.
//!
//! Kernels come from Debian's archive, newest of a series in the suite and its security
//! pocket, verified against the index's SHA256 and cached, so a rerun downloads nothing.
//!
//! - `debian`: the archive's Packages index, download, checksum, cache, kernel config.
//! - `initramfs`: what goes in the guest: the test binaries, their libraries, /init.
//! - `cpio`: the archive the kernel unpacks as its root.
//! - `qemu`: booting a guest and reading its console.
//! - `formats`: the guest's tracepoint format files, kept as parser fixtures.
mod cpio;
mod debian;
mod formats;
mod initramfs;
mod qemu;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use self::{debian::KernelImage, initramfs::Built, qemu::Boot};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Lines of the log shown when the guest died without saying how its tests went.
const TAIL_LINES: usize = 30;

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

    /// One line of progress about this kernel; guests run side by side, so every line
    /// says which one it is about.
    fn say(self, what: &str) {
        println!("vm-test {}: {what}", self.series());
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
    let built = initramfs::build_tests(&options.tests)?;
    let initrd = write_initramfs(&built, &options.filter)?;
    let results = boot_side_by_side(kernels, &initrd, options);
    let mut outcome = Outcome {
        all_passed: true,
        tests_passed: 0,
        tests_failed: 0,
    };
    let mut summary = Vec::new();
    for (kernel, result) in &results {
        if let Ok(run) = result {
            outcome.tests_passed += run.tests.0;
            outcome.tests_failed += run.tests.1;
        }
        outcome.all_passed &= result.as_ref().is_ok_and(|r| r.passed);
        summary.push(summary_line(*kernel, result));
    }
    // After every guest's console, so the verdicts are together at the end.
    println!();
    for line in &summary {
        println!("{line}");
    }
    Ok(outcome)
}

/// The initramfs for this run, built beside its final name and renamed: a guest still
/// booting from the previous one keeps its copy.
fn write_initramfs(built: &Built, filter: &[String]) -> Result<PathBuf> {
    let cache = cache_dir();
    let initrd = cache.join("initramfs.cpio.gz");
    let started = Instant::now();
    let partial = cache.join(format!("initramfs.cpio.gz.{}", std::process::id()));
    if let Err(e) = initramfs::build_initramfs(built, filter, &partial) {
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
    Ok(initrd)
}

/// Each guest is one QEMU process emulating one CPU: they run side by side, a host core
/// each, and their console lines carry the kernel's name.
fn boot_side_by_side(
    kernels: &[Kernel],
    initrd: &Path,
    options: &Options,
) -> Vec<(Kernel, Result<KernelRun>)> {
    std::thread::scope(|s| {
        let guests: Vec<_> = kernels
            .iter()
            .map(|&kernel| (kernel, s.spawn(move || run_kernel(kernel, initrd, options))))
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
    })
}

fn summary_line(kernel: Kernel, result: &Result<KernelRun>) -> String {
    match result {
        Ok(run) => format!(
            "vm-test {} ({} {}): {} ({} s)",
            kernel.series(),
            run.image.package,
            run.image.version,
            if run.passed { "PASS" } else { "FAIL" },
            run.seconds
        ),
        Err(e) => format!("vm-test {}: FAIL ({e:#})", kernel.series()),
    }
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
    let log = cache_dir().join(kernel.suite()).join("last-run.log");
    let mut last_err = None;
    for flavour in debian::FLAVOURS {
        let image = match debian::fetch_kernel(kernel, flavour, options.refresh) {
            Ok(image) => image,
            Err(e) => {
                kernel.say(&format!("{flavour}: {e:#}"));
                last_err = Some(e);
                continue;
            }
        };
        let boot = qemu::boot(kernel, &image, initrd, options.timeout, &log)?;
        // A kernel that stopped by itself before /init cannot run this guest: try the
        // next flavour. One that was still booting at the timeout is just too slow.
        if !boot.started && !boot.timed_out {
            kernel.say(&format!("{} never reached /init", image.package));
            print_tail(&boot.lines);
            last_err = Some(anyhow::anyhow!("{} did not boot", image.package));
            continue;
        }
        let passed = guest_passed(kernel, &boot, &log);
        if options.record_formats {
            formats::record_formats(kernel, &boot.lines)?;
        }
        return Ok(KernelRun {
            image,
            passed,
            seconds: boot.elapsed.as_secs(),
            tests: test_counts(&boot.lines),
        });
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no kernel flavour to try")))
}

/// Whether /init reported that every test binary passed; if not, say why.
fn guest_passed(kernel: Kernel, boot: &Boot, log: &Path) -> bool {
    match boot.exit_code {
        Some(0) => true,
        Some(code) => {
            kernel.say(&format!("guest tests exited with {code}"));
            false
        }
        None => {
            let why = match (boot.timed_out, boot.started) {
                (true, false) => "timed out before /init",
                (true, true) => "timed out",
                _ => "no exit marker (kernel panic or timeout?)",
            };
            kernel.say(&format!("{why}; log {}", log.display()));
            print_tail(&boot.lines);
            false
        }
    }
}

/// (passed, failed) summed over the libtest "test result:" lines of the console.
fn test_counts(lines: &[String]) -> (u64, u64) {
    lines
        .iter()
        .filter_map(|l| crate::test_result_counts(l))
        .fold((0, 0), |(p, f), (lp, lf)| (p + lp, f + lf))
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
