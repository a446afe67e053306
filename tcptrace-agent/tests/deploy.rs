//! The Kubernetes manifests in deploy/: valid against the Kubernetes 1.37 schema (with
//! kubernetes-validate, installed by `cargo xtask setup`), consistent with each other,
//! and asking for exactly the privileges the docs claim; the alerting rules checked by
//! promtool, and their runbooks and metrics by the docs.
mod common;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

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
    // The workload labels arrive as the agent names them (the rules sum by them).
    assert!(monitor.contains("honorLabels: true"));
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

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(name),
    )
    .unwrap()
}

/// promtool with these arguments: (success, stdout and stderr).
fn promtool(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (the prometheus package; cargo xtask setup installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The alerting rules of deploy/tcptrace-rules.yaml, every group's rules in order.
fn alert_rules() -> Vec<Value> {
    let docs = documents("tcptrace-rules.yaml");
    assert_eq!(docs.len(), 1);
    let mut rules = Vec::new();
    for group in docs[0]["groups"].as_array().unwrap() {
        rules.extend(group["rules"].as_array().unwrap().iter().cloned());
    }
    assert!(rules.len() >= 10, "{rules:?}");
    rules
}

/// The Operator's PrometheusRule is the plain rules file's groups, exactly, beside the
/// PodMonitor (same namespace, same labels, which the Prometheus's ruleSelector and
/// podMonitorSelector are told to match in DEPLOY.md).
#[test]
fn the_prometheus_rule_carries_the_rules_file_groups() {
    let plain = documents("tcptrace-rules.yaml");
    let operator = documents("tcptrace-prometheusrule.yaml");
    assert_eq!(operator.len(), 1);
    let rule = &operator[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        plain[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["groups"]
    );
    assert!(
        rule["spec"]["groups"] == plain[0]["groups"],
        "deploy/tcptrace-prometheusrule.yaml's spec.groups differ from \
         deploy/tcptrace-rules.yaml's groups"
    );
    let monitor = documents("podmonitor.yaml");
    assert_eq!(
        rule["metadata"]["namespace"],
        monitor[0]["metadata"]["namespace"]
    );
    assert_eq!(rule["metadata"]["labels"], monitor[0]["metadata"]["labels"]);
}

/// `promtool check rules` on the rules file and on the PrometheusRule's groups taken
/// out of it; and a rule promtool must refuse, so that a silent promtool cannot pass.
#[test]
fn promtool_accepts_both_rule_files() {
    let (ok, text) = promtool(&[
        "check".as_ref(),
        "rules".as_ref(),
        deploy("tcptrace-rules.yaml").as_os_str(),
    ]);
    assert!(ok, "{text}");
    let count = alert_rules().len();
    assert!(
        text.contains(&format!("SUCCESS: {count} rules found")),
        "{text}"
    );

    let operator = documents("tcptrace-prometheusrule.yaml");
    let groups = json!({"groups": operator[0]["spec"]["groups"]});
    let dir = std::env::temp_dir();
    let extracted = dir.join(format!(
        "tcptrace-prometheusrule-{}.json",
        std::process::id()
    ));
    std::fs::write(&extracted, groups.to_string()).unwrap();
    let (ok, text) = promtool(&["check".as_ref(), "rules".as_ref(), extracted.as_os_str()]);
    assert!(
        ok && text.contains(&format!("SUCCESS: {count} rules found")),
        "{text}"
    );

    let mut broken = groups.clone();
    broken["groups"][0]["rules"][0]["expr"] = json!("rate(tcptrace_retransmits_total[5m]");
    std::fs::write(&extracted, broken.to_string()).unwrap();
    let (ok, text) = promtool(&["check".as_ref(), "rules".as_ref(), extracted.as_os_str()]);
    let _ = std::fs::remove_file(&extracted);
    assert!(!ok, "promtool accepted an unclosed parenthesis: {text}");
}

/// `promtool test rules` on deploy/tests/tcptrace-rules.test.yaml, which must hold, for
/// every alert, a case where it fires and one where it stays silent.
#[test]
fn the_alerts_pass_their_unit_tests_firing_and_silent() {
    let test_file = deploy("tests/tcptrace-rules.test.yaml");
    let (ok, text) = promtool(&["test".as_ref(), "rules".as_ref(), test_file.as_os_str()]);
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS"), "{text}");

    let python = validator().with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&test_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tests["rule_files"], json!(["../tcptrace-rules.yaml"]));
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_array().unwrap() {
        for check in case["alert_rule_test"].as_array().unwrap() {
            let name = check["alertname"].as_str().unwrap().to_owned();
            let expected = check["exp_alerts"].as_array().unwrap();
            if expected.is_empty() {
                silent.insert(name);
            } else {
                for alert in expected {
                    let annotations = alert["exp_annotations"].as_object();
                    assert!(
                        annotations.is_some_and(|a| a.contains_key("runbook_url")),
                        "{name}: a firing case checks the annotations"
                    );
                }
                firing.insert(name);
            }
        }
    }
    let alerts: BTreeSet<String> = alert_rules()
        .iter()
        .map(|r| r["alert"].as_str().expect("alerting rules only").to_owned())
        .collect();
    assert_eq!(firing, alerts, "alerts with a case where they fire");
    assert_eq!(silent, alerts, "alerts with a case where they stay silent");
}

/// The GitHub anchor of a Markdown heading: lower case, punctuation but `-` and `_`
/// dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// DEPLOY.md's Runbooks section: its text, and the anchors of its `###` headings.
fn runbooks() -> (String, Vec<(String, String)>) {
    let text = repo_file("DEPLOY.md");
    let start = text
        .find("\n## Runbooks\n")
        .expect("a Runbooks section in DEPLOY.md");
    let section = &text[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = section[..end].to_owned();
    let headings = section
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| (h.to_owned(), anchor(h)))
        .collect();
    (section, headings)
}

/// Every alert's runbook_url is DEPLOY.md#anchor of a runbook named after it, every
/// runbook is an alert's, each with its severity, summary and description; every anchor
/// in DEPLOY.md is unique (GitHub would number a second one).
#[test]
fn every_alert_has_its_runbook_in_deploy_md() {
    let (_, headings) = runbooks();
    let all_anchors: Vec<String> = repo_file("DEPLOY.md")
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let rules = alert_rules();
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let (heading, tag) = headings
            .iter()
            .find(|(h, _)| h == name)
            .unwrap_or_else(|| panic!("no `### {name}` in DEPLOY.md's Runbooks"));
        assert_eq!(url, format!("DEPLOY.md#{tag}"), "{heading}");
        assert_eq!(
            all_anchors.iter().filter(|a| *a == tag).count(),
            1,
            "#{tag} is not unique in DEPLOY.md"
        );
        assert!(
            ["critical", "warning", "info"]
                .contains(&rule["labels"]["severity"].as_str().unwrap_or_default()),
            "{name}: severity"
        );
        // absent() has no labels to name.
        let labelled = !rule["expr"].as_str().unwrap().trim().starts_with("absent(");
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.is_empty(), "{name}: no {key}");
            assert!(
                !labelled || text.contains("{{ $labels."),
                "{name}: {key} names what fired: {text}"
            );
        }
        assert!(rule["for"].as_str().is_some(), "{name}: a `for:` duration");
    }
    for (heading, _) in &headings {
        assert!(
            rules.iter().any(|r| r["alert"] == heading.as_str()),
            "runbook `{heading}` has no alert"
        );
    }
    let deploy_md = repo_file("DEPLOY.md");
    assert!(
        deploy_md.contains("rule_files:")
            && deploy_md.contains("kubectl apply -f deploy/tcptrace-prometheusrule.yaml"),
        "DEPLOY.md says how to install the rules"
    );
}

