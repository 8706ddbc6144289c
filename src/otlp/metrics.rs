//! The metrics a snapshot becomes: one `ExportMetricsServiceRequest` (resource `service.name`
//! = `capture` as the Java proxy's, scope `captureProxy`), cumulative, with the Java proxy's
//! instrument names and units where it has the quantity and the `/metrics` names otherwise.
//!
//! May depend on: `admin` (the snapshot every exporter renders), `super::proto`; its tests
//! use `stats` (a histogram).
//!
//! Invariant: a pure function of the snapshot and the two timestamps: the same counters the
//! `/metrics` text shows at that moment, never a second source of truth.

use super::proto::{
    metric::Data, AnyValue, ExportMetricsServiceRequest, Gauge, Histogram, HistogramDataPoint,
    InstrumentationScope, KeyValue, Metric, NumberDataPoint, Resource, ResourceMetrics,
    ScopeMetrics, Sum, TEMPORALITY_CUMULATIVE,
};
use crate::admin::{bucket_bounds_us, sum_ms, HistogramSnapshot, Scalar, ScalarKind, Snapshot};

/// The Java proxy's `service.name` (`CaptureProxy` passes `"capture"` to `RootOtelContext`).
pub const SERVICE_NAME: &str = "capture";
/// The Java proxy's meter scope (`RootCaptureContext.SCOPE_NAME`).
pub const SCOPE_NAME: &str = "captureProxy";

/// Instruments the Java proxy emits under names `/metrics` does not use, derived from the same
/// counters: (Java name, description, the `/metrics` counter it equals). The Java proxy counts
/// a scope when it ends: a connection when it closes, a request when it has been read.
const JAVA_ALIASES: [(&str, &str, &str); 2] = [
    (
        "captureConnectionCount",
        "client connections closed (the Java proxy's connection-scope count)",
        "connectionsClosed",
    ),
    (
        "gatheringRequestCount",
        "complete requests received (the Java proxy's request-scope count)",
        "requests",
    ),
];

/// Unit of a scalar: the Java proxy's where it defines the instrument (`count`, `bytes`, or
/// none for its scope counters), the same words for ours, `1` for 0/1 states.
pub fn unit(name: &str) -> &'static str {
    match name {
        "kafkaCommitCount"
        | "captureConnectionCount"
        | "gatheringRequestCount"
        | "blockedCount" => "",
        "bytesRead" | "bytesWritten" | "captureRecordBytes" | "sinkBytesCommitted"
        | "sinkQueueBytes" | "spoolBytes" => "bytes",
        "sinkHealthy" | "kafkaConnected" | "draining" => "1",
        _ => "count",
    }
}

fn int_point(value: u64, start_ns: u64, now_ns: u64) -> NumberDataPoint {
    NumberDataPoint {
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        as_int: Some(i64::try_from(value).unwrap_or(i64::MAX)),
    }
}

fn scalar_metric(s: &Scalar, start_ns: u64, now_ns: u64) -> Metric {
    let point = int_point(s.value, start_ns, now_ns);
    let data = match s.kind {
        ScalarKind::Counter => Data::Sum(Sum {
            data_points: vec![point],
            aggregation_temporality: TEMPORALITY_CUMULATIVE,
            is_monotonic: true,
        }),
        // The Java proxy's `activeConnection` is an up-down counter: a non-monotonic sum.
        ScalarKind::Gauge if s.name == "activeConnection" => Data::Sum(Sum {
            data_points: vec![point],
            aggregation_temporality: TEMPORALITY_CUMULATIVE,
            is_monotonic: false,
        }),
        ScalarKind::Gauge => Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                start_time_unix_nano: 0,
                ..point
            }],
        }),
    };
    Metric {
        name: s.name.to_string(),
        description: s.help.to_string(),
        unit: unit(s.name).to_string(),
        data: Some(data),
    }
}

/// A histogram in milliseconds with the `/metrics` bucket bounds (per-bucket counts).
fn histogram_metric(h: &HistogramSnapshot, start_ns: u64, now_ns: u64) -> Metric {
    let mut point = HistogramDataPoint {
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        ..Default::default()
    };
    let mut below = 0u64;
    for (bound, us) in bucket_bounds_us() {
        let upto = h.merged.as_ref().map_or(0, |m| m.count_between(0, us));
        point.bucket_counts.push(upto.saturating_sub(below));
        point.explicit_bounds.push(bound);
        below = upto;
    }
    let total = h.merged.as_ref().map_or(0, |m| m.len());
    point.bucket_counts.push(total.saturating_sub(below));
    point.count = total;
    point.sum = Some(h.merged.as_ref().map_or(0.0, sum_ms));
    if let Some(m) = h.merged.as_ref().filter(|m| !m.is_empty()) {
        point.min = Some(m.min() as f64 / 1000.0);
        point.max = Some(m.max() as f64 / 1000.0);
    }
    Metric {
        name: h.name.to_string(),
        description: h.help.to_string(),
        unit: "ms".to_string(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![point],
            aggregation_temporality: TEMPORALITY_CUMULATIVE,
        })),
    }
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            string_value: Some(value.to_string()),
        }),
    }
}

