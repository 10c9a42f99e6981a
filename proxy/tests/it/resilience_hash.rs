//! Consistent hashing with real sockets: requests carrying a route's hash key stick to one
//! endpoint, an ejected owner's keys go to the next endpoint on the ring and come back after
//! recovery, and requests without the key are balanced as usual.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::resilience_support::*;
use docmesh_proxy::resilience::hash::{HashKey, Ring};
use docmesh_proxy::resilience::policy::BalanceStrategy;

fn hashing_policy() -> docmesh_proxy::resilience::policy::ServicePolicy {
    let mut p = policy("docservice");
    p.balance.strategy = BalanceStrategy::P2cLoad;
    p.breaker.consecutive_failures = 1;
    p.breaker.open_base = Duration::from_millis(100);
    p.breaker.open_max = Duration::from_millis(100);
    p.breaker.jitter = 0.0;
    with_route(&mut p, |r| {
        r.hash_key = Some(Arc::new(HashKey::onlyoffice()));
        r.retry.max_attempts = 2;
    });
    p
}

fn counts(ups: &[Upstream]) -> Vec<usize> {
    ups.iter().map(|u| u.counters.requests()).collect()
}

/// Which upstream took the requests between two snapshots; panics when several did.
fn only_one(before: &[usize], after: &[usize]) -> usize {
    let took: Vec<usize> = (0..before.len())
        .filter(|i| after[*i] > before[*i])
        .collect();
    assert_eq!(took.len(), 1, "requests of one key spread over {took:?}");
    took[0]
}

