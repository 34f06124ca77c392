//! Two processes exchanging data through the embedded store, no SSH
//! (issue #3 point 4): host a embeds the store, host b is its client; both
//! export a file and collect every exported file.

use std::time::Duration;

use crate::util::{mgmt, Dir, Proc};

const LIMIT: Duration = Duration::from_secs(60);

/// mgmt's `examples/remote2<host>.yaml` with its `/tmp/` paths moved into
/// `d/<host>/`; nothing else is changed.
fn example(d: &Dir, host: &str) -> std::path::PathBuf {
    let path = format!("{}/examples/remote2{host}.yaml", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(src.contains("\"/tmp/"), "{path} no longer uses /tmp/ paths");
    let dir = d.p(host);
    std::fs::create_dir_all(&dir).unwrap();
    d.write(
        &format!("remote2{host}.yaml"),
        &src.replace("\"/tmp/", &format!("\"{dir}/")),
    )
}

/// `mgmt run` as a client of the store at `url` (no store of its own).
fn client(host: &str, url: &str, graph: &std::path::Path) -> Proc {
    Proc::spawn(
        mgmt()
            .args(["run", "--hostname", host, "--no-server", "--seeds", url])
            .args(["--converged-timeout", "2", "--file"])
            .arg(graph),
    )
}

// See: #3
#[test]
fn two_processes_exchange_exported_files() {
    let d = Dir::new();
    let (ga, gb) = (example(&d, "a"), example(&d, "b"));
    let mut a = Proc::spawn(
        mgmt()
            .args([
                "run",
                "--hostname",
                "a",
                "--converged-timeout",
                "2",
                "--file",
            ])
            .arg(&ga),
    );
    let line = a.wait_line("store: listening on ", LIMIT);
    let url = line.rsplit(' ').next().unwrap().to_owned();
    let mut b = client("b", &url, &gb);
    assert_eq!(b.wait(LIMIT), 0, "b: {}", b.lines_so_far().join("\n"));
    assert_eq!(a.wait(LIMIT), 0, "a: {}", a.lines_so_far().join("\n"));
    for host in ["a", "b"] {
        assert_eq!(
            d.read(&format!("{host}/file1{host}")).as_deref(),
            Some(format!("i am file1{host}\n").as_str())
        );
        for from in ["a", "b"] {
            let got = d.read(&format!("{host}/file2{from}"));
            assert_eq!(
                got.as_deref(),
                Some(format!("i am file2{from}, exported from host {from}\n").as_str()),
                "{host} lacks file2{from}"
            );
        }
    }
}

// See: #3 (the engine works against a real etcd as well)
#[test]
fn exchange_through_a_real_etcd() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(crate::util::etcd::Etcd::start());
    let d = Dir::new();
    let (ga, gb) = (example(&d, "a"), example(&d, "b"));
    let url = etcd.endpoint.clone();
    let (mut a, mut b) = (client("a", &url, &ga), client("b", &url, &gb));
    assert_eq!(a.wait(LIMIT), 0, "a: {}", a.lines_so_far().join("\n"));
    assert_eq!(b.wait(LIMIT), 0, "b: {}", b.lines_so_far().join("\n"));
    for host in ["a", "b"] {
        for from in ["a", "b"] {
            assert!(
                d.read(&format!("{host}/file2{from}")).is_some(),
                "{host} lacks file2{from}"
            );
        }
    }
}

/// A file resource as a graph would declare it.
fn file_decl(name: &str, path: &str) -> mgmt::graph::ResourceDecl {
    let mut params = serde_yaml_ng::Mapping::new();
    params.insert("path".into(), path.into());
    params.insert("content".into(), format!("{name}\n").into());
    mgmt::graph::ResourceDecl {
        kind: "file",
        name: name.into(),
        exported: true,
        params,
        meta: Default::default(),
        pos: Default::default(),
    }
}

/// Exports from three hosts, then collects with and without a hostname glob.
async fn collect_filters_by_exporting_host(url: String) {
    use mgmt::world::World;
    let mut worlds = Vec::new();
    for h in ["web1", "web2", "db1"] {
        let mut w = World::connect(std::slice::from_ref(&url), h)
            .await
            .expect("connect");
        let decl = file_decl(&format!("from-{h}"), &format!("/srv/{h}"));
        assert_eq!(w.export(&[&decl]).await.expect("export"), 1);
        // Exporting the same thing again writes nothing (no watch event).
        assert_eq!(w.export(&[&decl]).await.expect("export"), 0);
        worlds.push(w);
    }
    let collect = |hostname: Option<&str>| mgmt::graph::Collect {
        kind: "file",
        pattern: Some("/in/".into()),
        hostname: hostname.map(str::to_owned),
        pos: Default::default(),
    };
    let names = |got: Vec<mgmt::graph::ResourceDecl>| {
        let mut v: Vec<String> = got
            .into_iter()
            .map(|d| {
                format!(
                    "{}={}",
                    d.name,
                    d.params.get("path").and_then(|p| p.as_str()).unwrap_or("")
                )
            })
            .collect();
        v.sort();
        v
    };
    let all = worlds[2].collect(&[collect(None)]).await.expect("collect");
    assert_eq!(
        names(all),
        [
            "from-db1=/in/db1",
            "from-web1=/in/web1",
            "from-web2=/in/web2"
        ]
    );
    let web = worlds[2]
        .collect(&[collect(Some("web*"))])
        .await
        .expect("collect");
    assert_eq!(names(web), ["from-web1=/in/web1", "from-web2=/in/web2"]);
    // Un-exporting deletes the key.
    assert_eq!(worlds[0].export(&[]).await.expect("export"), 1);
    let web = worlds[2]
        .collect(&[collect(Some("web?"))])
        .await
        .expect("collect");
    assert_eq!(names(web), ["from-web2=/in/web2"]);
}

// See: #3, #6 (collect filters on the exporting host)
#[tokio::test]
async fn collect_hostname_glob_against_ours() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let store = mgmt::store::Store::new(mgmt::store::Config::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let cancel = cancel.clone();
        async move { store.serve(listener, cancel).await }
    });
    collect_filters_by_exporting_host(url).await;
    cancel.cancel();
    server.await.unwrap().unwrap();
}

// See: #3 (the world layer works against a real etcd too)
#[tokio::test]
async fn collect_hostname_glob_against_etcd() {
    let etcd = crate::util::etcd::Etcd::start().await;
    collect_filters_by_exporting_host(etcd.endpoint.clone()).await;
}
