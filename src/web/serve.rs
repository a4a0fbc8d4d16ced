//! The accept loop of our HTTP servers (the UI and API, a scheduler's `/health`), in place of
//! `axum::serve`, which takes no limits: a client gets `[webserver] header_timeout` seconds to send
//! each request's head (hyper's `header_read_timeout`, which also ends a keep-alive connection idle
//! that long), and at most `[webserver] max_connections` connections are served at once; past
//! that, new ones wait in the kernel's accept queue until one closes, so a flood of idle or
//! slow sockets (slowloris) can neither exhaust the process's file descriptors nor starve the
//! scheduler sharing the process. Graceful shutdown as `axum::serve`'s: stop accepting, ask every
//! connection to finish its request, wait for them.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

/// How much a server takes from its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_timeout: Duration::from_secs(30), max_connections: 512 }
    }
}

/// Serves `router` on `listener` until `shutdown` completes; each request carries its peer's
/// address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, 1 << 20);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failing = false;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    failing = false;
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin, then go on (said once per streak).
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "cannot accept a connection; accepting on");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(());
    // Every connection holds a slot until it ends.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}
