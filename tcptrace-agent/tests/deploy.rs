//! The Kubernetes manifests in deploy/: valid against the Kubernetes 1.37 schema (with
//! kubernetes-validate, installed by `cargo xtask setup`), consistent with each other,
//! and asking for exactly the privileges the docs claim.
use std::{path::PathBuf, process::Command};

use serde_json::{json, Value};

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

/// The documents of a manifest, as JSON (PyYAML from the validator's environment).
fn documents(file: &str) -> Vec<Value> {
    let python = validator().with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(deploy(file))
        .output()
        .expect("the validator's python (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn daemonset_pod() -> Value {
    let docs = documents("tcptrace.yaml");
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    ds["spec"]["template"]["spec"].clone()
}

/// Every privilege the pod gets, pinned: each one is explained in DEPLOY.md, and
/// `cargo xtask image --verify` shows the agent failing without it.
#[test]
fn the_daemonset_asks_for_the_documented_privileges_only() {
    let pod = daemonset_pod();
    assert_eq!(pod["hostNetwork"], true);
    // Nothing reads other processes' /proc entries on the exporter's path.
    for namespace in ["hostPID", "hostIPC"] {
        assert_eq!(pod.get(namespace), None, "{namespace} is back");
    }
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(
        containers[0]["securityContext"],
        json!({
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON"]},
            "seccompProfile": {"type": "Localhost", "localhostProfile": "tcptrace.json"},
        })
    );
    // The node's files it reads: tracefs and the cgroup hierarchy, read-only, and no
    // other host path.
    let volumes: Vec<(&str, &str)> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let path = v["hostPath"]["path"]
                .as_str()
                .expect("only hostPath volumes");
            (v["name"].as_str().unwrap(), path)
        })
        .collect();
    assert_eq!(
        volumes,
        [
            ("tracefs", "/sys/kernel/tracing"),
            ("cgroup", "/sys/fs/cgroup")
        ]
    );
    for mount in containers[0]["volumeMounts"].as_array().unwrap() {
        assert_eq!(mount["readOnly"], true, "{mount}");
    }

    // RBAC: list and watch pods, the two calls k8s/api.rs (kube's watcher) makes; nothing more.
    let text = std::fs::read_to_string(deploy("tcptrace.yaml")).unwrap();
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

