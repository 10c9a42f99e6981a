//! `[observability.otlp]`: OpenTelemetry span export over OTLP (gRPC or HTTP/protobuf), and the
//! standard `OTEL_*` environment variables that set it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// The OTLP wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`TraceService/Export` over HTTP/2, usually port 4317).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`, usually port 4318); the OpenTelemetry
    /// default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Span export settings. Export is off while both endpoints are empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Base URL of the collector, `http://host:port` (`OTEL_EXPORTER_OTLP_ENDPOINT`). With
    /// `http/protobuf`, `/v1/traces` is appended to its path; with `grpc` the path is unused.
    pub endpoint: String,
    /// Full URL of the traces endpoint, used as is (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
    /// takes precedence over `endpoint`.
    pub traces_endpoint: String,
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL`). Default `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Longest one export may take before it is abandoned (`OTEL_EXPORTER_OTLP_TIMEOUT`, in
    /// milliseconds there). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Finished spans buffered for the exporter; when full, spans are dropped and counted
    /// (`docmesh_otlp_spans_dropped_total`) rather than slowing requests
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`). Default 2048.
    pub queue_capacity: usize,
    /// Most spans in one export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`). Default 512.
    pub max_batch: usize,
    /// Longest a finished span waits for its batch to fill (`OTEL_BSP_SCHEDULE_DELAY`, in
    /// milliseconds there). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`); empty: the workload part of the
    /// proxy's SPIFFE ID (`.../sa/<name>`, else its last path segment).
    pub service_name: String,
    /// More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, `key=value,...`), e.g.
    /// `k8s.pod.name`; they override the ones docmesh derives.
    pub resource_attributes: BTreeMap<String, String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: String::new(),
            traces_endpoint: String::new(),
            protocol: OtlpProtocol::default(),
            timeout: Duration::from_secs(10),
            queue_capacity: 2048,
            max_batch: 512,
            batch_delay: Duration::from_secs(1),
            service_name: String::new(),
            resource_attributes: BTreeMap::new(),
        }
    }
}

/// Where spans go: a plain `http://` collector address and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// `host:port` of the collector.
    pub authority: String,
    /// The request path (`/v1/traces`, or gRPC's method path).
    pub path: String,
    /// The protocol.
    pub protocol: OtlpProtocol,
}

/// gRPC method path of OTLP trace export.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl OtlpConfig {
    /// Whether span export is configured at all.
    pub fn enabled(&self) -> bool {
        !self.endpoint.is_empty() || !self.traces_endpoint.is_empty()
    }

    /// The resolved export target (`Ok(None)`: export off), or why the endpoint is unusable
    /// as `(field path, message)`.
    pub fn target(&self) -> Result<Option<OtlpTarget>, (&'static str, String)> {
        let (field, url, per_signal) = if !self.traces_endpoint.is_empty() {
            (
                "observability.otlp.traces_endpoint",
                &self.traces_endpoint,
                true,
            )
        } else if !self.endpoint.is_empty() {
            ("observability.otlp.endpoint", &self.endpoint, false)
        } else {
            return Ok(None);
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| (field, format!("{url:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err((
                    field,
                    format!(
                        "{url:?}: https collectors are not supported yet; use an http:// \
                             collector (an OpenTelemetry Collector agent next to the Pod or on \
                             the node)"
                    ),
                ))
            }
            _ => {
                return Err((
                    field,
                    format!("{url:?} must be an http:// URL such as http://otel-collector:4318"),
                ))
            }
        }
        let Some(authority) = uri.authority() else {
            return Err((field, format!("{url:?} names no host")));
        };
        let authority = if authority.port().is_some() {
            authority.as_str().to_owned()
        } else {
            format!("{}:80", authority.as_str())
        };
        let path = match self.protocol {
            OtlpProtocol::Grpc => GRPC_EXPORT_PATH.to_owned(),
            OtlpProtocol::HttpProtobuf if per_signal => uri.path().to_owned(),
            OtlpProtocol::HttpProtobuf => {
                format!("{}/v1/traces", uri.path().trim_end_matches('/'))
            }
        };
        Ok(Some(OtlpTarget {
            authority,
            path,
            protocol: self.protocol,
        }))
    }

    /// Checks the endpoint and the sizes.
    pub fn validate(&self, p: &mut Problems) {
        if let Err((field, msg)) = self.target() {
            p.push(field, msg);
        }
        for (field, v) in [
            ("observability.otlp.queue_capacity", self.queue_capacity),
            ("observability.otlp.max_batch", self.max_batch),
        ] {
            if v == 0 {
                p.push(field, "must be at least 1");
            }
        }
        if self.timeout.is_zero() {
            p.push("observability.otlp.timeout", "must be longer than 0s");
        }
    }
}

