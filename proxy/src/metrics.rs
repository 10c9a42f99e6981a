//! The proxy's shared Prometheus registry.
//!
//! Every module registers its metrics into one [`Metrics`] (names get the `docmesh_` prefix);
//! the admin server renders it at `/metrics` in the OpenMetrics text format. The registry
//! always carries `docmesh_build_info{version}`.

use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};

/// Prefix of every metric name the proxy exports.
pub const PREFIX: &str = "docmesh";

/// `Content-Type` of the `/metrics` response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Cheap-to-clone handle on the shared registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the `docmesh_` prefix and `docmesh_build_info` already registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "build",
            "docmesh-proxy build information",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("component", "docmesh-proxy"),
            ]),
        );
        Metrics {
            registry: Arc::new(RwLock::new(registry)),
        }
    }

    /// Registers `metric` as `docmesh_<name>`; keep the handle (metrics are cheap clones) and
    /// update it from the data path. Counters get `_total` appended by the encoder.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.write().register(name, help, metric);
    }

    /// Like [`Metrics::register`] with a unit suffix (`_seconds`, `_bytes`).
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.write().register_with_unit(name, help, unit, metric);
    }

    /// Registers a collector that produces its metrics at scrape time (e.g. values read from
    /// the current SVID).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.write().register_collector(collector);
    }

    /// Runs `f` with the underlying registry, for sub-registries or anything else the
    /// wrapper does not cover.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.write())
    }

    /// The whole registry in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn build_info_and_registered_metrics_are_encoded() {
        let m = Metrics::new();
        let c: Counter = Counter::default();
        m.register("test_events", "Events seen by the test", c.clone());
        c.inc_by(3);
        let text = m.encode().unwrap();
        assert!(
            text.contains(&format!(
                "docmesh_build_info{{version=\"{}\",component=\"docmesh-proxy\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("docmesh_test_events_total 3"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
