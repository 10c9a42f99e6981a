//! Live reload of the proxy's own configuration file, on SIGHUP and when its contents change
//! (polled every [`POLL`]).
//!
//! A new file is loaded exactly like at startup (same `DOCMESH_*` overrides, same validation);
//! only then are its live parts swapped in, each atomically (`arc-swap`): services added at the
//! end of `[[outbound.services]]`, `[[outbound.routes]]`, `[[inbound.rate_limits]]`,
//! `[resilience]` and `[authz]`. Requests and connections in flight keep what
//! they started with. A file that does not load, or that changes anything that cannot change
//! live (listen addresses, services, identity, ...), keeps the running configuration and is
//! reported in the log, in `docmesh_config_reloads_total{result}` and as a `/ready` note.
//!
//! Polling the contents rather than watching inotify events: Kubernetes updates a mounted
//! ConfigMap by swapping a symlink two levels up, which file watches miss or see twice;
//! reading a small file every few seconds is cheap and needs no dependency.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use crate::config::outbound::ServiceConfig;
use crate::config::{Config, ConfigError};
use crate::inbound::Inbound;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::resilience::observer::Observer;

/// How often the file's contents are compared with the last ones read.
pub const POLL: Duration = Duration::from_secs(2);

/// Builds the resilience observer (metrics) for a list of outbound services.
pub type ObserverFor = Arc<dyn Fn(&[ServiceConfig]) -> Arc<dyn Observer> + Send + Sync>;

/// What a reload changes: the running data path.
#[derive(Clone)]
pub struct Targets {
    /// The outbound side (services added, routes, resilience).
    pub outbound: Outbound,
    /// The inbound side (rate limits).
    pub inbound: Inbound,
    /// The resilience observer the new stacks report to, for the new service list.
    pub observer: ObserverFor,
}

/// Why a reload kept the running configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or validate.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The file changes settings that need a restart.
    #[error(
        "{} cannot change without a restart (live: services added after the existing ones, \
         outbound.routes, inbound.rate_limits, [resilience] and [authz]); restart the proxy \
         to apply the file",
        .0.join(", ")
    )]
    RestartRequired(Vec<String>),
    /// A live part was refused when applied.
    #[error("{0}")]
    Apply(String),
}

impl ReloadError {
    fn result(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) | ReloadError::Apply(_) => "invalid",
            ReloadError::RestartRequired(_) => "restart-required",
        }
    }
}

#[derive(Clone)]
struct ReloadMetrics {
    reloads: Family<Vec<(&'static str, String)>, Counter>,
    last_success: Gauge<f64, AtomicU64>,
}

impl ReloadMetrics {
    fn new(metrics: &Metrics) -> Self {
        let m = ReloadMetrics {
            reloads: Family::default(),
            last_success: Gauge::default(),
        };
        metrics.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or a changed file) by result: ok, invalid, restart-required",
            m.reloads.clone(),
        );
        metrics.register(
            "config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (startup or the last successful reload), Unix time",
            m.last_success.clone(),
        );
        m.last_success.set(now_unix());
        m
    }

    fn count(&self, result: &str) {
        self.reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Starts reloading `path` (the file `running` was loaded from) on SIGHUP and on a change of
/// its contents, until the drain starts. The SIGHUP handler is installed before this returns;
/// without a file (`None`: defaults and `DOCMESH_*` only) SIGHUP is logged and ignored rather
/// than ending the process.
pub fn spawn(
    path: Option<PathBuf>,
    running: Config,
    targets: Targets,
    metrics: &Metrics,
    lifecycle: Lifecycle,
) -> std::io::Result<JoinHandle<()>> {
    let mut hup = signal(SignalKind::hangup())?;
    let metrics = ReloadMetrics::new(metrics);
    let Some(path) = path else {
        return Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::warn!("SIGHUP ignored: the proxy runs without a config file (--config), so there is nothing to reload; environment variables are read only at startup");
            }
        }));
    };
    Ok(tokio::spawn(async move {
        let mut running = running;
        let mut seen = fingerprint(&path);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let drain = lifecycle.draining();
        tokio::pin!(drain);
        loop {
            let trigger = tokio::select! {
                _ = &mut drain => return,
                Some(()) = hup.recv() => "SIGHUP",
                _ = tick.tick() => {
                    let now = fingerprint(&path);
                    if now == seen || now.is_none() {
                        continue;
                    }
                    "file changed"
                }
            };
            seen = fingerprint(&path);
            match reload(&path, &mut running, &targets).await {
                Ok(changed) => {
                    metrics.count("ok");
                    metrics.last_success.set(now_unix());
                    lifecycle.set_note("config", None);
                    tracing::info!(path = %path.display(), trigger, changed = %changed.join(", "), "configuration reloaded");
                }
                Err(e) => {
                    metrics.count(e.result());
                    let detail = format!(
                        "reload of {} ({trigger}) failed, the previous configuration stays in \
                         effect: {e}",
                        path.display()
                    );
                    tracing::error!(path = %path.display(), trigger, error = %e, "configuration reload failed; the previous configuration stays in effect");
                    lifecycle.set_note("config", Some(detail.replace('\n', " ")));
                }
            }
        }
    }))
}

