//! Test helpers for the world layer: an embedded store served on a bound
//! loopback listener, and declarations to export.

use tokio_util::sync::CancellationToken;

use super::World;
use crate::graph::{Collect, ResourceDecl};
use crate::store::{Config, Store, StoreError};

/// An embedded store serving on `127.0.0.1:0`; [`Served::stop`] ends it.
pub(crate) struct Served {
    pub url: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Served {
    pub async fn start() -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let cancel = CancellationToken::new();
        let store = Store::new(Config::default());
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { store.serve(listener, cancel).await }
        });
        Served { url, cancel, task }
    }

    pub async fn world(&self, host: &str) -> World {
        World::connect(std::slice::from_ref(&self.url), host)
            .await
            .expect("connect")
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("join").expect("serve");
    }
}

/// An exported file resource.
pub(crate) fn file(name: &str, content: &str) -> ResourceDecl {
    let mut params = serde_yaml_ng::Mapping::new();
    params.insert("path".into(), format!("/srv/{name}").into());
    params.insert("content".into(), content.into());
    ResourceDecl {
        kind: "file",
        name: name.into(),
        exported: true,
        params,
        meta: Default::default(),
        pos: Default::default(),
    }
}

/// A `collect: [{kind: file, hostname: glob}]` entry.
pub(crate) fn collect_files(glob: Option<&str>) -> Collect {
    Collect {
        kind: "file",
        pattern: None,
        hostname: glob.map(str::to_owned),
        pos: Default::default(),
    }
}