/// Metrics on the node's IP only, and the kubelet's probes on a listener of their own.
#[test]
fn the_agent_listens_on_the_node_ip_and_is_probed_on_the_health_port() {
    let pod = daemonset_pod();
    let agent = &pod["containers"][0];
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--listen=[$(HOST_IP)]:9479"), "{args:?}");
    assert!(
        args.contains(&"--health-listen=[$(HOST_IP)]:9480"),
        "{args:?}"
    );
    let host_ip = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOST_IP")
        .expect("HOST_IP in env");
    assert_eq!(
        host_ip["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    assert_eq!(
        agent["ports"],
        json!([
            {"name": "metrics", "containerPort": 9479, "protocol": "TCP"},
            {"name": "health", "containerPort": 9480, "protocol": "TCP"},
        ])
    );
    assert_eq!(
        agent["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "health"})
    );
    assert_eq!(
        agent["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "health"})
    );
}

/// deploy/seccomp-tcptrace.json is podman's default profile (containers-common's, on this
/// machine /usr/share/containers/seccomp.json) with bpf and perf_event_open taken out of
/// the rules that tie them to CAP_SYS_ADMIN and allowed by one rule of their own: every
/// other syscall is treated exactly as the default treats it.
#[test]
fn the_seccomp_profile_is_the_default_plus_bpf_and_perf_event_open() {
    const ADDED: [&str; 2] = ["bpf", "perf_event_open"];
    let read = |path: PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let mut expected = read(PathBuf::from("/usr/share/containers/seccomp.json"));
    let ours = read(deploy("seccomp-tcptrace.json"));
    let rules = expected["syscalls"].as_array_mut().unwrap();
    for rule in rules.iter_mut() {
        let names = rule["names"].as_array_mut().unwrap();
        names.retain(|n| !ADDED.contains(&n.as_str().unwrap()));
    }
    rules.retain(|rule| !rule["names"].as_array().unwrap().is_empty());
    let added = ours["syscalls"].as_array().unwrap().last().unwrap();
    assert_eq!(added["names"], json!(ADDED));
    assert_eq!(added["action"], "SCMP_ACT_ALLOW");
    assert_eq!(
        (&added["args"], &added["includes"]),
        (&json!([]), &json!({}))
    );
    rules.push(added.clone());
    assert!(
        ours == expected,
        "deploy/seccomp-tcptrace.json is not this machine's default profile plus bpf and \
         perf_event_open: regenerate it as DEPLOY.md says"
    );
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

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap())
        .unwrap()
}

/// The dashboard's panels, rows included. Rows stay expanded: a collapsed row holds its
/// panels inside it, where the checks below would not see them.
fn panels(dashboard: &Value) -> &Vec<Value> {
    let panels = dashboard["panels"].as_array().unwrap();
    for row in panels.iter().filter(|p| p["type"] == "row") {
        assert_eq!(row["collapsed"], false, "{}", row["title"]);
        assert_eq!(row["panels"], json!([]), "{}", row["title"]);
    }
    panels
}

/// Each panel has an id of its own (Grafana keys links, the panel editor and
/// repeats on it), and a place on the 24-column grid that no other panel covers (Grafana
/// would push one of them down, away from the row it was meant for).
#[test]
fn the_dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let dashboard = dashboard();
    let panels = panels(&dashboard);
    let mut ids = std::collections::HashSet::new();
    let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let id = panel["id"].as_u64().expect("a numeric id");
        assert!(ids.insert(id), "id {id} is used twice ({title})");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap());
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: {grid}");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let apart = x + w <= *ox || ox + ow <= x || y + h <= *oy || oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, [x, y, w, h]));
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{title} does not use the datasource variable"
            );
        }
    }
}

/// Every dashboard query parses as PromQL (promtool, as recording rules) and uses only
/// metrics METRICS.md documents.
#[test]
fn the_dashboard_queries_parse_and_use_documented_metrics() {
    let dashboard = dashboard();
    let docs =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../METRICS.md"))
            .unwrap();
    let mut exprs = Vec::new();
    for panel in panels(&dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().replace("$instance", ".*"));
        }
    }
    assert!(exprs.len() >= 10);
    for expr in &exprs {
        for name in metric_names(expr) {
            let family = histogram_family(name, &docs);
            assert!(
                docs.contains(&format!("`{family}`")),
                "{family} is not in METRICS.md"
            );
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

/// The `tcptrace_*` names a query reads.
fn metric_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("tcptrace_"))
}

/// A histogram's series name (`_bucket`, `_count`, `_sum`) as its family, the name
/// METRICS.md documents.
fn histogram_family<'a>(name: &'a str, docs: &str) -> &'a str {
    if docs.contains(&format!("`{name}`")) {
        return name;
    }
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `tcptrace_*` family in METRICS.md's table is charted by some panel, as
/// METRICS.md says: a family added to the agent and the reference gets a panel too.
#[test]
fn the_dashboard_charts_every_documented_family() {
    let dashboard = dashboard();
    let docs =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../METRICS.md"))
            .unwrap();
    let charted: std::collections::HashSet<&str> = panels(&dashboard)
        .iter()
        .filter_map(|panel| panel["targets"].as_array())
        .flatten()
        .flat_map(|target| metric_names(target["expr"].as_str().unwrap()))
        .map(|name| histogram_family(name, &docs))
        .collect();
    let mut documented = Vec::new();
    for line in docs.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = line.split('|').nth(1).unwrap();
        documented.extend(
            first_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|name| name.starts_with("tcptrace_")),
        );
    }
    assert!(documented.len() >= 40, "{documented:?}");
    let missing: Vec<&&str> = documented
        .iter()
        .filter(|family| !charted.contains(**family))
        .collect();
    assert!(missing.is_empty(), "no panel charts {missing:?}");
}
