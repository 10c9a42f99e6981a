//! Wiring for `docmesh-proxy run`: logging, listeners, the data path and the drain.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::admin::{AdminServer, AdminState};
use crate::config::Config;
use crate::identity::Identity;
use crate::inbound::{Inbound, MeshServer};
use crate::lifecycle::{DrainOutcome, Lifecycle};
use crate::metrics::Metrics;
use crate::outbound::connect::MeshClient;
use crate::outbound::Outbound;

/// JSON log lines on stdout; `RUST_LOG` (or `DOCMESH_LOG`) sets the filter (default `info`).
pub fn init_logging() {
    let filter = std::env::var("DOCMESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stdout)
        .try_init();
}

/// Runs the proxy on a new multi-threaded runtime until the drain ends.
pub fn run_blocking(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(config))
}

/// Binds `addr` for the listener configured at `field`, with an error naming both.
async fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({field}): is another process using it?")
    })?;
    let local = l
        .local_addr()
        .with_context(|| format!("{field} has no local address"))?;
    tracing::info!(listener = field, addr = %local, "listening");
    Ok(l)
}

/// Binds the IPv6 twin of a transparent listener (`IPV6_V6ONLY`, so it never collides with
/// the IPv4 socket on the same port); `None` when the namespace has no IPv6.
fn bind_v6(addr: SocketAddr, field: &str) -> anyhow::Result<Option<TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bound = (|| {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        s.set_only_v6(true)?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        TcpListener::from_std(std::net::TcpListener::from(s))
    })();
    match bound {
        Ok(l) => {
            tracing::info!(listener = field, addr = %addr, "listening");
            Ok(Some(l))
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::EADDRNOTAVAIL) | Some(nix::libc::EAFNOSUPPORT)
            ) =>
        {
            tracing::info!(listener = field, addr = %addr, error = %e, "no IPv6 here; IPv6 listener skipped");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| {
            format!("cannot listen on {addr} ({field}; set it to false to skip IPv6)")
        }),
    }
}

/// Runs the proxy: loads the SVID, starts the admin server, binds every listener, serves until
/// SIGTERM, SIGINT or `POST /shutdown`, then drains for up to `admin.drain_grace_period`.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let lifecycle = Lifecycle::new();
    let metrics = Metrics::new();
    lifecycle.register_gate("listeners");
    let _signals = lifecycle
        .spawn_signal_handler()
        .context("cannot install signal handlers")?;

    let identity = Identity::start(&config.identity, &lifecycle)
        .await
        .context("cannot load the SVID ([identity])")?;
    identity.register_metrics(&metrics);
    let obs = crate::observe::Observability::new(&config.observability, &metrics);
    let _svid_watch = {
        let obs = obs.clone();
        identity.on_change(move |svid| {
            obs.set_local_id(&svid.spiffe_id);
            obs.metrics.svid_loaded(
                &svid.spiffe_id,
                crate::observe::unix_seconds(svid.not_after),
            );
        })
    };
    let _admin = AdminServer::bind(
        config.admin.listen,
        AdminState {
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            identity: Some(identity.clone()),
        },
    )
    .await?;
    let tls = Arc::new(identity.clone());
    let outbound = Outbound::new(
        &config.outbound,
        MeshClient::Mtls(tls.clone()),
        lifecycle.clone(),
        &metrics,
    )
    .context("invalid outbound configuration")?;
    outbound.set_resilience_observed(
        &config.resilience,
        Arc::new(crate::observe::resilience::MeshObserver::new(
            obs.clone(),
            &config.outbound.services,
        )),
    );
    let inbound = Inbound::new(
        &config.inbound,
        MeshServer::Mtls(tls),
        lifecycle.clone(),
        &metrics,
    );
    let authz = Arc::new(
        crate::authz::Authorizer::from_config(&config.authz)
            .context("invalid [authz] configuration")?,
    );
    let _key_reloader = authz.spawn_key_reloader();
    inbound.set_authorizer(authz);
    let limits = crate::limits::Limits::new(&config.limits);
    limits.register_metrics(&metrics);
    outbound.set_limits(limits.clone());
    inbound.set_limits(limits);
    outbound.set_observability(obs.clone());
    inbound.set_observability(obs);
    outbound.start(config.outbound.resolve_interval).await;

    let mut tasks = tokio::task::JoinSet::new();
    if config.outbound.transparent {
        let l = bind(config.outbound.listen, "outbound.listen").await?;
        let o = outbound.clone();
        tasks.spawn(async move { o.serve_transparent(l).await });
        if config.outbound.ipv6
            && config.outbound.listen.is_ipv4()
            && config.outbound.listen.port() != 0
        {
            let v6 =
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, config.outbound.listen.port()));
            if let Some(l) = bind_v6(v6, "outbound.ipv6")? {
                let o = outbound.clone();
                tasks.spawn(async move { o.serve_transparent(l).await });
            }
        }
    }
    for (i, lc) in config.outbound.listeners.iter().enumerate() {
        let l = bind(lc.listen, &format!("outbound.listeners[{i}].listen")).await?;
        let o = outbound.clone();
        let service = lc.service.clone();
        tasks.spawn(async move {
            if let Err(e) = o.serve_service(l, &service).await {
                tracing::error!(error = %e, "explicit listener stopped");
            }
        });
    }
    if config.inbound.transparent {
        let l = bind(config.inbound.listen, "inbound.listen").await?;
        let i = inbound.clone();
        tasks.spawn(async move { i.serve_transparent(l).await });
        if config.inbound.ipv6
            && config.inbound.listen.is_ipv4()
            && config.inbound.listen.port() != 0
        {
            let v6 = SocketAddr::from((
                std::net::Ipv6Addr::UNSPECIFIED,
                config.inbound.listen.port(),
            ));
            if let Some(l) = bind_v6(v6, "inbound.ipv6")? {
                let i = inbound.clone();
                tasks.spawn(async move { i.serve_transparent(l).await });
            }
        }
    }
    for (n, pc) in config.inbound.ports.iter().enumerate() {
        let l = bind(pc.listen, &format!("inbound.ports[{n}].listen")).await?;
        let i = inbound.clone();
        let app_port = pc.app_port;
        tasks.spawn(async move { i.serve_port(l, app_port).await });
    }
    lifecycle.open_gate("listeners");

    match lifecycle
        .drain_with_grace(config.admin.drain_grace_period)
        .await
    {
        DrainOutcome::Clean => tracing::info!("drained cleanly"),
        DrainOutcome::GraceExpired { still_in_flight } => {
            tracing::warn!(still_in_flight, "exiting with work still in flight")
        }
    }
    tasks.abort_all();
    Ok(())
}
