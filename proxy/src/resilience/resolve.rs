//! Resolution of `[resilience]` into runtime policy: built-in defaults, then `defaults`, then
//! the service's section, then its routes (see `config::resilience` for the merge rules).
//! The configuration only holds and validates data; this module builds the
//! [`ServicePolicy`] the stacks use.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use super::hash::{HashKey, HashSource};
use super::policy::{BalanceStrategy, HealthCheckPolicy, RouteMatch, RoutePolicy, ServicePolicy};
use crate::config::outbound::OutboundConfig;
use crate::config::resilience::{
    onlyoffice_routes, BalanceStrategyConfig, HashSourceConfig, HealthCheckConfig,
    ResilienceConfig, RetryConfig, ServiceResilience, TimeoutsConfig,
};

/// The resolved policy of the service `name` (defaults apply to unknown names).
pub fn service_policy(config: &ResilienceConfig, name: &str) -> ServicePolicy {
    service_policy_over(config, name, RoutePolicy::default())
}

/// Like [`service_policy`], with the hop timeouts of `[outbound]` (`connect_timeout`,
/// `handshake_timeout`, `pool_idle_timeout`) as the defaults that `[resilience]` overrides.
pub fn service_policy_for(
    config: &ResilienceConfig,
    name: &str,
    outbound: &OutboundConfig,
) -> ServicePolicy {
    let mut base = RoutePolicy::default();
    base.timeouts.connect = outbound.connect_timeout;
    base.timeouts.tls_handshake = outbound.handshake_timeout;
    base.timeouts.pool_idle = outbound.pool_idle_timeout;
    service_policy_over(config, name, base)
}

impl From<&HealthCheckConfig> for HealthCheckPolicy {
    fn from(h: &HealthCheckConfig) -> Self {
        HealthCheckPolicy {
            path: h.path.clone(),
            interval: h.interval,
            timeout: h.timeout,
            expect_status: h.expect_status,
            expect_body: h.expect_body.clone(),
            unhealthy_threshold: h.unhealthy_threshold,
            healthy_threshold: h.healthy_threshold,
        }
    }
}

/// The runtime form of a hash key source; `None` for one that [`HashSourceConfig::check`]
/// refuses (validation reports those).
fn hash_source(source: &HashSourceConfig) -> Option<HashSource> {
    source.check().ok()?;
    if let Some(q) = &source.query {
        return Some(HashSource::Query(q.clone()));
    }
    if let Some(c) = &source.cookie {
        return Some(HashSource::Cookie(c.clone()));
    }
    let h = source.header.as_deref()?;
    http::header::HeaderName::from_bytes(h.as_bytes())
        .ok()
        .map(HashSource::Header)
}

fn resolve_hash_key(sources: &[HashSourceConfig]) -> Option<Arc<HashKey>> {
    let sources: Vec<_> = sources.iter().filter_map(hash_source).collect();
    (!sources.is_empty()).then(|| Arc::new(HashKey { sources }))
}

fn pick<T: Clone>(layers: &[Option<&T>]) -> Option<T> {
    layers.iter().rev().find_map(|x| x.cloned())
}

