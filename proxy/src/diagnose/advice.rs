//! What a seasoned operator would say for each failure: one sentence and what to check.

use std::net::SocketAddr;
use std::time::Duration;

use super::report::Finding;
use crate::errors::{Cause, ProxyError};

/// A failure the data path's classification named: its cause and detail, with what to check.
pub fn from_error(e: &ProxyError) -> Finding {
    // Only the checks are taken from the functions below; the summary is the data path's.
    let addr = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut f = match e.cause {
        Cause::ConnectRefused => connect_refused(addr, ""),
        Cause::ConnectTimeout => connect_timeout(addr, Duration::ZERO),
        Cause::TlsPlaintextPeer => plaintext_peer(addr, ""),
        Cause::TlsUntrustedPeer => untrusted_peer(""),
        Cause::TlsRejectedByPeer => rejected_by_peer(""),
        Cause::IdentityMismatch => identity_mismatch("", ""),
        Cause::UpstreamReset => upstream_reset(""),
        _ => tls_failed(""),
    };
    f.cause = e.cause.as_str().to_owned();
    f.summary = e.detail.clone();
    f
}

/// The name did not resolve.
pub fn dns_failure(host: &str, err: &str) -> Finding {
    Finding::new(
        Cause::DnsFailure.as_str(),
        format!("`{host}` does not resolve: {err}"),
        &[
            "the spelling and namespace of the name (Kubernetes: <service>.<namespace>.svc.cluster.local; compose: the service name, on a shared network)",
            "that the Service / compose service exists and has endpoints",
            "`getent hosts <name>` from this container, and the nameserver and search domains in /etc/resolv.conf",
        ],
    )
}

/// The resolver did not answer in time.
pub fn dns_timeout(host: &str, timeout: Duration) -> Finding {
    Finding::new(
        Cause::DnsFailure.as_str(),
        format!("no answer for `{host}` from the resolver within {timeout:?}"),
        &[
            "that the nameserver in /etc/resolv.conf is reachable from this container (CoreDNS / kube-dns pods healthy?)",
            "network policies or firewalls that block UDP/TCP port 53",
        ],
    )
}

/// Nothing listens at the address.
pub fn connect_refused(addr: SocketAddr, detail: &str) -> Finding {
    Finding::new(
        Cause::ConnectRefused.as_str(),
        format!("{addr} refused the connection: nothing listens on port {} ({detail})", addr.port()),
        &[
            "that the peer and its docmesh sidecar are running (the peer's `curl -s 127.0.0.1:15020/ready`)",
            "the port: it must be the service port the peer's sidecar intercepts (transparent mode) or publishes (explicit mode), not a container-internal one",
            "that docmesh-init ran in the peer's network namespace (iptables -t nat -S | grep DOCMESH)",
        ],
    )
}

/// No TCP connection within the timeout: packets are dropped somewhere.
pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Finding {
    Finding::new(
        Cause::ConnectTimeout.as_str(),
        format!(
            "no TCP connection to {addr} within {timeout:?}: the SYN got no answer, so packets are being dropped (firewall, NetworkPolicy, security group, a down node, or a peer whose accept queue is full)"
        ),
        &[
            "network policies / firewall rules between this workload and the peer on that port",
            "that the address is current (stale DNS, a recycled pod IP): compare it with the peer's real address",
            "`ip route get <peer ip>` from this network namespace, and whether the peer's node is up",
            "the peer's load: a listener whose accept backlog is full silently drops new SYNs",
        ],
    )
}

/// The peer answered the ClientHello in plaintext.
pub fn plaintext_peer(addr: SocketAddr, detail: &str) -> Finding {
    Finding::new(
        Cause::TlsPlaintextPeer.as_str(),
        format!("{addr} answered the TLS handshake in plaintext ({detail}): no docmesh sidecar terminates TLS there"),
        &[
            "that the peer runs a docmesh sidecar and that its inbound intercepts this port (docmesh-init rules in the peer's namespace, port not excluded)",
            "explicit mode: target the peer sidecar's public inbound port, not the app's own port",
            "that no other proxy or load balancer in between terminates TLS and forwards plaintext",
        ],
    )
}

/// The peer's chain is not trusted by our bundle.
pub fn untrusted_peer(detail: &str) -> Finding {
    Finding::new(
        Cause::TlsUntrustedPeer.as_str(),
        format!("the peer's certificate is not trusted by our bundle: {detail}"),
        &[
            "that both sides use a root of the same trust domain (`docmesh-certs inspect` on both bundles)",
            "during a CA rotation, both bundles must hold the old and the new root until every SVID has rotated",
            "whether the peer's SVID expired or is not yet valid (clock skew on either node)",
        ],
    )
}

