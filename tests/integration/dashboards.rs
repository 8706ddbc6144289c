//! The shipped dashboards query only what the exporter exports: the Grafana dashboard
//! (`dashboards/capture-proxy.grafana.json`) and the CloudWatch agent's metric selectors
//! (`dashboards/cloudwatch/amazon-cloudwatch-agent.json`) against a live scrape of `/metrics`
//! from the proxy started in-process.
//!
//! May depend on: the crate's public API, `tests/common`, serde_json, std.

use crate::common;

use std::collections::BTreeSet;

use common::admin::{admin_get, with_admin};
use common::*;

/// PromQL functions, keywords, label names and Grafana variables the dashboard's expressions
/// use besides metric names.
const NOT_METRICS: &[&str] = &[
    "sum",
    "by",
    "rate",
    "increase",
    "histogram_quantile",
    "le",
    "instance",
    "__rate_interval",
    "__range",
];

/// Metric names (identifiers) in a PromQL expression: every identifier that is not a known
/// function, keyword, label or variable, and not inside a quoted string.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_quote = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_quote = !in_quote;
            word.clear();
            continue;
        }
        if in_quote {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        let w = std::mem::take(&mut word);
        let numeric = w.chars().next().is_some_and(|f| f.is_ascii_digit());
        if !w.is_empty() && !numeric && !NOT_METRICS.contains(&w.as_str()) {
            out.push(w);
        }
    }
    out
}

/// Every sample name the exporter serves (labels stripped).
fn exported() -> BTreeSet<String> {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), with_admin);
    let admin = proxy.handle().admin_addr().expect("admin endpoint");
    // One request, so that every histogram has samples too.
    let mut c = proxy.client();
    c.send(&get("/small"));
    assert_eq!(c.read_response(false).status, 200);
    let (status, text) = admin_get(admin, "/metrics");
    assert_eq!(status, 200);
    proxy.stop();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn read_json(path: &str) -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `expr` string anywhere in the dashboard JSON.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn dashboards_query_only_exported_metrics() {
    let have = exported();
    assert!(have.contains("requests_total"), "{have:?}");

    let dash = read_json("dashboards/capture-proxy.grafana.json");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 20, "panels' queries: {all:?}");
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for e in &all {
        for m in metric_names(e) {
            if !have.contains(&m) {
                missing.push(format!("{m} (in {e})"));
            }
            used.insert(m);
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:#?}"
    );
    // The panels the issue asks for are there (by the metrics behind them).
    for m in [
        "requestsMutating_total",
        "upstreamResponseDuration_milliseconds_bucket",
        "captureRecords_total",
        "kafkaCommitDuration_milliseconds_bucket",
        "captureRecordsLost_total",
        "spoolBytes",
        "activeConnection",
        "sinkQueueBytes",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }

    let cw = read_json("dashboards/cloudwatch/amazon-cloudwatch-agent.json");
    let decl = &cw["logs"]["metrics_collected"]["prometheus"]["emf_processor"];
    let selectors = decl["metric_declaration"][0]["metric_selectors"]
        .as_array()
        .expect("metric_selectors");
    assert!(!selectors.is_empty());
    for s in selectors {
        let name = s
            .as_str()
            .expect("selector")
            .trim_start_matches('^')
            .trim_end_matches('$');
        assert!(
            have.contains(name),
            "CloudWatch selector {name} is not exported"
        );
        assert!(
            decl["metric_unit"].get(name).is_some(),
            "CloudWatch selector {name} has no unit"
        );
    }
}

/// The oracle can fail: a made-up metric name is caught.
#[test]
fn the_check_notices_an_unknown_metric() {
    let names = metric_names(
        r#"sum by (instance) (rate(noSuchMetric_total{instance=~"$instance"}[$__rate_interval]))"#,
    );
    assert_eq!(names, vec!["noSuchMetric_total"]);
    let names = metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))");
    assert_eq!(names, vec!["x_bucket"]);
}