#[tokio::test]
async fn requests_of_one_document_stick_to_one_endpoint_and_documents_spread() {
    let ups = [
        Upstream::spawn(Kind::Ok).await,
        Upstream::spawn(Kind::Ok).await,
        Upstream::spawn(Kind::Ok).await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let s = stack(hashing_policy(), &addrs);
    let mut owners = Vec::new();
    for doc in 0..30 {
        let before = counts(&ups);
        for i in 0..5 {
            // Polling, POST and the WebSocket handshake path of socket.io, and WOPI.
            let path = match i {
                0 => format!("/9.0.0/doc/d{doc}/c/?EIO=4&transport=polling&shardkey=d{doc}"),
                1 => format!("/coauthoring/CommandService.ashx?shardkey=d{doc}"),
                _ => {
                    format!("/9.0.0/doc/d{doc}/c/?EIO=4&transport=websocket&shardkey=d{doc}&t={i}")
                }
            };
            assert_eq!(get(&s, &path).await.unwrap().0, 200);
        }
        owners.push(only_one(&before, &counts(&ups)));
    }
    for (i, _) in ups.iter().enumerate() {
        assert!(
            owners.contains(&i),
            "no document on endpoint {i}: {owners:?}"
        );
    }
    // WOPISrc is the fallback key.
    let before = counts(&ups);
    for _ in 0..5 {
        get(
            &s,
            "/hosting/wopi/word/view?WOPISrc=https%3A%2F%2Fwopi%2Ffiles%2F7",
        )
        .await
        .unwrap();
    }
    only_one(&before, &counts(&ups));
    // Without a key: balanced (p2c over idle endpoints picks at random).
    let before = counts(&ups);
    for _ in 0..30 {
        get(&s, "/healthcheck").await.unwrap();
    }
    let after = counts(&ups);
    let took = (0..3).filter(|i| after[*i] > before[*i]).count();
    assert!(
        took >= 2,
        "keyless requests all went to one endpoint: {before:?} -> {after:?}"
    );
}

#[tokio::test]
async fn an_ejected_owners_keys_go_to_the_next_endpoint_and_come_back() {
    let ups = [
        Upstream::spawn(Kind::Down503).await,
        Upstream::spawn(Kind::Down503).await,
        Upstream::spawn(Kind::Down503).await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let ring = Ring::new(&addrs);
    let s = stack(hashing_policy(), &addrs);
    let path = "/9.0.0/doc/x/c/?EIO=4&transport=polling&shardkey=doc-42";
    let h = docmesh_proxy::resilience::hash::stable_hash(b"doc-42");
    let order: Vec<usize> = ring
        .candidates(h)
        .map(|a| addrs.iter().position(|x| *x == a).unwrap())
        .collect();
    let (owner, next) = (order[0], order[1]);

    let before = counts(&ups);
    get(&s, path).await.unwrap();
    assert_eq!(
        only_one(&before, &counts(&ups)),
        owner,
        "the ring's owner took it"
    );

    // The owner fails: the retry and every following request go to the next on the ring.
    ups[owner].counters.set_down(true);
    for _ in 0..10 {
        assert_eq!(get(&s, path).await.unwrap().0, 200);
    }
    assert_eq!(ups[next].counters.requests(), 10);
    assert_eq!(ups[order[2]].counters.requests(), 0);

    // Recovered: once the open period ends the probe goes to the owner, and the key stays.
    ups[owner].counters.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    let owner_before = ups[owner].counters.requests();
    while ups[owner].counters.requests() == owner_before {
        assert!(
            Instant::now() < deadline,
            "the key never returned to its owner"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(get(&s, path).await.unwrap().0, 200);
    }
    let before = counts(&ups);
    for _ in 0..10 {
        get(&s, path).await.unwrap();
    }
    assert_eq!(only_one(&before, &counts(&ups)), owner);
}

#[tokio::test]
async fn per_endpoint_request_metrics_match_what_each_replica_saw() {
    use docmesh_proxy::config::observability::ObservabilityConfig;
    use docmesh_proxy::config::outbound::ServiceConfig;
    use docmesh_proxy::metrics::Metrics;
    use docmesh_proxy::observe::Observability;
    use docmesh_proxy::resilience::endpoint::{plain_client, NewHyperEndpoint};
    use docmesh_proxy::resilience::mesh_observer::MeshObserver;
    use docmesh_proxy::resilience::ServiceStack;

    let ups = [
        Upstream::spawn(Kind::Ok).await,
        Upstream::spawn(Kind::Ok).await,
        Upstream::spawn(Kind::Ok).await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let shared = Metrics::new();
    let obs =
        Observability::with_log_writer(&ObservabilityConfig::default(), &shared, tokio::io::sink());
    let svc = ServiceConfig {
        name: "docservice".into(),
        spiffe_id: "spiffe://example.org/ns/oo/sa/docservice".into(),
        ..ServiceConfig::default()
    };
    let observer = Arc::new(MeshObserver::new(obs, &[svc]));
    let p = hashing_policy();
    let client = plain_client(&p.default_route.timeouts);
    let s: Stack = ServiceStack::observed(p, NewHyperEndpoint::new(client), &addrs, observer);
    for doc in 0..40 {
        get(&s, &format!("/doc/x/c/?shardkey=doc-{doc}"))
            .await
            .unwrap();
    }
    for _ in 0..20 {
        get(&s, "/healthcheck").await.unwrap();
    }
    let text = shared.encode().unwrap();
    let samples = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples;
    let mut total = 0.0;
    for u in &ups {
        let found: Vec<_> = samples
            .iter()
            .filter(|x| {
                x.metric == "docmesh_endpoint_requests_total"
                    && x.labels.get("service") == Some("docservice")
                    && x.labels.get("endpoint") == Some(u.addr.to_string().as_str())
            })
            .collect();
        assert_eq!(found.len(), 1, "{}: {found:?}", u.addr);
        let v = match found[0].value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("not a single value: {other:?}"),
        };
        eprintln!(
            "{}: metric {v}, replica saw {}",
            u.addr,
            u.counters.requests()
        );
        assert_eq!(v as usize, u.counters.requests());
        total += v;
    }
    assert_eq!(total, 60.0);
}