/// Every metric a rule reads is documented in METRICS.md (or is Prometheus's `up`), so
/// renaming a metric breaks this test until the rules follow.
#[test]
fn the_rules_use_documented_metrics_only() {
    let docs = repo_file("METRICS.md");
    let mut names = BTreeSet::new();
    for rule in alert_rules() {
        let expr = rule["expr"].as_str().unwrap();
        // Label values and matchers are quoted; what is outside quotes and followed by
        // `{`, `[` or ` )` ... is a name: take every identifier outside quotes, and keep
        // those that are metrics (ours by prefix, and `up`).
        let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
        for word in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tcptrace_") || word == "up" {
                names.insert(word.to_owned());
            }
        }
    }
    assert!(names.contains("up") && names.len() > 10, "{names:?}");
    for name in &names {
        let documented = docs.contains(&format!("`{name}`"));
        assert!(
            documented || name == "up",
            "{name} is used by a rule and not in METRICS.md"
        );
    }
}

/// Every `tcptrace` command of the runbooks is one the agent runs: each is run here,
/// `trace` for 0.2 s, `doctor` with 1 s of measuring.
#[test]
fn the_runbook_commands_run() {
    common::require_root!();
    let (section, _) = runbooks();
    let mut in_code = false;
    let mut commands = Vec::new();
    for line in section.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if in_code {
            if let Some(rest) = line.trim().strip_prefix("tcptrace ") {
                commands.push(rest.to_owned());
            }
        }
    }
    assert!(commands.len() >= 8, "{commands:?}");
    let mut runs = Vec::new();
    for command in &commands {
        let mut args: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        // Stop it quickly: replace a --duration or --measure, or add one.
        let (flag, value) = match args[0].as_str() {
            "trace" => ("--duration", "0.2"),
            "doctor" => ("--measure", "1"),
            _ => ("", ""),
        };
        assert!(
            !args.iter().any(|a| a == "--watch"),
            "{command}: --watch never ends"
        );
        if !flag.is_empty() {
            match args.iter().position(|a| a == flag) {
                Some(i) => args[i + 1] = value.into(),
                None => args.extend([flag.to_owned(), value.to_owned()]),
            }
        }
        let child = Command::new(common::TCPTRACE)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        runs.push((command, args[0].clone(), child));
    }
    for (command, verb, child) in runs {
        let out = child.wait_with_output().unwrap();
        let code = out.status.code().unwrap_or(-1);
        // doctor: 3 and 4 are findings, not failures.
        let ok = code == 0 || (verb == "doctor" && (code == 3 || code == 4));
        assert!(
            ok,
            "`tcptrace {command}` exited {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
