//! One guest: QEMU booting a kernel with the initramfs, its serial console streamed to
//! the terminal (prefixed with the kernel's series) and to a log, watched for the
//! markers /init prints, and killed if it outlives the timeout.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{debian::KernelImage, Kernel};

/// Printed by the guest's /init once it runs, with the kernel's release after it.
pub(super) const STARTED_MARKER: &str = "TCPTRACE-VM-KERNEL ";
/// The very last line of /init, with its exit status after it.
pub(super) const EXIT_MARKER: &str = "TCPTRACE-VM-EXIT ";

/// How a guest's run went, from its console.
pub(super) struct Boot {
    /// The guest's /init printed its first line: the kernel booted.
    pub(super) started: bool,
    /// Killed at the timeout rather than powered off.
    pub(super) timed_out: bool,
    pub(super) exit_code: Option<i32>,
    pub(super) lines: Vec<String>,
    pub(super) elapsed: Duration,
}

/// Boot the kernel, stream its console with a prefix and into `log`, and stop it at the
/// timeout.
pub(super) fn boot(
    kernel: Kernel,
    image: &KernelImage,
    initrd: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<Boot> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut qemu = start_qemu(image, initrd)?;
    // Two readers, one channel: a line from either stream is shown as it comes.
    let (tx, rx) = mpsc::channel();
    let readers = [
        forward_lines(qemu.stdout.take().context("qemu stdout")?, tx.clone()),
        forward_lines(qemu.stderr.take().context("qemu stderr")?, tx),
    ];
    let console = Console {
        prefix: format!("[vm {}]", kernel.series()),
        start,
        deadline: start + timeout,
    };
    let mut boot = console.watch(&rx, &mut log_file)?;
    if boot.timed_out {
        println!(
            "{} timed out after {} s: killing qemu",
            console.prefix,
            timeout.as_secs()
        );
        qemu.kill().ok();
    }
    qemu.wait().context("waiting for qemu")?;
    for r in readers {
        r.join().ok();
    }
    boot.elapsed = start.elapsed();
    Ok(boot)
}

fn start_qemu(image: &KernelImage, initrd: &Path) -> Result<Child> {
    Command::new("qemu-system-x86_64")
        // -enable-kvm fails on this host (a Firecracker VM): pure emulation. The root
        // is the unpacked initramfs, in RAM: the debug test binaries (each with the
        // agent's library and kube's types) unpack to more than 1 GiB could hold.
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2560", "-smp", "1"])
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
        .context("starting qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")
}

/// One guest's console as it is read.
struct Console {
    /// Before each line on the terminal: guests run side by side.
    prefix: String,
    start: Instant,
    deadline: Instant,
}

impl Console {
    /// Show and log each line until both streams close (qemu exited) or the deadline.
    fn watch(&self, rx: &mpsc::Receiver<String>, log: &mut File) -> Result<Boot> {
        let mut boot = Boot {
            started: false,
            timed_out: false,
            exit_code: None,
            lines: Vec::new(),
            elapsed: Duration::ZERO,
        };
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    println!("{} {line}", self.prefix);
                    self.note_markers(&line, &mut boot);
                    boot.lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    boot.timed_out = true;
                    return Ok(boot);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(boot),
            }
        }
    }

    fn note_markers(&self, line: &str, boot: &mut Boot) {
        if let Some(release) = after_marker(line, STARTED_MARKER) {
            boot.started = true;
            println!(
                "{} booted {release} in {:.1} s",
                self.prefix,
                self.start.elapsed().as_secs_f64()
            );
        }
        if let Some(code) = after_marker(line, EXIT_MARKER) {
            boot.exit_code = code.parse().ok();
        }
    }
}

/// What follows `marker` on a console line. Not only at its start: the firmware's
/// terminal resets may share the line with the guest's first output.
pub(super) fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
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
fn forward_lines(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) -> JoinHandle<()> {
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
    fn markers_after_terminal_resets() {
        let line = printable("\x1bc\x1b[?7l\x1b[2JTCPTRACE-VM-EXIT 101\r\n");
        assert_eq!(line, "TCPTRACE-VM-EXIT 101");
        assert_eq!(after_marker(&line, EXIT_MARKER), Some("101"));
        assert_eq!(printable("a\tb\x1b[0mc"), "a\tbc");
    }
}
