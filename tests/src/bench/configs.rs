//! Configuration files of the three proxy pairs, written so they do the same work: the
//! client-side proxy takes plaintext HTTP/1.1 on 127.0.0.1 and forwards it over TLS 1.3 with
//! mutual authentication (ECDSA P-256 SVIDs from one CA; the server identity is checked) to
//! the server-side proxy, which forwards to the backend; both hops reuse keep-alive
//! connections; one worker thread per proxy; no access logs; connection limits above the
//! connection-scale test's 10 000 idle client connections. Every file lives in the run's
//! own directory, so nothing needs root.

use std::path::Path;

use super::pki::{Pki, SERVER_ID, SERVER_NAME};

/// The ports of one pair (all on 127.0.0.1).
#[derive(Debug, Clone, Copy)]
pub struct PairPorts {
    /// Where the load generator sends plaintext HTTP (client-side proxy).
    pub outbound: u16,
    /// The mTLS port of the server-side proxy.
    pub inbound: u16,
    /// The backend.
    pub backend: u16,
}

/// `[identity]`/`[admin]`/`[observability]`/`[limits]` shared by both docmesh sidecars.
/// The connection limits are raised above the 10 000 idle client connections of the
/// connection-scale test (as `worker_connections` for nginx and `maxconn` for HAProxy).
fn docmesh_common(cert: &Path, key: &Path, bundle: &Path) -> String {
    format!(
        "[identity]\nsource = \"files\"\ncert = {cert:?}\nkey = {key:?}\nbundle = {bundle:?}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [observability.access_log]\nenabled = false\n\
         [limits]\nmax_connections = 30000\nmax_connections_per_listener = 30000\n"
    )
}

/// The client-side docmesh sidecar (explicit mode): listener on `outbound`, service at the
/// inbound sidecar with the server's SPIFFE ID, HTTP/1.1 from the app.
pub fn docmesh_outbound(pki: &Pki, p: PairPorts) -> String {
    format!(
        "{}[inbound]\ntransparent = false\n\
         [outbound]\ntransparent = false\n\
         [[outbound.services]]\nname = \"documentserver\"\naddresses = [\"127.0.0.1:{}\"]\n\
         spiffe_id = \"{SERVER_ID}\"\nprotocol = \"http1\"\n\
         [[outbound.listeners]]\nlisten = \"127.0.0.1:{}\"\nservice = \"documentserver\"\n",
        docmesh_common(&pki.client.cert, &pki.client.key, &pki.bundle),
        p.inbound,
        p.outbound
    )
}

/// The server-side docmesh sidecar: explicit mTLS port `inbound` for the app on `backend`.
pub fn docmesh_inbound(pki: &Pki, p: PairPorts) -> String {
    format!(
        "{}[inbound]\ntransparent = false\nmode = \"strict\"\napp_host = \"127.0.0.1\"\n\
         [[inbound.ports]]\nlisten = \"127.0.0.1:{}\"\napp_port = {}\n\
         [outbound]\ntransparent = false\n",
        docmesh_common(&pki.server.cert, &pki.server.key, &pki.bundle),
        p.inbound,
        p.backend
    )
}

/// The part of an nginx config every nginx of the benchmark shares; `name` keeps the files
/// of the two instances apart inside `dir`; at most `max_conns` connections.
fn nginx_main(dir: &Path, name: &str, http: &str, max_conns: usize) -> String {
    let d = dir.display();
    // As root nginx would switch its worker to `nobody`; stay the user who runs us.
    let user = if nix::unistd::geteuid().is_root() {
        "user root root;\n"
    } else {
        ""
    };
    // worker_connections counts client and upstream connections; nginx allocates them all
    // at start, so the limit is sized for the test, not far above it.
    let nofile = 2 * max_conns + 64;
    format!(
        "{user}daemon off;\nmaster_process on;\nworker_processes 1;\n\
         pid {d}/nginx-{name}.pid;\nerror_log {d}/nginx-{name}.error.log warn;\n\
         worker_rlimit_nofile {nofile};\n\
         events {{\n  worker_connections {max_conns};\n}}\n\
         http {{\n  access_log off;\n\
         client_body_temp_path {d}/nginx-{name}-body;\n  proxy_temp_path {d}/nginx-{name}-proxy;\n\
         fastcgi_temp_path {d}/nginx-{name}-fastcgi;\n  uwsgi_temp_path {d}/nginx-{name}-uwsgi;\n\
         scgi_temp_path {d}/nginx-{name}-scgi;\n\
         keepalive_requests 100000000;\n  keepalive_timeout 120s;\n{http}}}\n"
    )
}

