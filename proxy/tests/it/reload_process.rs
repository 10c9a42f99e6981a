//! Live reload with real `docmesh-proxy run` processes: a client sidecar whose route sends
//! everything to `docservice` is switched to `docservice-canary` with SIGHUP while a long
//! request is in flight (it completes on its old backend) and an open connection stays usable;
//! a service is added live and the route sends to it; the server sidecar's rate limit is
//! tightened live; a bad file (noticed by polling, no signal) keeps the old config and shows up
//! in the metric and the `/ready` note; a file that changes a service is refused as
//! restart-required.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::routes_split::{release_held, start_named_app};
use crate::support::{
    bounded, dev_ca, get, h1_client, identity_toml, svid, ProxyProcess, CLIENT_ID, SERVER_ID,
};

fn server_toml(identity: &str, stable: u16, canary: u16, limits: &str) -> String {
    format!(
        "{identity}[inbound]\ntransparent = false\n[[inbound.ports]]\nlisten = \"127.0.0.1:0\"\napp_port = {stable}\n[[inbound.ports]]\nlisten = \"127.0.0.1:0\"\napp_port = {canary}\n{limits}[outbound]\ntransparent = false\n"
    )
}

/// The client sidecar: an explicit listener for `docservice`, whose route splits between
/// `docservice` and `docservice-canary` by `weights`, and with `next`, a third service
/// `docservice-next` (address, weight) added after them.
fn client_toml(
    identity: &str,
    stable: SocketAddr,
    canary: SocketAddr,
    weights: (u32, u32),
    next: Option<(SocketAddr, u32)>,
) -> String {
    let (next_service, next_backend) = match next {
        Some((addr, w)) => (
            format!("[[outbound.services]]\nname = \"docservice-next\"\naddresses = [\"{addr}\"]\nspiffe_id = \"{SERVER_ID}\"\n"),
            format!("  {{ service = \"docservice-next\", weight = {w} }},\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"{identity}[inbound]
transparent = false
[outbound]
transparent = false
[[outbound.services]]
name = "docservice"
addresses = ["{stable}"]
spiffe_id = "{SERVER_ID}"
[[outbound.services]]
name = "docservice-canary"
addresses = ["{canary}"]
spiffe_id = "{SERVER_ID}"
{next_service}[[outbound.listeners]]
listen = "127.0.0.1:0"
service = "docservice"
[[outbound.routes]]
service = "docservice"
backends = [
  {{ service = "docservice", weight = {} }},
  {{ service = "docservice-canary", weight = {} }},
{next_backend}]
"#,
        weights.0, weights.1
    )
}

async fn admin_get(p: &ProxyProcess, path: &str) -> (u16, String) {
    let mut c = h1_client(p.admin.parse().unwrap()).await;
    let resp = bounded(c.send_request(get(path, "admin"))).await.unwrap();
    let status = resp.status().as_u16();
    (status, crate::support::text(resp).await)
}

/// Waits until `docmesh_config_reloads_total{result}` reaches `n`.
async fn await_reloads(p: &ProxyProcess, result: &str, n: u64) {
    let line = format!("docmesh_config_reloads_total{{result=\"{result}\"}} {n}");
    bounded(async {
        loop {
            let (_, text) = admin_get(p, "/metrics").await;
            if text.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

fn sighup(p: &ProxyProcess) {
    let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

async fn backend(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut c = h1_client(addr).await;
    let resp = bounded(c.send_request(get(path, "docservice")))
        .await
        .unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let out = (resp.status().as_u16(), h("x-app"), h("docmesh-error"));
    crate::support::text(resp).await;
    out
}

fn write(dir: &Path, name: &str, text: &str) {
    // Atomically, as a ConfigMap update or an editor's save-by-rename does.
    let tmp = dir.join(format!("{name}.toml.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.toml"))).unwrap();
}

#[tokio::test]
async fn weights_and_limits_reload_live_and_bad_files_keep_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dev_ca("example.org");
    let stable_app = start_named_app("docservice").await;
    let canary_app = start_named_app("docservice-canary").await;
    let server_id = identity_toml(dir.path(), "server", &svid(&ca, SERVER_ID), &ca);
    let client_id = identity_toml(dir.path(), "client", &svid(&ca, CLIENT_ID), &ca);
    let server_cfg =
        |limits: &str| server_toml(&server_id, stable_app.port(), canary_app.port(), limits);
    let server = ProxyProcess::start(
        dir.path(),
        "server",
        &server_cfg(""),
        &["inbound.ports[0].listen", "inbound.ports[1].listen"],
    )
    .await;
    let (stable, canary) = (
        server.addr("inbound.ports[0].listen"),
        server.addr("inbound.ports[1].listen"),
    );
    let client = ProxyProcess::start(
        dir.path(),
        "client",
        &client_toml(&client_id, stable, canary, (1, 0), None),
        &["outbound.listeners[0].listen"],
    )
    .await;
    let app = client.addr("outbound.listeners[0].listen");
    assert_eq!(backend(app, "/").await.1, "docservice");
    // An open keep-alive connection, used before and after the reload.
    let mut open = h1_client(app).await;
    let before = bounded(open.send_request(get("/", "docservice")))
        .await
        .unwrap();
    assert_eq!(before.headers()["x-app"], "docservice");
    crate::support::text(before).await;

    // A long request in flight across the reload.
    let long = tokio::spawn(backend(app, "/hold"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(
        dir.path(),
        "client",
        &client_toml(&client_id, stable, canary, (0, 1), None),
    );
    sighup(&client);
    await_reloads(&client, "ok", 1).await;
    for _ in 0..10 {
        assert_eq!(backend(app, "/").await.1, "docservice-canary");
    }
    let after = bounded(open.send_request(get("/", "docservice")))
        .await
        .unwrap();
    assert_eq!(after.headers()["x-app"], "docservice-canary");
    crate::support::text(after).await;
    assert!(!long.is_finished(), "the held request is still in flight");
    release_held();
    assert_eq!(
        bounded(long).await.unwrap(),
        (200, "docservice".into(), String::new()),
        "the request in flight completes on the backend it started with"
    );

    // Add a service (at the stable app's inbound) and send everything to it.
    let next = client_toml(&client_id, stable, canary, (0, 0), Some((stable, 1)));
    write(dir.path(), "client", &next);
    sighup(&client);
    await_reloads(&client, "ok", 2).await;
    for _ in 0..5 {
        assert_eq!(backend(app, "/").await.1, "docservice");
    }

    // Tighten the server's limit: two requests a minute for everyone.
    let limits = "[[inbound.rate_limits]]\nper_tenant = false\nrequests = 2\nper = \"1m\"\n";
    write(dir.path(), "server", &server_cfg(limits));
    sighup(&server);
    await_reloads(&server, "ok", 1).await;
    assert_eq!(backend(app, "/").await.0, 200);
    assert_eq!(backend(app, "/").await.0, 200);
    let (status, _, cause) = backend(app, "/").await;
    assert_eq!((status, cause.as_str()), (429, "rate-limited"));

    // A bad file, noticed without a signal: the old config stays, reported three ways.
    write(
        dir.path(),
        "client",
        &client_toml(&client_id, stable, canary, (0, 0), Some((stable, 0))),
    );
    await_reloads(&client, "invalid", 1).await;
    let (status, ready) = admin_get(&client, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains("config: reload of") && ready.contains("outbound.routes[0].backends"),
        "{ready}"
    );
    let (_, metrics) = admin_get(&client, "/metrics").await;
    assert!(
        metrics.contains("docmesh_config_last_reload_success_timestamp_seconds"),
        "{metrics}"
    );
    // The old config still serves (the server's limit refuses the request now).
    let (status, _, cause) = backend(app, "/").await;
    assert_eq!((status, cause.as_str()), (429, "rate-limited"));

    // A change that needs a restart is named and refused.
    let moved = client_toml(&client_id, canary, stable, (0, 1), Some((stable, 1)));
    write(dir.path(), "client", &moved);
    sighup(&client);
    await_reloads(&client, "restart-required", 1).await;
    let (_, ready) = admin_get(&client, "/ready").await;
    assert!(ready.contains("outbound.services"), "{ready}");
}
