//! The Prometheus text exposition, written directly: each metric family is rendered as
//! its builder function is called, so a scrape allocates one string per family instead
//! of a protobuf object per label (measured with `cargo xtask bench micro`).
use std::fmt::Write as _;

/// Label values of one series, in the order of the family's label names.
pub type Labels<'a> = Vec<&'a str>;

/// One metric family, already in text form.
pub struct Family {
    text: String,
    /// No series: the format has no way to write an empty family, so it is left out.
    empty: bool,
}

impl Family {
    /// A family someone else rendered (the `prometheus` crate's process collector).
    pub fn from_text(text: String) -> Family {
        Family {
            empty: text.is_empty(),
            text,
        }
    }
}

fn header(name: &str, help: &str, kind: &str) -> String {
    let mut text = String::with_capacity(256);
    let help = help.replace('\\', r"\\").replace('\n', r"\n");
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    text
}

/// `{a="x",b="y"}` (with `extra` appended, e.g. `le`), or nothing without labels.
fn write_labels(out: &mut String, names: &[&str], values: &[&str], extra: Option<(&str, &str)>) {
    let pairs = names.iter().zip(values).map(|(n, v)| (*n, *v)).chain(extra);
    let mut first = true;
    for (name, value) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str(r"\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str(r"\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

fn write_value(out: &mut String, v: f64) {
    if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    labels: (&[&str], &[&str]),
    extra: Option<(&str, &str)>,
    v: f64,
) {
    out.push_str(name);
    write_labels(out, labels.0, labels.1, extra);
    out.push(' ');
    write_value(out, v);
    out.push('\n');
}

pub fn counter(
    name: &str,
    help: &str,
    label_names: &[&str],
    series: Vec<(Labels<'_>, f64)>,
) -> Family {
    scalar(name, help, "counter", label_names, series)
}

pub fn gauge(
    name: &str,
    help: &str,
    label_names: &[&str],
    series: Vec<(Labels<'_>, f64)>,
) -> Family {
    scalar(name, help, "gauge", label_names, series)
}

/// A family of single-value series: counters or gauges.
fn scalar(
    name: &str,
    help: &str,
    kind: &str,
    label_names: &[&str],
    series: Vec<(Labels<'_>, f64)>,
) -> Family {
    let mut text = header(name, help, kind);
    text.reserve(series.len() * (name.len() + 48));
    for (values, v) in &series {
        write_sample(&mut text, name, (label_names, values), None, *v);
    }
    Family {
        text,
        empty: series.is_empty(),
    }
}

/// One histogram series: (upper bound, cumulative count) pairs, total count and sum.
pub struct HistogramSeries<'a> {
    pub labels: Labels<'a>,
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

pub fn histogram(
    name: &str,
    help: &str,
    label_names: &[&str],
    series: Vec<HistogramSeries<'_>>,
) -> Family {
    let mut text = header(name, help, "histogram");
    let (bucket, sum, count) = (
        format!("{name}_bucket"),
        format!("{name}_sum"),
        format!("{name}_count"),
    );
    for s in &series {
        let labels = (label_names, s.labels.as_slice());
        let mut le = String::new();
        for (upper, cumulative) in &s.buckets {
            le.clear();
            write_value(&mut le, *upper);
            write_sample(
                &mut text,
                &bucket,
                labels,
                Some(("le", &le)),
                *cumulative as f64,
            );
        }
        write_sample(
            &mut text,
            &bucket,
            labels,
            Some(("le", "+Inf")),
            s.count as f64,
        );
        write_sample(&mut text, &sum, labels, None, s.sum);
        write_sample(&mut text, &count, labels, None, s.count as f64);
    }
    Family {
        text,
        empty: series.is_empty(),
    }
}

/// The text exposition of these families. A family without series yet (no retransmit
/// so far) is left out.
pub fn encode(families: Vec<Family>) -> String {
    let mut out = String::with_capacity(families.iter().map(|f| f.text.len()).sum());
    for f in families.iter().filter(|f| !f.empty) {
        out.push_str(&f.text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_escaping() {
        let text = encode(vec![
            counter(
                "t_total",
                "A \\ help\nline.",
                &["a"],
                vec![(vec!["x\"y\\z\n"], 2.0)],
            ),
            gauge("g", "Gauge.", &[], vec![(vec![], 0.5)]),
            counter("never_total", "Nothing yet.", &["a"], vec![]),
        ]);
        assert_eq!(
            text,
            "# HELP t_total A \\\\ help\\nline.\n# TYPE t_total counter\nt_total{a=\"x\\\"y\\\\z\\n\"} 2\n\
             # HELP g Gauge.\n# TYPE g gauge\ng 0.5\n"
        );
    }

    #[test]
    fn histogram_series() {
        let text = encode(vec![histogram(
            "h_seconds",
            "H.",
            &["side"],
            vec![HistogramSeries {
                labels: vec!["client"],
                buckets: vec![(0.001, 1), (0.5, 3)],
                count: 4,
                sum: 1.25,
            }],
        )]);
        for line in [
            "h_seconds_bucket{side=\"client\",le=\"0.001\"} 1",
            "h_seconds_bucket{side=\"client\",le=\"0.5\"} 3",
            "h_seconds_bucket{side=\"client\",le=\"+Inf\"} 4",
            "h_seconds_sum{side=\"client\"} 1.25",
            "h_seconds_count{side=\"client\"} 4",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    /// The `prometheus` crate's encoder writes the same bytes for the same families:
    /// ours is hand-written only because it is faster (BENCHMARKS.md), not different.
    /// Label values with every character the format escapes, values across the range
    /// f64 formatting treats differently, and the per-workload handshake buckets.
    /// (One difference, kept on purpose: an infinite sample value is `+Inf` here, as the
    /// format spells it; the crate writes Rust's `inf`.)
    #[test]
    fn same_bytes_as_the_prometheus_crate_encoder() {
        use prometheus::proto::{self, MetricType};

        let labels = ["namespace", "pod"];
        let series: Vec<(Vec<&str>, f64)> = vec![
            (vec!["default", "web-0"], 0.0),
            (vec!["q\"uote", "back\\slash\nnewline"], 1.0),
            (vec!["ünïcødé", ""], 0.5),
            (vec!["big", "x"], 123_456_789_012.0),
            (vec!["2^53", "x"], 9_007_199_254_740_992.0),
            (vec!["tiny", "x"], 1e-9),
            (vec!["neg", "x"], -3.25),
        ];
        let buckets: Vec<(f64, u64)> = crate::exporter::workloads::HANDSHAKE_LE_NS
            .iter()
            .enumerate()
            .map(|(i, le)| (*le as f64 / 1e9, i as u64 * 3))
            .collect();
        let help = "Help with a \\ backslash\nand a newline.";
        let ours = encode(vec![
            counter("c_total", help, &labels, series.clone()),
            gauge("g", "Gauge.", &[], vec![(vec![], 42.0)]),
            gauge("g_labelled", "Gauge.", &labels, series.clone()),
            histogram(
                "h_seconds",
                "Histogram.",
                &labels,
                vec![HistogramSeries {
                    labels: vec!["default", "web-0"],
                    buckets: buckets.clone(),
                    count: 20,
                    sum: 0.123456,
                }],
            ),
        ]);

        let metric = |values: &[&str]| {
            let pairs = labels
                .iter()
                .zip(values)
                .map(|(n, v)| {
                    let mut p = proto::LabelPair::default();
                    p.set_name(n.to_string());
                    p.set_value(v.to_string());
                    p
                })
                .collect();
            proto::Metric::from_label(pairs)
        };
        let family = |name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>| {
            let mut f = proto::MetricFamily::default();
            f.set_name(name.into());
            f.set_help(help.into());
            f.set_field_type(kind);
            f.set_metric(metrics);
            f
        };
        let scalars = |kind: MetricType, series: &[(Vec<&str>, f64)]| -> Vec<proto::Metric> {
            series
                .iter()
                .map(|(values, v)| {
                    let mut m = metric(values);
                    if kind == MetricType::COUNTER {
                        let mut c = proto::Counter::default();
                        c.set_value(*v);
                        m.set_counter(c);
                    } else {
                        let mut g = proto::Gauge::default();
                        g.set_value(*v);
                        m.set_gauge(g);
                    }
                    m
                })
                .collect()
        };
        let mut h = proto::Histogram::default();
        h.set_sample_count(20);
        h.set_sample_sum(0.123456);
        h.set_bucket(
            buckets
                .iter()
                .map(|(le, n)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(*n);
                    b
                })
                .collect(),
        );
        let mut hm = metric(&["default", "web-0"]);
        hm.set_histogram(h);
        let mut unlabelled = proto::Gauge::default();
        unlabelled.set_value(42.0);
        let theirs = prometheus::TextEncoder::new()
            .encode_to_string(&[
                family(
                    "c_total",
                    help,
                    MetricType::COUNTER,
                    scalars(MetricType::COUNTER, &series),
                ),
                family(
                    "g",
                    "Gauge.",
                    MetricType::GAUGE,
                    vec![proto::Metric::from_gauge(unlabelled)],
                ),
                family(
                    "g_labelled",
                    "Gauge.",
                    MetricType::GAUGE,
                    scalars(MetricType::GAUGE, &series),
                ),
                family("h_seconds", "Histogram.", MetricType::HISTOGRAM, vec![hm]),
            ])
            .expect("the crate encodes these families");
        assert_eq!(ours, theirs);
        let inf = encode(vec![gauge("g", "G.", &[], vec![(vec![], f64::INFINITY)])]);
        assert!(inf.ends_with("g +Inf\n"), "{inf}");
    }
}
