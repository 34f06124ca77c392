//! Two processes exchanging data through the embedded store, no SSH
//! (issue #3 point 4): host a embeds the store, host b is its client; both
//! export a file and collect every exported file. Then the world layer's
//! collecting on its own, against both our store and a real etcd: hostname
//! globs, the incremental follower, and what it asks of the store.

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
    let url = a.store_url(LIMIT);
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

/// Runs `test` against our embedded store, served on a bound listener.
async fn against_ours<F: std::future::Future<Output = ()>>(test: impl FnOnce(String) -> F) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let store = mgmt::store::Store::new(mgmt::store::Config::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let cancel = cancel.clone();
        async move { store.serve(listener, cancel).await }
    });
    test(url).await;
    cancel.cancel();
    server.await.unwrap().unwrap();
}

// See: #3, #6 (collect filters on the exporting host)
#[tokio::test]
async fn collect_hostname_glob_against_ours() {
    against_ours(collect_filters_by_exporting_host).await;
}

// See: #3 (the world layer works against a real etcd too)
#[tokio::test]
async fn collect_hostname_glob_against_etcd() {
    let etcd = crate::util::etcd::Etcd::start().await;
    collect_filters_by_exporting_host(etcd.endpoint.clone()).await;
}

async fn connect(url: &str, host: &str) -> mgmt::world::World {
    mgmt::world::World::connect(&[url.to_owned()], host)
        .await
        .expect("connect")
}

fn collect_entry(hostname: Option<&str>, pattern: Option<&str>) -> mgmt::graph::Collect {
    mgmt::graph::Collect {
        kind: "file",
        pattern: pattern.map(str::to_owned),
        hostname: hostname.map(str::to_owned),
        pos: Default::default(),
    }
}

/// `name=content` of each collected resource, sorted.
fn contents(got: &[mgmt::graph::ResourceDecl]) -> Vec<String> {
    let mut v: Vec<String> = got
        .iter()
        .map(|d| {
            let content = d.params.get("content").and_then(|p| p.as_str());
            format!("{}={}", d.name, content.unwrap_or("").trim_end())
        })
        .collect();
    v.sort();
    v
}

/// The next result of `f`, with a guard against a hang.
async fn next_change(f: &mut mgmt::world::Follower) -> Vec<String> {
    let got = tokio::time::timeout(LIMIT, f.changed())
        .await
        .expect("a change within the limit");
    contents(&got)
}

/// A `web?` collector follows web1 and web2 through the watch (appear,
/// change, disappear) and never sees db1's or webserver's exports; db1 is
/// not even watched.
async fn follower_sees_only_its_glob(url: String) {
    let collector = connect(&url, "collector").await;
    let mut hosts = Vec::new();
    for h in ["web1", "web2", "db1", "webserver"] {
        hosts.push(connect(&url, h).await);
    }
    let [web1, web2, db1, webserver] = &mut hosts[..] else {
        unreachable!()
    };
    db1.export(&[&file_decl("from-db1", "/srv/db1")])
        .await
        .unwrap();
    let mut f = mgmt::world::Follower::new(collector.clone());
    f.follow(&[collect_entry(Some("web?"), None)])
        .await
        .unwrap();
    assert!(f.collected().is_empty());
    web1.export(&[&file_decl("a", "/srv/a")]).await.unwrap();
    assert_eq!(next_change(&mut f).await, ["a=a"]);
    web2.export(&[&file_decl("b", "/srv/b")]).await.unwrap();
    assert_eq!(next_change(&mut f).await, ["a=a", "b=b"]);
    let mut changed = file_decl("a", "/srv/a");
    changed.params.insert("content".into(), "a2\n".into());
    web1.export(&[&changed]).await.unwrap();
    assert_eq!(next_change(&mut f).await, ["a=a2", "b=b"]);
    // Neither reaches the result: webserver is under the `web` prefix but
    // fails the glob; db1 is outside the watched range altogether.
    webserver
        .export(&[&file_decl("w", "/srv/w")])
        .await
        .unwrap();
    db1.export(&[&file_decl("from-db1", "/srv/db1-2")])
        .await
        .unwrap();
    web2.export(&[]).await.unwrap();
    assert_eq!(next_change(&mut f).await, ["a=a2"]);
    let stats = collector.collect_stats();
    // web1 ×2, web2 ×2 and webserver's put; db1's events never arrive.
    assert_eq!(
        stats,
        mgmt::world::CollectStats {
            reads: 1,
            watches: 1,
            events: 5
        }
    );
}