/// The request for one export. `start_ns`: when the exporter started (the cumulative start
/// time); `now_ns`: the snapshot's time; both Unix nanoseconds.
pub(crate) fn request(
    snap: &Snapshot,
    node_id: &str,
    start_ns: u64,
    now_ns: u64,
) -> ExportMetricsServiceRequest {
    let mut metrics: Vec<Metric> = snap
        .scalars
        .iter()
        .map(|s| scalar_metric(s, start_ns, now_ns))
        .collect();
    for (name, help, source) in JAVA_ALIASES {
        if let Some(s) = snap.scalars.iter().find(|s| s.name == source) {
            metrics.push(scalar_metric(
                &Scalar {
                    name,
                    help,
                    kind: ScalarKind::Counter,
                    value: s.value,
                },
                start_ns,
                now_ns,
            ));
        }
    }
    for h in &snap.histograms {
        metrics.push(histogram_metric(h, start_ns, now_ns));
        // The Java proxy's blocked scope count: every hold, i.e. the hold histogram's count.
        if h.name == "blockedDuration" {
            metrics.push(scalar_metric(
                &Scalar {
                    name: "blockedCount",
                    help:
                        "mutating requests whose hold ended (the Java proxy's blocked-scope count)",
                    kind: ScalarKind::Counter,
                    value: h.merged.as_ref().map_or(0, |m| m.len()),
                },
                start_ns,
                now_ns,
            ));
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    string_attr("service.name", SERVICE_NAME),
                    string_attr("service.instance.id", node_id),
                    string_attr("service.version", env!("CARGO_PKG_VERSION")),
                ],
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_string(),
                    version: String::new(),
                }),
                metrics,
            }],
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let mut h = crate::stats::new_histogram();
        h.record(50).unwrap(); // 0.05 ms
        h.record(2_000).unwrap(); // 2 ms
        h.record(120_000_000).unwrap(); // 120 s: past the last bound
        Snapshot {
            scalars: vec![
                Scalar {
                    name: "bytesRead",
                    help: "b",
                    kind: ScalarKind::Counter,
                    value: 10,
                },
                Scalar {
                    name: "requests",
                    help: "r",
                    kind: ScalarKind::Counter,
                    value: 3,
                },
                Scalar {
                    name: "activeConnection",
                    help: "a",
                    kind: ScalarKind::Gauge,
                    value: 2,
                },
                Scalar {
                    name: "sinkHealthy",
                    help: "h",
                    kind: ScalarKind::Gauge,
                    value: 1,
                },
            ],
            histograms: vec![HistogramSnapshot {
                name: "blockedDuration",
                help: "d",
                merged: Some(h),
            }],
        }
    }

    fn find<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        r.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn kinds_units_and_values() {
        let r = request(&snap(), "node", 5, 9);
        let rm = &r.resource_metrics[0];
        let attrs = &rm.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(
            attrs[0].value.as_ref().unwrap().string_value.as_deref(),
            Some("capture")
        );
        assert_eq!(
            rm.scope_metrics[0].scope.as_ref().unwrap().name,
            "captureProxy"
        );
        let m = find(&r, "bytesRead");
        assert_eq!(m.unit, "bytes");
        let Some(Data::Sum(s)) = &m.data else {
            panic!()
        };
        assert!(s.is_monotonic);
        assert_eq!(s.aggregation_temporality, TEMPORALITY_CUMULATIVE);
        assert_eq!(s.data_points[0].as_int, Some(10));
        assert_eq!(s.data_points[0].start_time_unix_nano, 5);
        assert_eq!(s.data_points[0].time_unix_nano, 9);
        let Some(Data::Sum(s)) = &find(&r, "activeConnection").data else {
            panic!()
        };
        assert!(!s.is_monotonic);
        let m = find(&r, "sinkHealthy");
        assert_eq!(m.unit, "1");
        assert!(matches!(m.data, Some(Data::Gauge(_))));
        let m = find(&r, "gatheringRequestCount");
        assert_eq!(m.unit, "");
        let Some(Data::Sum(s)) = &m.data else {
            panic!()
        };
        assert_eq!(s.data_points[0].as_int, Some(3));
        let Some(Data::Sum(s)) = &find(&r, "blockedCount").data else {
            panic!()
        };
        assert_eq!(s.data_points[0].as_int, Some(3));
        let m = find(&r, "blockedDuration");
        assert_eq!(m.unit, "ms");
        let Some(Data::Histogram(h)) = &m.data else {
            panic!()
        };
        let p = &h.data_points[0];
        assert_eq!(p.count, 3);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 3);
        assert_eq!(
            p.bucket_counts[0], 1,
            "0.05 ms is in the first bucket (<= 0.1 ms)"
        );
        assert_eq!(
            *p.bucket_counts.last().unwrap(),
            1,
            "120 s is past the last bound"
        );
        assert!(p.max.unwrap() > 100_000.0);
    }

    #[test]
    fn encodes_and_decodes() {
        use prost::Message;
        let r = request(&snap(), "node", 5, 9);
        let bytes = r.encode_to_vec();
        let back = ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, r);
    }
}
