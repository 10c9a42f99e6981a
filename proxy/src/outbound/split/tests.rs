use super::*;
use crate::config::outbound::{Protocol, ServiceConfig};
use crate::config::routing::WeightedBackend;

fn services(names: &[&str]) -> Services {
    let cfgs: Vec<ServiceConfig> = names
        .iter()
        .enumerate()
        .map(|(i, n)| ServiceConfig {
            name: (*n).into(),
            addresses: vec![format!("10.0.0.{}:80", i + 1)],
            spiffe_id: format!("spiffe://td.example/{n}"),
            protocol: Protocol::Detect,
            ..ServiceConfig::default()
        })
        .collect();
    Services::new(&cfgs).unwrap()
}

fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn canary_route() -> TrafficRoute {
    TrafficRoute {
        service: "docservice".into(),
        matches: vec![RouteMatch {
            kind: MatchKind::Header,
            name: "x-canary".into(),
            value: Some("1".into()),
            backend: "docservice-canary".into(),
        }],
        backends: vec![
            WeightedBackend {
                service: "docservice".into(),
                weight: 90,
            },
            WeightedBackend {
                service: "docservice-canary".into(),
                weight: 10,
            },
        ],
        failover: vec!["docservice-backup".into()],
        ..TrafficRoute::default()
    }
}

fn chosen(c: Option<Choice>) -> (String, Reason) {
    let c = c.expect("a route applies");
    (c.backend.name.clone(), c.reason)
}

#[test]
fn weights_split_the_unit_interval_in_proportion() {
    let s = services(&["docservice", "docservice-canary", "docservice-backup"]);
    let r = Router::new(&[canary_route()], &s).unwrap();
    let svc = s.by_name("docservice").unwrap();
    let h = head("/doc", &[]);
    let pick = |roll| chosen(r.choose(svc, &h, |_| true, || roll)).0;
    assert_eq!(pick(0.0), "docservice");
    assert_eq!(pick(0.899), "docservice");
    assert_eq!(pick(0.9), "docservice-canary");
    assert_eq!(pick(0.99999), "docservice-canary");
    // 1000 evenly spaced rolls land exactly 100 times on the canary.
    let canary = (0..1000)
        .filter(|i| pick(*i as f64 / 1000.0) == "docservice-canary")
        .count();
    assert_eq!(canary, 100);
}

#[test]
fn a_header_or_query_match_wins_over_the_weights() {
    let s = services(&["docservice", "docservice-canary", "docservice-backup"]);
    let mut route = canary_route();
    route.matches.push(RouteMatch {
        kind: MatchKind::Query,
        name: "canary".into(),
        value: None,
        backend: "docservice-canary".into(),
    });
    let r = Router::new(&[route], &s).unwrap();
    let svc = s.by_name("docservice").unwrap();
    let by_header = r.choose(svc, &head("/", &[("x-canary", "1")]), |_| true, || 0.0);
    assert_eq!(
        chosen(by_header),
        ("docservice-canary".into(), Reason::Match)
    );
    let wrong_value = r.choose(svc, &head("/", &[("x-canary", "0")]), |_| true, || 0.0);
    assert_eq!(chosen(wrong_value), ("docservice".into(), Reason::Weight));
    let by_query = r.choose(svc, &head("/x?a=1&canary", &[]), |_| true, || 0.0);
    assert_eq!(
        chosen(by_query),
        ("docservice-canary".into(), Reason::Match)
    );
    let other_param = r.choose(svc, &head("/x?canaryx=1", &[]), |_| true, || 0.0);
    assert_eq!(chosen(other_param).0, "docservice");
}

#[test]
fn failover_goes_to_the_first_usable_backup_only_when_needed() {
    let s = services(&["docservice", "docservice-canary", "docservice-backup"]);
    let r = Router::new(&[canary_route()], &s).unwrap();
    let svc = s.by_name("docservice").unwrap();
    let h = head("/", &[]);
    let down = |name: &'static str| move |x: &Service| x.name != name;
    assert_eq!(
        chosen(r.choose(svc, &h, down("docservice"), || 0.0)),
        ("docservice-backup".into(), Reason::Failover)
    );
    // The canary's own outage fails over too, the primary's state does not matter.
    assert_eq!(
        chosen(r.choose(svc, &h, down("docservice-canary"), || 0.95)).0,
        "docservice-backup"
    );
    // With every backend down the chosen one answers with its own cause.
    assert_eq!(
        chosen(r.choose(svc, &h, |_| false, || 0.0)),
        ("docservice".into(), Reason::Weight)
    );
}

#[test]
fn no_route_for_other_services_or_paths_and_the_longest_prefix_wins() {
    let s = services(&["docservice", "docservice-canary", "docservice-backup"]);
    let mut api = canary_route();
    api.path_prefix = "/api/".into();
    api.backends = vec![WeightedBackend {
        service: "docservice-backup".into(),
        weight: 1,
    }];
    let mut root = canary_route();
    root.path_prefix = "/".into();
    let r = Router::new(&[root, api], &s).unwrap();
    let svc = s.by_name("docservice").unwrap();
    assert_eq!(
        chosen(r.choose(svc, &head("/api/x", &[]), |_| true, || 0.0)).0,
        "docservice-backup"
    );
    assert_eq!(
        chosen(r.choose(svc, &head("/web", &[]), |_| true, || 0.0)).0,
        "docservice"
    );
    let other = s.by_name("docservice-canary").unwrap();
    assert!(r.choose(other, &head("/", &[]), |_| true, || 0.0).is_none());
}

#[test]
fn unknown_services_and_zero_weights_are_refused() {
    let s = services(&["docservice", "docservice-canary"]);
    let e = Router::new(&[canary_route()], &s).unwrap_err();
    assert!(e.contains("docservice-backup"), "{e}");
    let mut zero = canary_route();
    zero.failover.clear();
    for b in &mut zero.backends {
        b.weight = 0;
    }
    let e = Router::new(&[zero], &s).unwrap_err();
    assert!(e.contains("sum to zero"), "{e}");
}
