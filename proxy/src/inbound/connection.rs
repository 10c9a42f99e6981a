//! One accepted inbound connection: the first byte says whether the peer starts TLS; mTLS is
//! terminated and its ALPN says what runs inside, plaintext is refused (strict mode) or
//! detected (permissive mode). The connection is then served by [`super::serve`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::serve::{http, opaque, tcp_allowed};
use super::tls::{trust_lost, MeshServer, PeerIdentity, ServerTls};
use super::Shared;
use crate::config::inbound::InboundMode;
use crate::observe::Direction;
use crate::outbound::detect::{self, DetectEnd};
use crate::protocol::WireProtocol;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub(super) async fn handle(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    app_port: u16,
) {
    let app = SocketAddr::new(shared.app_host, app_port);
    let mut first = [0u8; 1];
    let (tls, silent) = match tokio::time::timeout(shared.detect_timeout, stream.peek(&mut first))
        .await
    {
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => (first[0] == TLS_HANDSHAKE, false),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound connection failed before its first byte");
            return;
        }
        Err(_) => (false, true),
    };
    match (&shared.mesh, tls) {
        (MeshServer::Mtls(server), true) => {
            let server = Arc::clone(server);
            mtls(shared, stream, peer, app, server).await
        }
        _ => plaintext(shared, stream, peer, app, silent).await,
    }
}

/// Terminates mTLS, then serves what the ALPN announces.
async fn mtls(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    app: SocketAddr,
    server: Arc<dyn ServerTls>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let obs = shared.obs.load_full();
    let service = format!("app:{}", app.port());
    let tls = match tokio::time::timeout(shared.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            obs.metrics
                .tls_handshake(Direction::Inbound, &service, Ok(()));
            tls
        }
        Ok(Err(e)) => {
            shared.handshake_failures.inc();
            let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(r) => match docmesh_certs::tls::svid_error_of(r) {
                    Some(svid) => svid.rule(),
                    None if matches!(r, rustls::Error::NoCertificatesPresented) => "no-client-cert",
                    None => "handshake-error",
                },
                None => "connection-closed",
            };
            obs.metrics
                .tls_handshake(Direction::Inbound, &service, Err(reason));
            let why = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .map(|r| match docmesh_certs::tls::svid_error_of(r) {
                    Some(svid) => format!("client SVID rejected: {svid}"),
                    None => r.to_string(),
                })
                .unwrap_or_else(|| e.to_string());
            tracing::warn!(%peer, app_port = app.port(), reason = %why, "inbound TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.handshake_failures.inc();
            obs.metrics
                .tls_handshake(Direction::Inbound, &service, Err("timeout"));
            tracing::warn!(%peer, app_port = app.port(), "inbound TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let id = conn
        .peer_certificates()
        .and_then(docmesh_certs::tls::peer_spiffe_id);
    let Some(id) = id else {
        // The verifier requires a client SVID; this is unreachable with a correct config.
        tracing::warn!(%peer, "inbound TLS connection without a client SPIFFE ID closed");
        return;
    };
    // No ALPN or `docmesh-tcp`: opaque TCP.
    let version = conn
        .alpn_protocol()
        .and_then(WireProtocol::from_alpn)
        .and_then(WireProtocol::http_version);
    let chain: Vec<_> = conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let identity = PeerIdentity::new(id, peer);
    tracing::debug!(%peer, client = %identity.spiffe_id(), ?version, "inbound mTLS connection");
    let client = identity.spiffe_id().to_string();
    let revoked = async {
        trust_lost(server.as_ref(), &chain).await;
        tracing::info!(%peer, %client, "the trust bundles no longer verify this client's SVID: its connection is closed (gracefully for HTTP)");
    };
    match version {
        Some(v) => http(shared, tls, Some(identity), peer, app, v, revoked).await,
        None => {
            let pair = obs.inbound_pair(app.port(), Some(identity.spiffe_id()));
            if !tcp_allowed(&shared, &obs, &pair, app.port(), Some(identity.spiffe_id())) {
                return;
            }
            tokio::select! {
                _ = opaque(&shared, &obs, &pair, tls, peer, app) => {}
                _ = revoked => {}
            }
        }
    }
}

/// A connection that did not start TLS: refused in strict mode. In permissive mode plaintext
/// HTTP is served as HTTP without a peer identity, so every request still goes through the
/// HTTP authorization (SPIFFE rules see no ID, JWT checks apply); anything else is opaque TCP,
/// refused where the port requires a JWT (so skipping TLS never skips authorization).
async fn plaintext(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    app: SocketAddr,
    silent: bool,
) {
    let obs = shared.obs.load_full();
    if shared.mode == InboundMode::Strict {
        shared.plaintext_refused.inc();
        let service = format!("app:{}", app.port());
        obs.metrics
            .tls_handshake(Direction::Inbound, &service, Err("plaintext-client"));
        tracing::warn!(
            %peer,
            app_port = app.port(),
            "peer sent plaintext to an mTLS port: is its sidecar missing? (connection closed; \
             inbound.mode = \"permissive\" accepts plaintext during a migration)"
        );
        return;
    }
    // A peer that stayed silent for detect_timeout already is server-speaks-first.
    let detected = if silent {
        Ok((
            WireProtocol::Opaque,
            bytes::Bytes::new(),
            DetectEnd::Timeout,
        ))
    } else {
        detect::detect(&mut stream, shared.detect_timeout).await
    };
    let (proto, prefix) = match detected {
        Ok((_, _, DetectEnd::Closed)) => return,
        Ok((d, bytes, _)) => (d, bytes),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "plaintext inbound connection failed during detection");
            return;
        }
    };
    let version = match proto.http_version() {
        Some(version) => version,
        None => {
            let authz = shared.authz.load();
            if authz.jwt_applies_to_port(app.port()) {
                // The bytes are not recognisably HTTP, yet the app on this port may parse them
                // as HTTP (a leading CRLF, a method outside the list): without a token check
                // they must not reach it.
                let pair = obs.inbound_pair(app.port(), None);
                let decision = authz.refuse_tcp(
                    app.port(),
                    "a JWT: plaintext that is not HTTP reached a port where authz.jwt applies",
                );
                obs.metrics.authz_decision(&pair, false, decision.reason());
                return;
            }
            let pair = obs.inbound_pair(app.port(), None);
            if !tcp_allowed(&shared, &obs, &pair, app.port(), None) {
                return;
            }
            let io = crate::net::Prefixed::new(prefix, stream);
            return opaque(&shared, &obs, &pair, io, peer, app).await;
        }
    };
    let io = crate::net::Prefixed::new(prefix, stream);
    http(shared, io, None, peer, app, version, std::future::pending()).await
}