// See: collect-scale (watch only the glob's prefix)
#[tokio::test]
async fn follower_sees_only_its_glob_against_ours() {
    against_ours(follower_sees_only_its_glob).await;
}

// See: collect-scale
#[tokio::test]
async fn follower_sees_only_its_glob_against_etcd() {
    let etcd = crate::util::etcd::Etcd::start().await;
    follower_sees_only_its_glob(etcd.endpoint.clone()).await;
}

/// A host without `collect:` entries reads and watches nothing, even
/// while others export.
async fn no_entries_no_requests(url: String) {
    let lone = connect(&url, "lone").await;
    let mut other = connect(&url, "web1").await;
    let mut f = mgmt::world::Follower::new(lone.clone());
    f.follow(&[]).await.unwrap();
    other.export(&[&file_decl("a", "/srv/a")]).await.unwrap();
    assert!(lone.clone().collect(&[]).await.unwrap().is_empty());
    assert!(futures::FutureExt::now_or_never(f.changed()).is_none());
    assert_eq!(lone.collect_stats(), Default::default());
}

// See: collect-scale (no collect entries, no watch)
#[tokio::test]
async fn no_entries_no_requests_against_ours() {
    against_ours(no_entries_no_requests).await;
}

// See: collect-scale
#[tokio::test]
async fn no_entries_no_requests_against_etcd() {
    let etcd = crate::util::etcd::Etcd::start().await;
    no_entries_no_requests(etcd.endpoint.clone()).await;
}

/// After a run of puts and deletes from many hosts, the follower's result
/// is what a fresh full read gives, conflicts and patterns included.
async fn incremental_equals_fresh(url: String) {
    let mut collector = connect(&url, "collector").await;
    let entries = [
        collect_entry(Some("h1?"), Some("/in/")),
        collect_entry(Some("h1*"), None),
        collect_entry(Some("h2"), None),
    ];
    let mut f = mgmt::world::Follower::new(collector.clone());
    let mut hosts = Vec::new();
    for h in ["h10", "h11", "h12", "h2", "h20", "h3"] {
        hosts.push(connect(&url, h).await);
    }
    // Half before the first read, half after, so both paths are covered.
    for (i, w) in hosts.iter_mut().enumerate() {
        if i == 3 {
            f.follow(&entries).await.unwrap();
        }
        let own = file_decl(&format!("own-{i}"), &format!("/srv/{i}"));
        // The same name from every host, with different fields: a conflict.
        let shared = file_decl(&format!("shared-{i}"), "/srv/shared");
        let mut shared = shared;
        shared.name = "shared".into();
        w.export(&[&own, &shared]).await.unwrap();
    }
    for step in 0..12usize {
        let w = &mut hosts[step % 6];
        let kept = file_decl(&format!("step-{step}"), &format!("/srv/s{step}"));
        match step % 3 {
            0 => w.export(&[&kept]).await.unwrap(),
            1 => w.export(&[]).await.unwrap(),
            _ => w.export(&[&kept, &file_decl("x", "/srv/x")]).await.unwrap(),
        };
    }
    // Events come in revision order: once this one is in, all are.
    let sentinel = file_decl("sentinel", "/srv/sentinel");
    hosts[0].export(&[&sentinel]).await.unwrap();
    loop {
        if next_change(&mut f)
            .await
            .iter()
            .any(|n| n == "sentinel=sentinel")
        {
            break;
        }
    }
    let fresh = collector.collect(&entries).await.unwrap();
    assert!(!fresh.is_empty());
    assert_eq!(f.collected(), fresh);
}

// See: collect-scale (incremental map)
#[tokio::test]
async fn incremental_equals_fresh_against_ours() {
    against_ours(incremental_equals_fresh).await;
}

// See: collect-scale
#[tokio::test]
async fn incremental_equals_fresh_against_etcd() {
    let etcd = crate::util::etcd::Etcd::start().await;
    incremental_equals_fresh(etcd.endpoint.clone()).await;
}