/// Loads `path`, checks that only live parts changed, and applies them; on success `running`
/// becomes the new configuration and the names of the changed parts are returned.
pub async fn reload(
    path: &Path,
    running: &mut Config,
    targets: &Targets,
) -> Result<Vec<String>, ReloadError> {
    let new = Config::load(Some(path))?;
    let fixed = restart_required(running, &new);
    if !fixed.is_empty() {
        return Err(ReloadError::RestartRequired(fixed));
    }
    // The one fallible step comes first, so a refused file changes nothing.
    let authorizer = if differs(&running.authz, &new.authz) {
        let az = crate::authz::Authorizer::from_config(&new.authz)
            .map_err(|e| ReloadError::Apply(format!("[authz]: {e}")))?;
        Some(Arc::new(az))
    } else {
        None
    };
    let mut changed = Vec::new();
    let (old_services, new_services) = (&running.outbound.services, &new.outbound.services);
    let observer = (targets.observer)(new_services);
    if new_services.len() > old_services.len() {
        let added = &new_services[old_services.len()..];
        targets
            .outbound
            .add_services(added, observer.clone(), new.outbound.resolve_interval)
            .await
            .map_err(|e| ReloadError::Apply(e.to_string()))?;
        let names: Vec<&str> = added.iter().map(|s| s.name.as_str()).collect();
        changed.push(format!("outbound.services (added {})", names.join(", ")));
    }
    if differs(&running.outbound.routes, &new.outbound.routes) {
        targets
            .outbound
            .set_routes(&new.outbound.routes)
            .map_err(|e| ReloadError::Apply(e.to_string()))?;
        changed.push("outbound.routes".to_owned());
    }
    if differs(&running.inbound.rate_limits, &new.inbound.rate_limits) {
        targets.inbound.set_rate_limits(&new.inbound.rate_limits);
        changed.push("inbound.rate_limits".to_owned());
    }
    if differs(&running.resilience, &new.resilience) {
        targets
            .outbound
            .set_resilience_observed(&new.resilience, observer);
        changed.push("resilience".to_owned());
    }
    if let Some(az) = authorizer {
        // The key reloader ends with the authorizer it belongs to.
        let _ = az.spawn_key_reloader();
        targets.inbound.set_authorizer(az);
        changed.push("authz".to_owned());
    }
    if changed.is_empty() {
        changed.push("nothing".to_owned());
    }
    *running = new;
    Ok(changed)
}

fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The settings that differ between `old` and `new` outside the live parts, by name.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    // Services may be added after the existing ones; any other change to them is fixed.
    let appended = new.outbound.services.len() >= old.outbound.services.len()
        && old
            .outbound
            .services
            .iter()
            .zip(&new.outbound.services)
            .all(|(a, b)| !differs(a, b));
    let strip = |c: &Config| {
        let mut c = c.clone();
        if appended {
            c.outbound.services.clear();
        }
        c.outbound.routes.clear();
        c.inbound.rate_limits.clear();
        c.resilience = Default::default();
        c.authz = Default::default();
        c
    };
    let (o, n) = (strip(old), strip(new));
    let mut out = Vec::new();
    // Fields named one by one where an operator most often edits; any other difference in a
    // section is reported by the section's name.
    let mut section = |name: &str, a: String, b: String, fields: Vec<(&str, String, String)>| {
        if a == b {
            return;
        }
        let named: Vec<String> = fields
            .into_iter()
            .filter(|(_, x, y)| x != y)
            .map(|(f, _, _)| format!("{name}.{f}"))
            .collect();
        if named.is_empty() {
            out.push(format!("[{name}]"));
        } else {
            out.extend(named);
        }
    };
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    section(
        "outbound",
        d(&o.outbound),
        d(&n.outbound),
        vec![
            ("listen", d(&o.outbound.listen), d(&n.outbound.listen)),
            (
                "transparent",
                d(&o.outbound.transparent),
                d(&n.outbound.transparent),
            ),
            ("services", d(&o.outbound.services), d(&n.outbound.services)),
            (
                "listeners",
                d(&o.outbound.listeners),
                d(&n.outbound.listeners),
            ),
        ],
    );
    section(
        "inbound",
        d(&o.inbound),
        d(&n.inbound),
        vec![
            ("listen", d(&o.inbound.listen), d(&n.inbound.listen)),
            (
                "transparent",
                d(&o.inbound.transparent),
                d(&n.inbound.transparent),
            ),
            ("ports", d(&o.inbound.ports), d(&n.inbound.ports)),
            ("mode", d(&o.inbound.mode), d(&n.inbound.mode)),
        ],
    );
    section(
        "admin",
        d(&o.admin),
        d(&n.admin),
        vec![("listen", d(&o.admin.listen), d(&n.admin.listen))],
    );
    section("identity", d(&o.identity), d(&n.identity), vec![]);
    section(
        "observability",
        d(&o.observability),
        d(&n.observability),
        vec![],
    );
    section("limits", d(&o.limits), d(&n.limits), vec![]);
    // A section added later is compared as a whole, never silently ignored.
    if d(&o) != d(&n) && out.is_empty() {
        out.push("a setting outside the live parts".to_owned());
    }
    out
}

#[cfg(test)]
mod tests;
