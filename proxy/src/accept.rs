//! The accept loop of the data-path listeners (inbound and outbound), and the accept step
//! every listener shares (the admin server too).
//!
//! A data-path listener accepts until the drain starts; each accepted connection is offered to
//! the side's handler, which may refuse it (it logs why), then takes a slot of `[limits]`
//! (listener and proxy-wide; a connection over a limit is closed at once, counted by
//! `limits`) and runs in its own task, tracked by the [`Lifecycle`] so that the drain waits
//! for it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::lifecycle::Lifecycle;
use crate::limits::ListenerSlots;

/// Pause after a failed accept (EMFILE, ENFILE, ENOBUFS) so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection of `listener`. A failed accept is logged as `"{side} accept failed"`
/// and retried after a short pause.
pub async fn next_connection(listener: &TcpListener, side: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "{side} accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves `listener` until `lifecycle`'s drain starts. Each accepted connection (with
/// `TCP_NODELAY` set) goes to `connection`, which returns the future serving it, or `None` to
/// close it; the future runs in its own task once the connection got a slot of `slots`, and
/// holds that slot and a [`Lifecycle::track`] guard until it ends.
pub async fn serve_listener<F>(
    listener: TcpListener,
    side: &str,
    lifecycle: &Lifecycle,
    slots: ListenerSlots,
    mut connection: impl FnMut(TcpStream, SocketAddr) -> Option<F>,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let drain = lifecycle.draining();
    tokio::pin!(drain);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut drain => return,
            accepted = next_connection(&listener, side) => accepted,
        };
        let _ = stream.set_nodelay(true);
        let Some(serve) = connection(stream, peer) else {
            continue;
        };
        // Over a limit: dropping the unstarted future closes the connection.
        let Some(permit) = slots.admit() else {
            continue;
        };
        let guard = lifecycle.track();
        tokio::spawn(async move {
            serve.await;
            drop((guard, permit));
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::limits::LimitsConfig;
    use crate::limits::Limits;

    /// Reads until the peer closes; `true` if it closed without sending anything.
    async fn closed_silently(mut s: TcpStream) -> bool {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        matches!(read, Ok(Ok(0)))
    }

    #[tokio::test]
    async fn serves_within_the_limit_closes_refused_and_over_limit_connections_and_stops_on_drain()
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits::new(&LimitsConfig {
            max_connections_per_listener: 1,
            ..LimitsConfig::default()
        });
        let lifecycle = Lifecycle::new();
        let offered = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let loop_task = {
            let (lifecycle, offered) = (lifecycle.clone(), offered.clone());
            tokio::spawn(async move {
                serve_listener(
                    listener,
                    "test",
                    &lifecycle,
                    limits.listener(),
                    |mut s, _| {
                        // The second connection is refused by the handler: no slot is taken.
                        if offered.fetch_add(1, Ordering::SeqCst) == 1 {
                            return None;
                        }
                        let mut released = released.clone();
                        Some(async move {
                            let _ = s.write_all(b"hi").await;
                            let _ = released.wait_for(|r| *r).await;
                        })
                    },
                )
                .await;
            })
        };
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut hi = [0u8; 2];
        first.read_exact(&mut hi).await.unwrap();
        assert_eq!(&hi, b"hi");
        assert_eq!(lifecycle.in_flight(), 1, "the served connection is tracked");
        let refused = TcpStream::connect(addr).await.unwrap();
        assert!(closed_silently(refused).await, "refused by the handler");
        let over = TcpStream::connect(addr).await.unwrap();
        assert!(closed_silently(over).await, "over the listener limit");
        assert_eq!(offered.load(Ordering::SeqCst), 3);
        release.send(true).unwrap();
        drop(first);
        // The slot is free again once the first connection's task ended.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while lifecycle.in_flight() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut again = TcpStream::connect(addr).await.unwrap();
        again.read_exact(&mut hi).await.unwrap();
        lifecycle.start_drain();
        tokio::time::timeout(Duration::from_secs(5), loop_task)
            .await
            .expect("the loop ends on drain")
            .unwrap();
    }
}