fn opt_dur(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

fn apply_timeouts(p: &mut RoutePolicy, t: &TimeoutsConfig) {
    let to = &mut p.timeouts;
    if let Some(d) = t.connect {
        to.connect = d;
    }
    if let Some(d) = t.tls_handshake {
        to.tls_handshake = d;
    }
    if t.response_headers.is_some() {
        to.response_headers = opt_dur(t.response_headers);
    }
    if t.per_try.is_some() {
        to.per_try = opt_dur(t.per_try);
    }
    if t.request.is_some() {
        to.request = opt_dur(t.request);
    }
    if let Some(d) = t.pool_idle {
        to.pool_idle = d;
    }
    if t.stream_idle.is_some() {
        to.stream_idle = opt_dur(t.stream_idle);
    }
}

fn apply_retry(p: &mut RoutePolicy, r: &RetryConfig) {
    let rp = &mut p.retry;
    if let Some(v) = r.max_attempts {
        rp.max_attempts = v.max(1);
    }
    if let Some(v) = r.backoff_base {
        rp.backoff_base = v;
    }
    if let Some(v) = r.backoff_max {
        rp.backoff_max = v;
    }
    if let Some(v) = &r.on_status {
        rp.on_status = v.clone();
    }
    if let Some(v) = r.max_replay_bytes {
        rp.max_replay_bytes = v;
    }
}

fn parse_methods(methods: &[String]) -> Vec<Method> {
    methods
        .iter()
        .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
        .collect()
}

fn service_policy_over(
    config: &ResilienceConfig,
    name: &str,
    mut base: RoutePolicy,
) -> ServicePolicy {
    if config.onlyoffice_routes {
        base.hash_key = Some(Arc::new(HashKey::onlyoffice()));
    }
    let svc = config.services.get(name);
    let layers = [Some(&config.defaults), svc];
    for l in layers.iter().flatten() {
        apply_timeouts(&mut base, &l.timeouts);
        apply_retry(&mut base, &l.retry);
    }
    let mut p = ServicePolicy::new(name);
    let b = |f: &dyn Fn(&ServiceResilience) -> Option<f64>| {
        layers.iter().rev().flatten().find_map(|l| f(l))
    };
    if let Some(v) = b(&|l| l.retry.budget_ratio) {
        p.budget.ratio = v;
    }
    if let Some(v) = b(&|l| l.retry.budget_min_per_second.map(f64::from)) {
        p.budget.min_per_second = v as u32;
    }
    if let Some(v) = b(&|l| l.retry.budget_ttl.map(|d| d.as_secs_f64())) {
        p.budget.ttl = Duration::from_secs_f64(v);
    }
    for l in layers.iter().flatten() {
        let br = &l.breaker;
        let pb = &mut p.breaker;
        if let Some(v) = br.consecutive_failures {
            pb.consecutive_failures = v;
        }
        if let Some(v) = br.open_base {
            pb.open_base = v;
        }
        if let Some(v) = br.open_max {
            pb.open_max = v;
        }
        if let Some(v) = br.jitter {
            pb.jitter = v;
        }
        if let Some(v) = &br.failure_statuses {
            pb.failure_statuses = v.clone();
        }
        if let Some(v) = l.limits.max_concurrent {
            p.limits.max_concurrent = v.max(1);
        }
        if let Some(v) = l.limits.max_pending {
            p.limits.max_pending = v;
        }
        if let Some(v) = l.balance.strategy {
            p.balance.strategy = match v {
                BalanceStrategyConfig::P2cEwma => BalanceStrategy::P2cEwma,
                BalanceStrategyConfig::P2cLoad => BalanceStrategy::P2cLoad,
            };
        }
        if let Some(v) = l.balance.ewma_decay {
            p.balance.ewma_decay = v;
        }
    }
    p.health_check = pick(&layers.map(|l| l.and_then(|l| l.health_check.as_ref())))
        .map(|h| HealthCheckPolicy::from(&h));
    let builtin = if config.onlyoffice_routes {
        onlyoffice_routes()
    } else {
        Vec::new()
    };
    let routes = svc
        .map(|s| s.routes.iter())
        .into_iter()
        .flatten()
        .chain(config.defaults.routes.iter())
        .chain(builtin.iter());
    for r in routes {
        let mut rp = base.clone();
        apply_timeouts(&mut rp, &r.timeouts);
        apply_retry(&mut rp, &r.retry);
        if let Some(k) = &r.hash_key {
            rp.hash_key = resolve_hash_key(k);
        }
        let prefix = if r.path_prefix.is_empty() {
            "/".to_owned()
        } else {
            r.path_prefix.clone()
        };
        p.routes.push((
            RouteMatch {
                methods: parse_methods(&r.methods),
                path_prefix: prefix,
            },
            Arc::new(rp),
        ));
    }
    p.default_route = Arc::new(base);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ResilienceConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn layers_merge_defaults_service_route() {
        let c = parse(
            r#"
            [defaults.timeouts]
            response_headers = "30s"
            [defaults.retry]
            max_attempts = 4
            [services.ds.timeouts]
            per_try = "5s"
            [services.ds.breaker]
            consecutive_failures = 2
            [[services.ds.routes]]
            methods = ["post"]
            path_prefix = "/coauthoring/"
            retry = { max_attempts = 1 }
            "#,
        );
        c.validate().unwrap();
        let p = service_policy(&c, "ds");
        let d = &p.default_route;
        assert_eq!(d.timeouts.response_headers, Some(Duration::from_secs(30)));
        assert_eq!(d.timeouts.per_try, Some(Duration::from_secs(5)));
        assert_eq!(d.retry.max_attempts, 4);
        assert_eq!(p.breaker.consecutive_failures, 2);
        let r = p.route(&Method::POST, "/coauthoring/CommandService.ashx");
        assert_eq!(r.retry.max_attempts, 1);
        assert_eq!(r.timeouts.per_try, Some(Duration::from_secs(5)));
        let conv = p.route(&Method::POST, "/ConvertService.ashx");
        assert_eq!(
            conv.timeouts.response_headers,
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            p.route(&Method::GET, "/ConvertService.ashx")
                .timeouts
                .response_headers,
            Some(Duration::from_secs(30))
        );
        let other = service_policy(&c, "other");
        assert_eq!(other.breaker.consecutive_failures, 5);
        assert_eq!(other.default_route.timeouts.per_try, None);
    }

    #[test]
    fn zero_disables_a_timeout() {
        let c = parse("[defaults.timeouts]\nrequest = \"0s\"\n");
        assert_eq!(service_policy(&c, "x").default_route.timeouts.request, None);
    }

    #[test]
    fn health_check_and_onlyoffice_defaults() {
        let c = parse("[services.ds.health_check]\nexpect_body = \"true\"\n");
        let p = service_policy(&c, "ds");
        let h = p.health_check.clone().unwrap();
        assert_eq!(
            (h.path.as_str(), h.expect_body.as_deref()),
            ("/healthcheck", Some("true"))
        );
        let ws = p.route(&Method::GET, "/9.0.0/doc/abc/c/");
        assert!(ws.timeouts.stream_idle.unwrap() > Duration::from_secs(45));
        let c = parse("onlyoffice_routes = false\n");
        assert!(service_policy(&c, "ds").routes.is_empty());
    }

    #[test]
    fn hash_keys_inherit_the_onlyoffice_key_and_routes_override_it() {
        let c = parse(
            r#"
            [[services.ds.routes]]
            path_prefix = "/api/"
            hash_key = [{ header = "X-Doc" }, { cookie = "sid" }]
            [[services.ds.routes]]
            path_prefix = "/static/"
            hash_key = []
            "#,
        );
        c.validate().unwrap();
        let p = service_policy(&c, "ds");
        let oo = Some(Arc::new(HashKey::onlyoffice()));
        assert_eq!(p.default_route.hash_key, oo);
        assert_eq!(p.route(&Method::POST, "/ConvertService.ashx").hash_key, oo);
        let api = p.route(&Method::GET, "/api/x").hash_key.clone().unwrap();
        assert_eq!(
            api.sources,
            vec![
                HashSource::Header(http::HeaderName::from_static("x-doc")),
                HashSource::Cookie("sid".into())
            ]
        );
        assert_eq!(p.route(&Method::GET, "/static/a.js").hash_key, None);
        let off = parse("onlyoffice_routes = false\n");
        assert_eq!(service_policy(&off, "ds").default_route.hash_key, None);
    }

    #[test]
    fn outbound_hop_timeouts_are_the_base_that_resilience_overrides() {
        let outbound = OutboundConfig {
            connect_timeout: Duration::from_secs(7),
            handshake_timeout: Duration::from_secs(8),
            pool_idle_timeout: Duration::from_secs(2),
            ..OutboundConfig::default()
        };
        let c = parse("[services.ds.timeouts]\nconnect = \"1s\"\n");
        let ds = service_policy_for(&c, "ds", &outbound)
            .default_route
            .clone();
        assert_eq!(ds.timeouts.connect, Duration::from_secs(1));
        assert_eq!(ds.timeouts.tls_handshake, Duration::from_secs(8));
        assert_eq!(ds.timeouts.pool_idle, Duration::from_secs(2));
        let other = service_policy_for(&c, "other", &outbound)
            .default_route
            .clone();
        assert_eq!(other.timeouts.connect, Duration::from_secs(7));
    }

    #[test]
    fn health_check_defaults_come_from_the_config() {
        let p = HealthCheckPolicy::default();
        assert_eq!(p, HealthCheckPolicy::from(&HealthCheckConfig::default()));
        assert_eq!(
            (p.path.as_str(), p.interval),
            ("/healthcheck", Duration::from_secs(5))
        );
    }
}
