//! The Kubernetes manifests in deploy/: valid against the Kubernetes 1.37 schema (with
//! kubernetes-validate, installed by `cargo xtask setup`), consistent with each other,
//! and asking for exactly the privileges the docs claim.
use std::{path::PathBuf, process::Command};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn validator() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/tcptrace/venv/bin/kubernetes-validate")
}

fn validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(validator())
        .arg("--strict")
        .arg(path)
        .output()
        .expect("kubernetes-validate (cargo xtask setup installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("ERROR"), text)
}

#[test]
fn manifests_pass_the_kubernetes_schema() {
    let (ok, text) = validate(&deploy("tcptrace.yaml"));
    assert!(ok, "{text}");
    for kind in [
        "namespace",
        "serviceaccount",
        "clusterrole",
        "clusterrolebinding",
        "daemonset",
        "service",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}/tcptrace")),
            "{text}"
        );
    }
}

/// The validator is not a rubber stamp: a misspelt field fails it.
#[test]
fn a_broken_manifest_fails_validation() {
    let text = std::fs::read_to_string(deploy("tcptrace.yaml")).unwrap();
    let broken = text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    let path = std::env::temp_dir().join(format!("tcptrace-broken-{}.yaml", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let (ok, text) = validate(&path);
    let _ = std::fs::remove_file(&path);
    assert!(!ok, "a misspelt field passed: {text}");
}

#[test]
fn the_daemonset_asks_for_the_documented_privileges_only() {
    let text = std::fs::read_to_string(deploy("tcptrace.yaml")).unwrap();
    assert!(text.contains(r#"drop: ["ALL"]"#));
    assert!(text.contains(r#"add: ["BPF", "PERFMON"]"#));
    assert!(text.contains("privileged: false"));
    assert!(text.contains("allowPrivilegeEscalation: false"));
    // RBAC: list and watch pods, the two calls kube_api.rs makes; nothing more.
    let role = text
        .split("---")
        .find(|doc| doc.contains("kind: ClusterRole\n"))
        .expect("a ClusterRole");
    let rules = &role[role.find("rules:").unwrap()..];
    assert_eq!(
        rules.trim(),
        "rules:\n  - apiGroups: [\"\"]\n    resources: [\"pods\"]\n    verbs: [\"list\", \"watch\"]"
    );
    let binding = text
        .split("---")
        .find(|doc| doc.contains("kind: ClusterRoleBinding"))
        .expect("a ClusterRoleBinding");
    assert!(binding.contains("kind: ServiceAccount\n    name: tcptrace\n    namespace: tcptrace"));
    assert!(text.contains("- --kube-api=in-cluster"));
    assert!(text.contains("fieldPath: spec.nodeName"));
}

#[test]
fn the_pod_monitor_selects_the_daemonset_pods_and_port() {
    let monitor = std::fs::read_to_string(deploy("podmonitor.yaml")).unwrap();
    let daemonset = std::fs::read_to_string(deploy("tcptrace.yaml")).unwrap();
    assert!(monitor.contains("app.kubernetes.io/name: tcptrace"));
    assert!(daemonset.contains("app.kubernetes.io/name: tcptrace"));
    assert!(monitor.contains("- port: metrics") && daemonset.contains("- name: metrics"));
    assert!(monitor.contains("path: /metrics"));
}

/// Every dashboard query parses as PromQL (promtool, as recording rules) and uses only
/// metrics METRICS.md documents.
#[test]
fn the_dashboard_queries_parse_and_use_documented_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap())
            .unwrap();
    let docs =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../METRICS.md"))
            .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().replace("$instance", ".*"));
        }
    }
    assert!(exprs.len() >= 10);
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("tcptrace_") {
                let family = format!("tcptrace_{}", name.trim_end_matches("_bucket"));
                assert!(
                    docs.contains(&format!("`{family}`")),
                    "{family} is not in METRICS.md"
                );
            }
        }
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let path = std::env::temp_dir().join(format!(
        "tcptrace-dashboard-rules-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
