//! Building Prometheus metric families (the `prometheus` crate's data model) from plain
//! values, so each metric is one short function call in `metrics.rs`.
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// Label values of one series, in the order of the family's label names.
pub type Labels<'a> = Vec<&'a str>;

fn labels(names: &[&str], values: &[&str]) -> Vec<LabelPair> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

pub fn counter(
    name: &str,
    help: &str,
    label_names: &[&str],
    series: Vec<(Labels<'_>, f64)>,
) -> MetricFamily {
    scalar(name, help, MetricType::COUNTER, label_names, series)
}

pub fn gauge(
    name: &str,
    help: &str,
    label_names: &[&str],
    series: Vec<(Labels<'_>, f64)>,
) -> MetricFamily {
    scalar(name, help, MetricType::GAUGE, label_names, series)
}

/// A family of single-value series: counters or gauges.
fn scalar(
    name: &str,
    help: &str,
    kind: MetricType,
    label_names: &[&str],
    series: Vec<(Labels<'_>, f64)>,
) -> MetricFamily {
    let metrics = series
        .into_iter()
        .map(|(values, v)| {
            let mut m = Metric::from_label(labels(label_names, &values));
            if kind == MetricType::COUNTER {
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
            } else {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
            m
        })
        .collect();
    family(name, help, kind, metrics)
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
) -> MetricFamily {
    let metrics = series
        .into_iter()
        .map(|s| {
            let mut h = Histogram::default();
            h.set_sample_count(s.count);
            h.set_sample_sum(s.sum);
            h.set_bucket(
                s.buckets
                    .into_iter()
                    .map(|(le, cumulative)| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(le);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect(),
            );
            let mut m = Metric::from_label(labels(label_names, &s.labels));
            m.set_histogram(h);
            m
        })
        .collect();
    family(name, help, MetricType::HISTOGRAM, metrics)
}

/// The text exposition. A family without series yet (no retransmit so far) is left out:
/// the format has no way to write it.
pub fn encode(mut families: Vec<MetricFamily>) -> prometheus::Result<String> {
    families.retain(|f| !f.get_metric().is_empty());
    prometheus::TextEncoder::new().encode_to_string(&families)
}