/// Sets the `[observability]` fields that the standard OpenTelemetry environment variables
/// name, in the parsed TOML tree (before `DOCMESH_*` overrides, which win). Returns (field
/// path, variable) for each field set, to name the variable in error messages.
pub(super) fn apply_otel_env(
    root: &mut toml::Table,
    vars: &[(String, String)],
    p: &mut Problems,
) -> Vec<(String, String)> {
    let get = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut set = Vec::new();
    let mut put = |section: &str, field: &str, var: &str, value: toml::Value| {
        let obs = root
            .entry("observability")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(obs) = obs.as_table_mut() {
            let sec = obs
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(sec) = sec.as_table_mut() {
                sec.insert(field.to_owned(), value);
                set.push((format!("observability.{section}.{field}"), var.to_owned()));
            }
        }
    };
    let strings = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "endpoint"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces_endpoint"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "protocol"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "protocol"),
        ("OTEL_SERVICE_NAME", "service_name"),
    ];
    for (var, field) in strings {
        if let Some(v) = get(var) {
            put("otlp", field, var, toml::Value::String(v));
        }
    }
    let millis = [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "timeout"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "timeout"),
        ("OTEL_BSP_SCHEDULE_DELAY", "batch_delay"),
    ];
    for (var, field) in millis {
        if let Some(v) = get(var) {
            match v.parse::<u64>() {
                Ok(ms) => put("otlp", field, var, toml::Value::String(format!("{ms}ms"))),
                Err(_) => p.push(
                    format!("observability.otlp.{field}"),
                    format!("environment variable {var}: {v:?} is not a number of milliseconds"),
                ),
            }
        }
    }
    let counts = [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "queue_capacity"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "max_batch"),
    ];
    for (var, field) in counts {
        if let Some(v) = get(var) {
            match v.parse::<i64>() {
                Ok(n) => put("otlp", field, var, toml::Value::Integer(n)),
                Err(_) => p.push(
                    format!("observability.otlp.{field}"),
                    format!("environment variable {var}: {v:?} is not a whole number"),
                ),
            }
        }
    }
    if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
        match parse_resource_attributes(&v) {
            Ok(attrs) => put(
                "otlp",
                "resource_attributes",
                "OTEL_RESOURCE_ATTRIBUTES",
                toml::Value::Table(
                    attrs
                        .into_iter()
                        .map(|(k, v)| (k, toml::Value::String(v)))
                        .collect(),
                ),
            ),
            Err(msg) => p.push(
                "observability.otlp.resource_attributes",
                format!("environment variable OTEL_RESOURCE_ATTRIBUTES: {msg}"),
            ),
        }
    }
    if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
        let arg = get("OTEL_TRACES_SAMPLER_ARG");
        match sampler_ratio(&sampler, arg.as_deref()) {
            Ok(r) => put(
                "tracing",
                "new_trace_sample_ratio",
                "OTEL_TRACES_SAMPLER",
                toml::Value::Float(r),
            ),
            Err(msg) => p.push(
                "observability.tracing.new_trace_sample_ratio",
                format!("environment variable OTEL_TRACES_SAMPLER: {msg}"),
            ),
        }
    }
    set
}

