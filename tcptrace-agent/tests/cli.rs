//! Bad input gets a one-line reason and exit status 2; missing privileges are named.
mod common;

use std::process::Command;

use common::TCPTRACE;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(TCPTRACE).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_flag_values_exit_2_with_a_reason() {
    for (args, needle) in [
        (vec!["trace", "--port", "http"], "--port"),
        (vec!["trace", "--port", "0"], "--port 0"),
        (vec!["trace", "--addr", "300.1.1.1/8"], "not an IP address"),
        (vec!["trace", "--addr", "10.0.0.0/40"], "prefix length"),
        (vec!["trace", "--ring-bytes", "1000"], "power of two"),
        (vec!["trace", "--events", "packets"], "unknown event kind"),
        (vec!["trace", "--comm", "a-name-longer-than-15"], "15"),
        (vec!["trace", "-4", "-6"], "exclude each other"),
        (vec!["trace", "--duration=-1"], "positive number of seconds"),
        (vec!["trace", "--count", "0"], "--count"),
        (
            vec!["trace", "--netns", "/var/run/netns/no-such-namespace"],
            "--netns /var/run/netns/no-such-namespace: not a namespace inode",
        ),
        (
            vec!["trace", "--netns", "/proc/self/ns/uts"],
            "is not a network namespace",
        ),
        (vec!["trace", "--netns", "0"], "--netns 0 matches nothing"),
        (
            vec!["run", "--health-listen", "9480"],
            "`9480` is not ADDR:PORT",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (
            vec!["probes", "--probe-method", "tcp_connect=kprobe"],
            "unknown probe `tcp_connect`",
        ),
        (
            vec!["run", "--probe-method", "tcp_v4_connect=fentry"],
            "no method `fentry`: one of fexit, kprobe, tracepoint",
        ),
        (
            vec!["trace", "--probe-method", "tcp_v4_connect"],
            "PROBE=METHOD",
        ),
        (
            vec![
                "run",
                "--labels",
                "workload",
                "--kube-api",
                "http://10.96.0.1",
            ],
            "https:// only",
        ),
        (
            vec!["run", "--kube-api", "in-cluster", "--node-name", "n"],
            "add --labels workload",
        ),
        (
            vec![
                "run",
                "--labels",
                "workload",
                "--kube-api",
                "in-cluster",
                "--node-name",
                "n",
                "--kubelet",
                "http://127.0.0.1:10255/pods",
            ],
            "choose one",
        ),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A name source that cannot work is refused at startup, with what is missing, before
/// any program is loaded: a bad setting exits 2, missing credentials exit 1.
#[test]
fn kube_api_without_node_or_credentials_is_refused_with_the_reason() {
    let out = Command::new(TCPTRACE)
        .args(["run", "--labels", "workload", "--kube-api", "in-cluster"])
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--node-name or set NODE_NAME"), "{stderr}");

    let out = Command::new(TCPTRACE)
        .args(["run", "--listen", "127.0.0.1:0", "--labels", "workload"])
        .args(["--kube-api", "https://127.0.0.1:6443", "--node-name", "n"])
        .args(["--kube-credentials", "/nonexistent-tcptrace-credentials"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read the cluster CA /nonexistent-tcptrace-credentials/ca.crt"),
        "{stderr}"
    );
}

#[test]
fn help_teaches_the_flags() {
    let out = Command::new(TCPTRACE)
        .args(["trace", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--json",
        "--pid",
        "--comm",
        "--port",
        "--addr",
        "--ipv4",
        "--ipv6",
        "--events",
        "--duration",
        "--count",
        "--ring-bytes",
        "Examples",
    ] {
        assert!(help.contains(flag), "trace --help lacks {flag}");
    }
    let out = Command::new(TCPTRACE)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for words in [
        "--health-listen",
        "8 KiB",
        "10 s for a whole connection",
        "evicts the one that moved no byte for the longest",
        "share the next one",
    ] {
        assert!(help.contains(words), "run --help lacks {words:?}");
    }
}

#[test]
fn without_capabilities_the_missing_ones_are_named() {
    common::require_root!();
    // Drop to an unprivileged user with no capabilities at all.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args([TCPTRACE, "trace", "--duration", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing capability CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn mounts_tracefs_when_the_host_has_not() {
    common::require_root!();
    // A private mount namespace where tracefs is not mounted, as on a fresh host: not at
    // /sys/kernel/tracing, nor where a mounted debugfs would offer it.
    let script = format!(
        "umount /sys/kernel/debug/tracing /sys/kernel/debug /sys/kernel/tracing 2>/dev/null; \
         test -d /sys/kernel/tracing/events && {{ echo still mounted; exit 3; }}; \
         test -d /sys/kernel/debug/tracing/events && {{ echo debugfs offers it; exit 3; }}; \
         {TCPTRACE} --log-level info trace --duration 0.5 && test -d /sys/kernel/tracing/events"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("attached inet_sock_set_state"), "{stderr}");
}
