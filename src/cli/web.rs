//! `rhaiflow webserver [--host H] [--port N]`: the REST API until SIGINT/SIGTERM.

use super::{Context, Outcome};
use anyhow::Context as _;
use std::net::SocketAddr;

/// Where to listen: `[webserver] bind`, with `--host` / `--port` over its parts.
pub fn address(bind: &str, host: Option<&str>, port: Option<u16>) -> anyhow::Result<SocketAddr> {
    let configured: SocketAddr = bind.parse().with_context(|| {
        format!("`webserver.bind` `{bind}` is not an address like 127.0.0.1:8080 (an IP address and a port)")
    })?;
    let ip = match host {
        Some(h) => h.parse().with_context(|| format!("`--host` `{h}` is not an IP address, like 127.0.0.1"))?,
        None => configured.ip(),
    };
    Ok(SocketAddr::new(ip, port.unwrap_or(configured.port())))
}

pub fn webserver(ctx: &Context, host: Option<&str>, port: Option<u16>) -> anyhow::Result<Outcome> {
    let addr = address(&ctx.app.config.webserver.bind, host, port)?;
    crate::app::refuse_public_without_auth(&ctx.app.config.webserver, addr)?;
    let store = ctx.app.open_store()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("rhaiflow-web")
        .build()
        .context("cannot start the async runtime")?;
    let shutdown = {
        let _in_runtime = runtime.enter();
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    };
    let server = ctx.app.serve_web(&store, addr, shutdown)?;
    eprintln!("rhaiflow webserver: REST API at http://{addr}/api/v1 ({}; Ctrl-C stops)", auth_words(ctx));
    runtime.block_on(server)?;
    Ok(Outcome::Ok)
}

/// How callers are let in, for the start-up line.
pub fn auth_words(ctx: &Context) -> &'static str {
    match ctx.app.config.webserver.auth {
        crate::config::WebAuth::None => "no authentication",
        crate::config::WebAuth::Password => "users log in: `rhaiflow users`",
    }
}
