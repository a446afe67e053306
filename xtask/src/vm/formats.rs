//! Tracepoint format files of each guest kernel, printed by /init between markers and
//! kept by `--record-formats` as parser fixtures (tcptrace-agent/tests/formats/), so the
//! parser is tested against kernels the host does not run.
use anyhow::{Context as _, Result};

use super::{qemu::after_marker, Kernel};

/// Tracepoints whose format files the guest prints.
pub(super) const TRACEPOINT_FORMATS: &[&str] = &[
    "sock/inet_sock_set_state",
    "sock/inet_sk_error_report",
    "tcp/tcp_retransmit_skb",
    "tcp/tcp_retransmit_synack",
    "tcp/tcp_receive_reset",
    "tcp/tcp_send_reset",
    "tcp/tcp_destroy_sock",
    "tcp/tcp_probe",
    "syscalls/sys_exit_connect",
    "skb/kfree_skb",
    "skb/consume_skb",
];
/// Before each format file, with the tracepoint's path after it.
pub(super) const FORMAT_MARKER: &str = "TCPTRACE-VM-FORMAT ";
/// After each format file.
pub(super) const FORMAT_END: &str = "TCPTRACE-VM-FORMAT-END";

/// Write the format files the guest printed as parser fixtures of this kernel series:
/// tcptrace-agent/tests/formats/<series>-<event>.
pub(super) fn record_formats(kernel: Kernel, lines: &[String]) -> Result<()> {
    let dir = crate::workspace_root().join("tcptrace-agent/tests/formats");
    // A tracepoint this kernel lacks prints nothing: no fixture, and the parser tests
    // treat the missing file as a missing tracepoint.
    for (event, text) in formats_in(lines)
        .into_iter()
        .filter(|(_, t)| t.contains("field:"))
    {
        let path = dir.join(format!("{}-{event}", kernel.series()));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        kernel.say(&format!("recorded {}", path.display()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_sections_of_a_console() {
        let lines: Vec<String> = [
            "[    1.0] noise",
            "TCPTRACE-VM-FORMAT sock/inet_sock_set_state",
            "name: inet_sock_set_state",
            "\tfield:int oldstate;",
            "TCPTRACE-VM-FORMAT-END",
            "TCPTRACE-VM-FORMAT tcp/tcp_send_reset",
            "TCPTRACE-VM-FORMAT-END",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            formats_in(&lines),
            [
                (
                    "inet_sock_set_state".to_string(),
                    "name: inet_sock_set_state\n\tfield:int oldstate;\n".to_string()
                ),
                ("tcp_send_reset".to_string(), String::new()),
            ]
        );
    }
}
