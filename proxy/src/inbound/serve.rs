//! Serving an inbound connection once its protocol is known: HTTP request by request (each
//! request goes to [`super::request::to_app`]), or opaque TCP relayed to the app; both logged
//! and counted per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use docmesh_certs::SpiffeId;
use hyper::body::Incoming;

use super::request::to_app;
use super::tls::PeerIdentity;
use super::Shared;
use crate::errors::{Hop, ProxyError};
use crate::http::serve::serve_connection_limited;
use crate::observe::{HopAddrs, Observability};
use crate::protocol::HttpVersion;

/// Relays an opaque TCP connection to the app, logged and counted per connection.
pub(super) async fn opaque<S>(
    shared: &Shared,
    obs: &Observability,
    pair: &crate::observe::ServicePair,
    mut down: S,
    peer: SocketAddr,
    app: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = (std::time::SystemTime::now(), std::time::Instant::now());
    let _open = obs.metrics.connection_opened(pair, "tcp");
    let addrs = HopAddrs {
        peer: Some(peer),
        upstream: Some(app),
    };
    match crate::net::connect(app, shared.connect_timeout, crate::net::APP).await {
        Ok(mut up) => {
            let bytes = match crate::net::copy_bidirectional(&mut down, &mut up).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "opaque inbound connection ended with an error");
                    (0, 0)
                }
            };
            obs.tcp_finished(pair, addrs, started, bytes, None);
        }
        Err(e) => {
            log_failure(&e, peer);
            obs.tcp_finished(pair, addrs, started, (0, 0), Some(&e));
        }
    }
}

/// Serves HTTP from a verified peer: every request carries `peer` and goes to the app.
pub(super) async fn http<Io>(
    shared: Arc<Shared>,
    io: Io,
    identity: Option<PeerIdentity>,
    peer: SocketAddr,
    app: SocketAddr,
    version: HttpVersion,
    revoked: impl std::future::Future<Output = ()>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let lifecycle = shared.lifecycle.clone();
    let stop = async {
        tokio::select! {
            _ = lifecycle.draining() => {}
            _ = revoked => {}
        }
    };
    let obs = shared.obs.load_full();
    let client = identity
        .as_ref()
        .map(|i| i.spiffe_id() as &dyn std::fmt::Display);
    let pair = obs.inbound_pair(app.port(), client);
    let _open = obs.metrics.connection_opened(&pair, "http");
    let addrs = HopAddrs {
        peer: Some(peer),
        upstream: Some(app),
    };
    let server_limits = shared.limits.load().server(Hop::Inbound);
    let handler = move |mut req: http::Request<Incoming>| {
        if let Some(id) = &identity {
            req.extensions_mut().insert(id.clone());
        }
        let shared = Arc::clone(&shared);
        let (obs, pair) = (Arc::clone(&obs), pair.clone());
        async move {
            obs.http(&pair, addrs, req, |req| to_app(&shared, app, version, req))
                .await
        }
    };
    serve_connection_limited(io, version, handler, stop, server_limits).await;
}

/// Authorization of an opaque TCP connection (the authorizer logs refusals, the decision is
/// counted for `pair`; a refused connection is then closed).
pub(super) fn tcp_allowed(
    shared: &Shared,
    obs: &Observability,
    pair: &crate::observe::ServicePair,
    app_port: u16,
    client: Option<&SpiffeId>,
) -> bool {
    let decision = shared.authz.load().authorize_tcp(app_port, client);
    let allowed = decision.is_allow();
    obs.metrics.authz_decision(pair, allowed, decision.reason());
    allowed
}

fn log_failure(e: &ProxyError, peer: SocketAddr) {
    tracing::warn!(cause = e.cause.as_str(), hop = "inbound", %peer, detail = %e.detail, "inbound connection failed");
}
