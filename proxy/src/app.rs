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

/// JSON log lines on stdout; `DOCMESH_LOG` (or `RUST_LOG`) sets the filter (default `info`):
/// a level, or `target=level` pairs such as `info,docmesh_proxy::outbound=debug`. A filter
/// that does not parse is reported on stderr, naming the problem, and `info` is used.
///
/// `Targets` rather than `EnvFilter`: the same static directives without the regex engine,
/// which was ~10% of the binary's code and so of every sidecar's resident memory.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (source, text) = match std::env::var("DOCMESH_LOG") {
        Ok(v) => ("DOCMESH_LOG", v),
        Err(_) => match std::env::var("RUST_LOG") {
            Ok(v) => ("RUST_LOG", v),
            Err(_) => ("default", "info".to_owned()),
        },
    };
    let filter = parse_log_filter(&text).unwrap_or_else(|e| {
        eprintln!(
            "docmesh-proxy: {source}={text:?} is not a log filter ({e}); expected a level \
             (error, warn, info, debug, trace) or target=level pairs separated by commas; \
             logging at info"
        );
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(std::io::stdout);
    let _ = tracing_subscriber::registry()
        .with(json)
        .with(filter)
        .try_init();
}

/// Parses a log filter (`info`, `warn,docmesh_proxy::inbound=debug`).
pub fn parse_log_filter(
    text: &str,
) -> Result<tracing_subscriber::filter::Targets, tracing_subscriber::filter::ParseError> {
    text.trim().parse()
}

/// Runs the proxy until the drain ends, on a single-threaded runtime when it has one core
/// (no work-stealing bookkeeping, no cross-thread wake-ups: the sidecar's usual
/// deployment) and on tokio's multi-threaded runtime otherwise.
pub fn run_blocking(config: Config) -> anyhow::Result<()> {
    run_blocking_from(config, None)
}

/// Like [`run_blocking`] for a configuration loaded from `path`, which is then reloaded on
/// SIGHUP and when it changes (see [`crate::reload`]).
pub fn run_blocking_from(config: Config, path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let threads = worker_threads().map_err(anyhow::Error::msg)?;
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        // Set explicitly: tokio would read the variable again, and panic on a bad value.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    rt.block_on(run_from(config, path))
}

/// How many threads run the proxy: `TOKIO_WORKER_THREADS` (tokio's own setting, e.g. from a
/// Pod's CPU limit) when set, else the cores this process may use.
fn worker_threads() -> Result<usize, String> {
    let setting = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(v)) => Some(v.to_string_lossy().into_owned()),
    };
    choose_worker_threads(
        setting.as_deref(),
        std::thread::available_parallelism().ok().map(|n| n.get()),
    )
}

/// [`worker_threads`] without the environment: `setting` must be a positive whole number.
fn choose_worker_threads(setting: Option<&str>, cores: Option<usize>) -> Result<usize, String> {
    match setting {
        None => Ok(cores.unwrap_or(1)),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS={v:?} is not a positive whole number of threads (set it \
                 to the CPU limit, e.g. 1, or unset it to use every core this process may use)"
            )),
        },
    }
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
    run_from(config, None).await
}

/// Like [`run`]; with `path` (the file `config` came from) the live parts of the file are
/// reloaded on SIGHUP and when it changes.
pub async fn run_from(config: Config, path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
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
    let app_probes = crate::admin::probe::AppProbes::from_env()?;
    let _admin = AdminServer::bind_with_probes(
        config.admin.listen,
        AdminState {
            lifecycle: lifecycle.clone(),
            metrics: metrics.clone(),
            identity: Some(identity.clone()),
        },
        app_probes,
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
    let observer: crate::reload::ObserverFor = {
        let obs = obs.clone();
        Arc::new(move |services| {
            Arc::new(crate::resilience::mesh_observer::MeshObserver::new(
                obs.clone(),
                services,
            ))
        })
    };
    outbound.set_resilience_observed(&config.resilience, observer(&config.outbound.services));
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
    let _reloader = crate::reload::spawn(
        path,
        config.clone(),
        crate::reload::Targets {
            outbound: outbound.clone(),
            inbound: inbound.clone(),
            observer,
        },
        &metrics,
        lifecycle.clone(),
    )
    .context("cannot install the SIGHUP handler")?;
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

#[cfg(test)]
mod tests {
    use super::{choose_worker_threads, parse_log_filter};
    use tracing::Level;

    #[test]
    fn levels_and_target_pairs_parse_and_filter_by_target() {
        let f = parse_log_filter("warn,docmesh_proxy::inbound=debug").unwrap();
        assert!(f.would_enable("docmesh_proxy::inbound", &Level::DEBUG));
        assert!(!f.would_enable("docmesh_proxy::inbound", &Level::TRACE));
        assert!(f.would_enable("hyper", &Level::WARN));
        assert!(!f.would_enable("hyper", &Level::INFO));
        let f = parse_log_filter(" info ").unwrap();
        assert!(f.would_enable("anything", &Level::INFO));
        assert!(!f.would_enable("anything", &Level::DEBUG));
    }

    #[test]
    fn a_bad_level_is_an_error() {
        assert!(parse_log_filter("docmesh_proxy=loud").is_err());
        assert!(parse_log_filter("info,hyper=verbose").is_err());
    }

    #[test]
    fn one_worker_thread_comes_from_the_setting_or_a_single_core() {
        assert_eq!(choose_worker_threads(Some("1"), Some(8)), Ok(1));
        assert_eq!(choose_worker_threads(Some(" 3 "), Some(1)), Ok(3));
        assert_eq!(choose_worker_threads(None, Some(1)), Ok(1));
        assert_eq!(choose_worker_threads(None, Some(4)), Ok(4));
        assert_eq!(choose_worker_threads(None, None), Ok(1));
        // A bad setting is an error naming the variable and the value, never a fallback
        // (tokio itself would panic on it).
        for bad in ["0", "many", "-1", ""] {
            let e = choose_worker_threads(Some(bad), Some(2)).unwrap_err();
            assert!(
                e.contains("TOKIO_WORKER_THREADS") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }
}
