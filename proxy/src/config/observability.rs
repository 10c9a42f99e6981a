//! `[observability]`: trace headers, the access log and metrics.

use serde::Deserialize;

use super::Problems;

/// Settings of trace propagation, the access log and the metrics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// Trace context propagation (`[observability.tracing]`).
    pub tracing: TracingConfig,
    /// The JSON access log on stdout (`[observability.access_log]`).
    pub access_log: AccessLogConfig,
    /// Prometheus metrics (`[observability.metrics]`).
    pub metrics: MetricsConfig,
    /// OpenTelemetry span export (`[observability.otlp]`).
    pub otlp: super::otlp::OtlpConfig,
}

/// Trace context propagation: W3C `traceparent`/`tracestate` always, B3 when enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Also read (when no valid `traceparent` arrives) and write B3 headers (`b3` and
    /// `x-b3-*`), for apps instrumented with Zipkin-style tracers. Default `false`.
    pub b3: bool,
    /// Fraction (0.0 to 1.0) of the traces this proxy *starts* that are marked sampled.
    /// Continued traces keep the caller's sampling decision. Default `1.0`.
    pub new_trace_sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            b3: false,
            new_trace_sample_ratio: 1.0,
        }
    }
}

/// The access log: one JSON line per request (per connection for opaque TCP) on stdout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write access log lines at all. Default `true`.
    pub enabled: bool,
    /// Fraction (0.0 to 1.0) of *successful* requests that are logged; errors (status 400
    /// and above, or a proxy cause) are always logged. The decision is made on the trace id,
    /// so both proxies of a service pair log the same requests. Default `1.0`.
    pub success_sample_ratio: f64,
    /// Lines buffered between the data path and the writer; when full, lines are dropped and
    /// counted (`docmesh_access_log_dropped_total`) rather than slowing requests. Default 4096.
    pub queue_capacity: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            success_sample_ratio: 1.0,
            queue_capacity: 4096,
        }
    }
}

/// Prometheus metrics settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Most distinct (source, destination) SPIFFE ID pairs kept as label values; further
    /// pairs are counted under source `overflow` so a flood of identities cannot blow up the
    /// metric cardinality. Default 1000.
    pub max_service_pairs: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_service_pairs: 1000,
        }
    }
}

impl ObservabilityConfig {
    /// Checks the values serde cannot: ratios within 0..=1 and non-zero sizes.
    pub fn validate(&self, p: &mut Problems) {
        let mut ratio = |path: &str, v: f64| {
            if !(0.0..=1.0).contains(&v) {
                p.push(
                    path,
                    format!("{v} is not a ratio: use a value from 0.0 to 1.0"),
                );
            }
        };
        ratio(
            "observability.tracing.new_trace_sample_ratio",
            self.tracing.new_trace_sample_ratio,
        );
        ratio(
            "observability.access_log.success_sample_ratio",
            self.access_log.success_sample_ratio,
        );
        if self.access_log.queue_capacity == 0 {
            p.push(
                "observability.access_log.queue_capacity",
                "must be at least 1",
            );
        }
        if self.metrics.max_service_pairs == 0 {
            p.push(
                "observability.metrics.max_service_pairs",
                "must be at least 1",
            );
        }
        self.otlp.validate(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_ratios_are_named() {
        let mut p = Problems::default();
        ObservabilityConfig::default().validate(&mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        let mut c = ObservabilityConfig::default();
        c.access_log.success_sample_ratio = 1.5;
        c.access_log.queue_capacity = 0;
        c.validate(&mut p);
        let paths: Vec<&str> = p.0.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "observability.access_log.success_sample_ratio",
                "observability.access_log.queue_capacity"
            ]
        );
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_fields() {
        let c: ObservabilityConfig =
            toml::from_str("[tracing]\nb3 = true\n[access_log]\nsuccess_sample_ratio = 0.1\n")
                .unwrap();
        assert!(c.tracing.b3);
        assert_eq!(c.access_log.success_sample_ratio, 0.1);
        assert!(toml::from_str::<ObservabilityConfig>("[tracing]\nb4 = true\n").is_err());
    }
}