/// The peer refused our certificate (TLS alert).
pub fn rejected_by_peer(detail: &str) -> Finding {
    Finding::new(
        Cause::TlsRejectedByPeer.as_str(),
        format!("the peer aborted the handshake: {detail}; it does not accept our SVID"),
        &[
            "our SVID on this proxy's admin `/certs`: still valid, and from the trust domain the peer trusts?",
            "that the peer's bundle contains our trust domain's root (see the peer's `docmesh_tls_handshakes_total{result=\"failed\"}`)",
        ],
    )
}

/// The TLS handshake failed for another reason.
pub fn tls_failed(detail: &str) -> Finding {
    Finding::new(
        "tls-handshake-failed",
        format!("the TLS handshake failed: {detail}"),
        &[
            "that the peer is a docmesh sidecar (TLS 1.3 with SPIFFE SVIDs, ALPN http/1.1 or h2)",
            "the peer sidecar's logs for this connection",
        ],
    )
}

/// The peer presented another SPIFFE ID than the one expected.
pub fn identity_mismatch(expected: &str, got: &str) -> Finding {
    Finding::new(
        Cause::IdentityMismatch.as_str(),
        format!("the peer is {got}, but this service must be {expected}"),
        &[
            "the service's `spiffe_id` in this proxy's config",
            "which workload really answers at this address (stale DNS or a recycled IP can lead to the wrong pod)",
            "the peer's SVID registration (SPIRE entry selectors, or the SVID files given to its sidecar)",
        ],
    )
}

/// The peer (its proxy or its app) refused the request (401/403).
pub fn refused(status: u16, docmesh: Option<(&str, &str)>, our_id: Option<&str>) -> Finding {
    let cause = if status == 401 {
        Cause::Unauthenticated
    } else {
        Cause::Forbidden
    };
    match docmesh {
        Some((c, detail)) => Finding::new(
            c,
            format!(
                "the peer's docmesh refused the request with {status} ({c}): {detail}"
            ),
            &[
                &format!(
                    "the peer's authorization rules for our identity ({}) and this path",
                    our_id.unwrap_or("unknown")
                ),
                "for JWT rules: the token header, the shared secret / JWKS and the tenant permission table on the peer",
                "the peer's access log for the trace id above",
            ],
        ),
        None => Finding::new(
            cause.as_str(),
            format!("the app behind the peer answered {status} itself (no docmesh-error header): the mesh let the request through"),
            &[
                "the app's own authentication (OnlyOffice: the JWT secret must match on both sides)",
                "the app's logs for the trace id above",
            ],
        ),
    }
}

/// The upstream answered 5xx.
pub fn upstream_5xx(status: u16, docmesh: Option<(&str, &str)>) -> Finding {
    match docmesh {
        Some((c, detail)) => Finding::new(
            c,
            format!("the peer's docmesh answered {status} ({c}): {detail}"),
            &[
                "the peer sidecar could not serve the request on its side: for connect-refused, is the app listening on its loopback port?",
                "the peer's access log for the trace id above (same cause and detail)",
            ],
        ),
        None => Finding::new(
            "upstream-5xx",
            format!("the app behind the peer answered {status}: the mesh path works, the app failed"),
            &[
                "the app's logs for the trace id above",
                "the app's own dependencies (database, storage, message queue)",
            ],
        ),
    }
}

/// The upstream answered another unexpected status or body.
pub fn unexpected_answer(summary: String) -> Finding {
    Finding::new(
        "unexpected-response",
        summary,
        &[
            "the health check path and expected body in the config",
            "the app's logs for the trace id above",
        ],
    )
}

/// No response headers in time.
pub fn response_timeout(timeout: Duration) -> Finding {
    Finding::new(
        Cause::ResponseTimeout.as_str(),
        format!("no response headers within {timeout:?}"),
        &[
            "the app's load and logs on the peer (a slow or stuck handler)",
            "the peer sidecar's response timeout and its access log for the trace id above",
        ],
    )
}

/// The connection closed before a complete response.
pub fn upstream_reset(detail: &str) -> Finding {
    Finding::new(
        Cause::UpstreamReset.as_str(),
        format!("the connection closed before a complete response: {detail}"),
        &[
            "the peer sidecar's logs (did it refuse the connection after the handshake, e.g. an ALPN or authorization problem?)",
            "the app on the peer crashing or closing keep-alive connections early",
        ],
    )
}
