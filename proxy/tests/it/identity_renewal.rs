//! `docmesh-certs renew` under traffic: two real `docmesh-proxy run` processes (mTLS between
//! them, files identity source) serve requests the whole time while their short-lived SVIDs are
//! renewed twice by the renewal code `docmesh-certs renew --watch` runs. No request may fail,
//! and each proxy's admin `/certs` must show new serials (the served certificate changed).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use docmesh_certs::renew::{renew_all, Outcome, RenewPolicy};

/// SVID lifetime: short, so that renewal happens during the test.
const TTL: Duration = Duration::from_secs(20);

fn identity_section(svid_dir: &Path) -> String {
    format!(
        "[identity]\nsource = \"files\"\ncert = {:?}\nkey = {:?}\nbundle = {:?}\nreload_interval = \"50ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        svid_dir.join("svid.pem"),
        svid_dir.join("svid.key"),
        svid_dir.join("bundle.pem"),
    )
}

async fn served_serial(admin: &str) -> String {
    let mut c = h1_client(admin.parse().unwrap()).await;
    let resp = bounded(c.send_request(get("/certs", "admin")))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    v["serial"].as_str().unwrap().to_owned()
}

/// Waits until the proxy at `admin` serves a serial other than `old`.
async fn wait_new_serial(admin: &str, old: &str) -> String {
    bounded(async {
        loop {
            let s = served_serial(admin).await;
            if s != old {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_short_lived_svids_under_traffic_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let svids = dir.path().join("svids");
    let ca = dev_ca("example.org");
    for (name, id) in [("server", SERVER_ID), ("client", CLIENT_ID)] {
        let s = ca.issue_svid(&id.parse().unwrap(), TTL).unwrap();
        docmesh_certs::ca::write_files(&svids.join(name), &s.files(ca.root_cert_pem()), false)
            .unwrap();
    }
    let app = start_http_app().await;
    let server_cfg = explicit_server_toml(&identity_section(&svids.join("server")), app.port());
    let mut server = ProxyProcess::start(
        dir.path(),
        "server",
        &server_cfg,
        &["inbound.ports[0].listen"],
    )
    .await;
    let inbound = server.listening["inbound.ports[0].listen"].clone();
    let client_cfg = explicit_client_toml(&identity_section(&svids.join("client")), &inbound);
    let mut client = ProxyProcess::start(
        dir.path(),
        "client",
        &client_cfg,
        &["outbound.listeners[0].listen"],
    )
    .await;
    let outbound = client.addr("outbound.listeners[0].listen");

    // Traffic: one connection per request (new handshakes) and one kept-alive connection.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut traffic = Vec::new();
    for keep_alive in [false, true] {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        traffic.push(tokio::spawn(async move {
            let mut conn = h1_client(outbound).await;
            while !stop.load(Ordering::Relaxed) {
                if !keep_alive {
                    conn = h1_client(outbound).await;
                }
                match bounded(conn.send_request(get("/", "documentserver"))).await {
                    Ok(resp) if resp.status() == 200 => {
                        text(resp).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let body = text(resp).await;
                        failures.lock().unwrap().push(format!("{status}: {body}"));
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(e.to_string());
                        conn = h1_client(outbound).await;
                    }
                }
            }
        }));
    }

    // Renew as `renew --watch --renew-at 0.25 --interval 100ms` does, until both proxies
    // have served two generations of renewed SVIDs.
    let policy = RenewPolicy {
        renew_at: 0.25,
        ttl: None,
    };
    let mut serials = [
        (served_serial(&server.admin).await, &server.admin),
        (served_serial(&client.admin).await, &client.admin),
    ];
    let first: Vec<String> = serials.iter().map(|(s, _)| s.clone()).collect();
    for _generation in 0..2 {
        let renewed = bounded(async {
            let mut total = 0;
            loop {
                let now = time::OffsetDateTime::now_utc();
                let res = renew_all(&ca, ca.root_cert_pem(), &svids, &policy, now).unwrap();
                let n = res
                    .iter()
                    .filter(|(_, r)| matches!(r.as_ref().unwrap(), Outcome::Renewed { .. }))
                    .count();
                total += n;
                if total >= 2 {
                    return total;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert_eq!(renewed, 2);
        for (serial, admin) in serials.iter_mut() {
            *serial = wait_new_serial(admin, serial).await;
        }
    }
    let before_stop = ok.load(Ordering::Relaxed);
    // A few more requests on the final SVIDs.
    bounded(async {
        while ok.load(Ordering::Relaxed) < before_stop + 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} request(s) failed: {failures:?}",
        failures.len()
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    for ((now, _), before) in serials.iter().zip(&first) {
        assert_ne!(now, before, "the served certificate must have changed");
    }
    eprintln!(
        "{} requests, 0 failures, two renewals of each SVID",
        ok.load(Ordering::Relaxed)
    );
    for p in [&mut client, &mut server] {
        p.terminate().await;
    }
}
