//! Each tracepoint's record layout, read from this kernel's tracefs `format` files
//! into the programs' `Config` (`format` parses one file; `probes::TRACEPOINTS` says
//! which fields each tracepoint must have).
use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use tcptrace_common::{Config, TpLayout};

use super::{
    format,
    probes::{Tracepoint, TRACEPOINTS},
    tracefs,
};

/// Resolve every tracepoint's layout into the config; the error of each one that failed.
pub fn resolve_layouts(root: &Path, config: &mut Config) -> HashMap<&'static str, String> {
    let mut errors = HashMap::new();
    for tp in &TRACEPOINTS {
        match resolve_layout(root, tp) {
            Ok(layout) => *(tp.slot)(config) = layout,
            Err(e) => {
                errors.insert(tp.event, format!("{e:#}"));
            }
        }
    }
    errors
}

fn resolve_layout(root: &Path, tp: &Tracepoint) -> Result<TpLayout> {
    let path = tracefs::format_path(root, tp.category, tp.event);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {}:{} not found ({})",
            tp.category,
            tp.event,
            path.display()
        )
    })?;
    let fields = format::parse_fields(&text)?;
    format::layout(&fields, &format::wants(tp.carries, tp.extra), !tp.in_place).with_context(|| {
        format!(
            "unsupported layout of {}:{} ({})",
            tp.category,
            tp.event,
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake tracefs holding only the events named, with this kernel's recorded formats.
    fn fake_tracefs(events: &[(&str, &str, &str)]) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "tcptrace-fake-tracefs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (category, name, fixture) in events {
            // No recording: the tracepoint does not exist on that kernel.
            let Ok(text) = std::fs::read_to_string(format!(
                "{}/tests/formats/{fixture}",
                env!("CARGO_MANIFEST_DIR")
            )) else {
                continue;
            };
            let dir = root.join("events").join(category).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("format"), text).unwrap();
        }
        root
    }

    #[test]
    fn a_missing_tracepoint_is_named() {
        let root = fake_tracefs(&[]);
        let err = resolve_layout(&root, &TRACEPOINTS[0]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("tracepoint sock:inet_sock_set_state not found"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    /// A fake tracefs with every tracepoint tcptrace uses, as recorded on `series`.
    fn recorded_tracefs(series: &str) -> std::path::PathBuf {
        let files: Vec<(&str, &str, String)> = TRACEPOINTS
            .iter()
            .map(|tp| (tp.category, tp.event, format!("{series}-{}", tp.event)))
            .collect();
        let events: Vec<(&str, &str, &str)> =
            files.iter().map(|(c, e, f)| (*c, *e, f.as_str())).collect();
        fake_tracefs(&events)
    }

    /// Formats recorded on Debian's 5.10, 6.1 and 6.12 (`cargo xtask vm-test
    /// --record-formats`) and on the 6.18 development kernel.
    #[test]
    fn every_tracepoint_resolves_on_the_formats_of_every_kernel() {
        for series in ["5.10", "6.1", "6.12", "6.18"] {
            let root = recorded_tracefs(series);
            let mut config = Config::DEFAULT;
            let errors = resolve_layouts(&root, &mut config);
            // inet_sk_error_report came with 5.14: on 5.10 it is missing, and says so.
            // tcp_probe's record has no socket address before 6.8: there only its raw
            // and BTF-typed methods attach. kfree_skb has no drop reason before 5.17.
            let mut missing: Vec<&&str> = errors.keys().collect();
            missing.sort();
            let expected: Vec<&&str> = match series {
                "5.10" => vec![&"inet_sk_error_report", &"kfree_skb", &"tcp_probe"],
                "6.1" => vec![&"tcp_probe"],
                _ => vec![],
            };
            assert_eq!(missing, expected, "{series}: {errors:?}");
            for (layout, skaddr) in [
                (config.set_state, 8),
                (config.retransmit_skb, 16),
                (config.retransmit_synack, 8),
                (config.receive_reset, 8),
                (config.destroy_sock, 8),
            ] {
                assert_eq!(layout.skaddr, skaddr, "{series}: {layout:?}");
            }
            // `err` came after 6.12; before it the tracepoint fires only for retransmits
            // that were sent.
            let has_err = config.retransmit_skb.err != tcptrace_common::FIELD_ABSENT;
            assert_eq!(has_err, series == "6.18", "{series}");
            assert_eq!(config.sys_exit_connect.err, 16, "{series}: ret");
            if series != "5.10" {
                assert_eq!(config.error_report.err, 8, "{series}: error");
            }
            assert_eq!(config.send_reset.skaddr, 16, "{series}: send_reset skaddr");
            if series != "5.10" {
                // The drop reason everywhere it exists; the receiving socket since 6.11.
                let reason = if series == "6.1" { 28 } else { 36 };
                assert_eq!(config.kfree_skb.err, reason, "{series}: reason");
                let rx_sk = (series != "6.1").then_some(24);
                let skaddr = config.kfree_skb.skaddr;
                assert_eq!(
                    (skaddr != tcptrace_common::FIELD_ABSENT).then_some(skaddr),
                    rx_sk
                );
            }
            let _ = std::fs::remove_dir_all(root);
        }
    }

    #[test]
    fn a_layout_that_is_not_understood_is_refused_with_the_file_named() {
        let root = fake_tracefs(&[("sock", "inet_sock_set_state", "6.18-tcp_destroy_sock")]);
        let msg = format!("{:#}", resolve_layout(&root, &TRACEPOINTS[0]).unwrap_err());
        assert!(
            msg.contains("unsupported layout of sock:inet_sock_set_state"),
            "{msg}"
        );
        assert!(msg.contains("`oldstate` is missing"), "{msg}");
        let _ = std::fs::remove_dir_all(root);
    }
}