/// The new-trace ratio of an OpenTelemetry sampler name. docmesh always follows the caller's
/// sampled flag (parent-based); the plain samplers are read as their parent-based form.
fn sampler_ratio(sampler: &str, arg: Option<&str>) -> Result<f64, String> {
    match sampler {
        "always_on" | "parentbased_always_on" => Ok(1.0),
        "always_off" | "parentbased_always_off" => Ok(0.0),
        "traceidratio" | "parentbased_traceidratio" => match arg {
            None => Ok(1.0),
            Some(a) => a
                .parse::<f64>()
                .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG {a:?} is not a number")),
        },
        other => Err(format!(
            "{other:?} is not supported; use parentbased_traceidratio (with \
             OTEL_TRACES_SAMPLER_ARG), parentbased_always_on or parentbased_always_off"
        )),
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (the W3C Baggage octet rules).
fn parse_resource_attributes(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for member in s.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let Some((k, v)) = member.split_once('=') else {
            return Err(format!("{member:?} is not key=value"));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{member:?} has an empty key"));
        }
        out.insert(k.to_owned(), percent_decode(v.trim())?);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{s:?} has a bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(endpoint: &str, traces: &str, protocol: OtlpProtocol) -> OtlpTarget {
        let c = OtlpConfig {
            endpoint: endpoint.into(),
            traces_endpoint: traces.into(),
            protocol,
            ..OtlpConfig::default()
        };
        c.target().unwrap().unwrap()
    }

    #[test]
    fn endpoints_resolve_like_the_opentelemetry_exporters() {
        let t = target("http://collector:4318", "", OtlpProtocol::HttpProtobuf);
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("collector:4318", "/v1/traces")
        );
        let t = target("http://c:4318/base/", "", OtlpProtocol::HttpProtobuf);
        assert_eq!(t.path, "/base/v1/traces");
        let t = target("http://c:1", "http://d/custom", OtlpProtocol::HttpProtobuf);
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("d:80", "/custom"));
        let t = target("http://c:4317", "", OtlpProtocol::Grpc);
        assert_eq!(t.path, GRPC_EXPORT_PATH);
        assert_eq!(OtlpConfig::default().target(), Ok(None));
    }

    #[test]
    fn bad_endpoints_and_sizes_are_named() {
        let c = OtlpConfig {
            endpoint: "https://c:4318".into(),
            queue_capacity: 0,
            ..OtlpConfig::default()
        };
        let mut p = Problems::default();
        c.validate(&mut p);
        let paths: Vec<&str> = p.0.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "observability.otlp.endpoint",
                "observability.otlp.queue_capacity"
            ]
        );
        let c = OtlpConfig {
            traces_endpoint: "collector:4318".into(),
            ..OtlpConfig::default()
        };
        assert_eq!(
            c.target().unwrap_err().0,
            "observability.otlp.traces_endpoint"
        );
    }

    #[test]
    fn otel_variables_set_the_fields_they_name() {
        let vars: Vec<(String, String)> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "docs"),
            ("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=ds-0, team=a%2Cb"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut root = toml::Table::new();
        let mut p = Problems::default();
        let set = apply_otel_env(&mut root, &vars, &mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        assert!(set.contains(&(
            "observability.otlp.endpoint".to_owned(),
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned()
        )));
        let obs: super::super::observability::ObservabilityConfig =
            toml::Value::Table(root["observability"].as_table().unwrap().clone())
                .try_into()
                .unwrap();
        assert_eq!(obs.otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(obs.otlp.service_name, "docs");
        assert_eq!(obs.otlp.resource_attributes["team"], "a,b");
        assert_eq!(obs.otlp.resource_attributes["k8s.pod.name"], "ds-0");
        assert_eq!(obs.otlp.timeout, Duration::from_millis(2500));
        assert_eq!(obs.tracing.new_trace_sample_ratio, 0.25);
    }

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn check_names_the_otel_variable_and_docmesh_variables_win() {
        let path = std::path::Path::new("proxy.toml");
        let err = super::super::Config::from_parts(
            None,
            path,
            vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("observability.otlp.endpoint")
                && err.contains("set by environment variable OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{err}"
        );
        let c = super::super::Config::from_parts(
            Some("[observability.otlp]\nendpoint = \"http://file:1\"\n"),
            path,
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
                (
                    "DOCMESH_OBSERVABILITY__OTLP__ENDPOINT",
                    "http://docmesh:4318",
                ),
                ("OTEL_SERVICE_NAME", "ds"),
            ]),
        )
        .unwrap();
        assert_eq!(c.observability.otlp.endpoint, "http://docmesh:4318");
        assert_eq!(c.observability.otlp.service_name, "ds");
    }

    #[test]
    fn unsupported_samplers_and_bad_numbers_are_errors() {
        let vars = vec![
            ("OTEL_TRACES_SAMPLER".to_owned(), "jaeger_remote".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "soon".to_owned()),
        ];
        let mut p = Problems::default();
        apply_otel_env(&mut toml::Table::new(), &vars, &mut p);
        let paths: Vec<&str> = p.0.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "observability.otlp.batch_delay",
                "observability.tracing.new_trace_sample_ratio"
            ]
        );
    }
}
