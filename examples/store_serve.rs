//! The embedded store alone, on one listener, for clients written in other
//! languages (`bench/clientlib.sh` runs a Python etcd library's own tests
//! against it and against etcd).
//!
//! `mgmt run --client-urls` serves the same store with the same
//! `Config::default()`, but the run's own host writes its converged key
//! (with a lease) into it, which a test suite that expects an empty store
//! would count. This serves an empty store and nothing else.
//!
//! Usage: `store_serve [ADDR]` (default `127.0.0.1:2379`). Prints
//! `listening http://ADDR` on stdout once bound; stops on SIGTERM or SIGINT.

use anyhow::Context;
use mgmt::store::{Config, Store};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2379".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (hint: is another server on it?)"))?;
    println!("listening http://{}", listener.local_addr()?);
    let cancel = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    Store::new(Config::default())
        .serve(listener, cancel)
        .await
        .context("store stopped")?;
    Ok(())
}