/// The client-side nginx: plaintext in, TLS 1.3 with the client SVID to the inbound nginx,
/// server verified against the bundle and CN [`SERVER_NAME`], keep-alive upstream.
pub fn nginx_outbound(dir: &Path, pki: &Pki, p: PairPorts, max_conns: usize) -> String {
    let http = format!(
        "  upstream mesh {{\n    server 127.0.0.1:{inb};\n    keepalive 64;\n\
         keepalive_requests 100000000;\n    keepalive_timeout 120s;\n  }}\n\
         server {{\n    listen 127.0.0.1:{out};\n    location / {{\n\
         proxy_pass https://mesh;\n      proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n\
         proxy_ssl_protocols TLSv1.3;\n\
         proxy_ssl_certificate {cert};\n      proxy_ssl_certificate_key {key};\n\
         proxy_ssl_trusted_certificate {bundle};\n      proxy_ssl_verify on;\n\
         proxy_ssl_verify_depth 2;\n      proxy_ssl_name {SERVER_NAME};\n\
         proxy_ssl_session_reuse on;\n    }}\n  }}\n",
        inb = p.inbound,
        out = p.outbound,
        cert = pki.client.cert.display(),
        key = pki.client.key.display(),
        bundle = pki.bundle.display(),
    );
    nginx_main(dir, "out", &http, max_conns)
}

/// The server-side nginx: TLS 1.3 requiring a client certificate from the bundle, keep-alive
/// upstream to the backend.
pub fn nginx_inbound(dir: &Path, pki: &Pki, p: PairPorts, max_conns: usize) -> String {
    let http = format!(
        "  upstream app {{\n    server 127.0.0.1:{backend};\n    keepalive 64;\n\
         keepalive_requests 100000000;\n    keepalive_timeout 120s;\n  }}\n\
         server {{\n    listen 127.0.0.1:{inb} ssl;\n\
         ssl_protocols TLSv1.3;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
         ssl_client_certificate {bundle};\n    ssl_verify_client on;\n    ssl_verify_depth 2;\n\
         location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n    }}\n  }}\n",
        backend = p.backend,
        inb = p.inbound,
        cert = pki.server.cert.display(),
        key = pki.server.key.display(),
        bundle = pki.bundle.display(),
    );
    nginx_main(dir, "in", &http, max_conns)
}

/// `maxconn`: the connection-scale test's idle client connections plus room for the load
/// (HAProxy wants two descriptors per connection and refuses to start without them).
fn haproxy_main(maxconn: usize) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn {maxconn}\n  ssl-server-verify required\n\
         defaults\n  mode http\n  maxconn {maxconn}\n  timeout connect 5s\n\
         timeout client 120s\n  timeout server 120s\n  timeout http-keep-alive 120s\n\
         option http-keep-alive\n  http-reuse always\n"
    )
}

/// The ALPN of an HAProxy pair's mesh hop: HTTP/1.1 (`haproxy`) or HTTP/2 (`haproxy-h2`,
/// many requests multiplexed on one mTLS connection, the strongest set-up HAProxy offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshAlpn {
    /// `alpn http/1.1` on both sides.
    Http1,
    /// `alpn h2` on both sides.
    H2,
}

impl MeshAlpn {
    fn token(self) -> &'static str {
        match self {
            MeshAlpn::Http1 => "http/1.1",
            MeshAlpn::H2 => "h2",
        }
    }
}

/// The client-side HAProxy: plaintext in, TLS 1.3 with the client SVID to the inbound
/// HAProxy, server verified against the bundle and `verifyhost` [`SERVER_NAME`], idle
/// server connections reused (`http-reuse always`), the mesh hop speaking `alpn`, at most
/// `maxconn` connections.
pub fn haproxy_outbound(pki: &Pki, p: PairPorts, alpn: MeshAlpn, maxconn: usize) -> String {
    format!(
        "{}frontend fe\n  bind 127.0.0.1:{}\n  default_backend mesh\n\
         backend mesh\n  server inbound 127.0.0.1:{} ssl crt {} ca-file {} verify required \
         verifyhost {SERVER_NAME} ssl-min-ver TLSv1.3 alpn {} pool-max-conn 64\n",
        haproxy_main(maxconn),
        p.outbound,
        p.inbound,
        pki.client.combined.display(),
        pki.bundle.display(),
        alpn.token(),
    )
}

/// The server-side HAProxy: TLS 1.3 requiring a client certificate from the bundle, the
/// mesh hop speaking `alpn`, at most `maxconn` connections.
pub fn haproxy_inbound(pki: &Pki, p: PairPorts, alpn: MeshAlpn, maxconn: usize) -> String {
    format!(
        "{}frontend fe\n  bind 127.0.0.1:{} ssl crt {} ca-file {} verify required \
         ssl-min-ver TLSv1.3 alpn {}\n  default_backend app\n\
         backend app\n  server app 127.0.0.1:{} pool-max-conn 64\n",
        haproxy_main(maxconn),
        p.inbound,
        pki.server.combined.display(),
        pki.bundle.display(),
        alpn.token(),
        p.backend,
    )
}
