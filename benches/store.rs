//! Benchmark of the embedded store against etcd 3.4, side by side in one
//! run, with the same `etcd-client` workload (run it with `bench/store.sh`).
//!
//! Both servers run as child processes on loopback so that their RSS can be
//! read from `/proc/<pid>/status` the same way: ours is this binary
//! re-executed with `MGMT_STORE_BENCH_CHILD=1`, etcd is started by the test
//! suite's helper (random 127/8 address, temp data dir, stderr readiness).
//! Fixed operation counts, measured time. Measures: puts/s and ranges/s
//! with 1 and 16 concurrent clients, put→event watch latency (p50, p99),
//! and RSS idle and holding 100,000 keys of 100 bytes.
//!
//! Not a fair fight on durability: etcd fsyncs a write-ahead log and bbolt
//! on every commit, the embedded store keeps no disk log at all.

#[path = "../tests/it/util/etcd.rs"]
mod etcd;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use etcd_client::{Client, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use mgmt::store::{Config, Store};
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "MGMT_STORE_BENCH_CHILD";
const VALUE_LEN: usize = 100;
const PUTS_1: usize = 5_000;
const PUTS_16: usize = 1_000; // per client
const RANGES_1: usize = 10_000;
const RANGES_16: usize = 2_000; // per client
const WATCH_ROUNDS: usize = 1_000;
const RSS_KEYS: usize = 100_000;

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
        return;
    }
    // `cargo bench` passes `--bench`; any other first argument filters nothing.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("store bench: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        let ours = OursChild::start();
        eprintln!(
            "embedded store on {} (pid {})",
            ours.endpoint,
            ours.child.id()
        );
        let a = run_workload(&ours.endpoint, ours.child.id()).await;
        drop(ours);
        let e = etcd::Etcd::start().await;
        let pid = etcd_pid(&e);
        eprintln!("etcd on {} (pid {pid})", e.endpoint);
        let b = run_workload(&e.endpoint, pid).await;
        drop(e);
        print_table(&a, &b);
    });
}

/// The embedded store in this binary, re-executed as a child process.
struct OursChild {
    child: Child,
    endpoint: String,
}

impl OursChild {
    fn start() -> OursChild {
        let exe = std::env::current_exe().expect("own executable path");
        let mut child = Command::new(exe)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the store child");
        let out = child.stdout.take().expect("child stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read the child's address");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("`listening ADDR` from the child")
            .to_string();
        OursChild {
            child,
            endpoint: format!("http://{addr}"),
        }
    }
}

impl Drop for OursChild {
    fn drop(&mut self) {
        // Closing stdin asks the child to stop; kill is the safety net.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: serve until stdin closes.
fn child_main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("listening {}", l.local_addr().expect("addr"));
        let store = Store::new(Config::default());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
            stop.cancel();
        });
        if let Err(e) = store.serve(l, cancel).await {
            eprintln!("store child: {e}");
        }
    });
}

/// etcd's pid: the helper keeps the child private, so find it by its
/// endpoint on the command line (the address is unique to this run).
fn etcd_pid(e: &etcd::Etcd) -> u32 {
    let needle = format!("--listen-client-urls\0{}", e.endpoint);
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                return pid;
            }
        }
    }
    panic!("etcd process for {} not found in /proc", e.endpoint);
}

/// Anonymous resident memory (`RssAnon`): heap and stacks. Not `VmRSS`,
/// which also counts the pages of files mapped in, and etcd maps its bbolt
/// database file, so its VmRSS grows with pages the kernel can drop.
fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon line");
    kb / 1024.0
}

#[derive(Debug, Default)]
struct Figures {
    puts_1: f64,
    puts_16: f64,
    ranges_1: f64,
    ranges_16: f64,
    watch_p50_us: f64,
    watch_p99_us: f64,
    rss_idle_mb: f64,
    rss_100k_mb: f64,
}

async fn connect(ep: &str) -> Client {
    Client::connect([ep], None).await.expect("connect")
}

async fn clients(ep: &str, n: usize) -> Vec<Client> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(connect(ep).await);
    }
    v
}

/// Runs `per` operations on each client concurrently; returns ops/s.
async fn throughput<F, Fut>(cs: Vec<Client>, per: usize, op: F) -> f64
where
    F: Fn(Client, usize, usize) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let n = cs.len();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (ci, c) in cs.into_iter().enumerate() {
        set.spawn(async move {
            for i in 0..per {
                op(c.clone(), ci, i).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("bench task");
    }
    (n * per) as f64 / start.elapsed().as_secs_f64()
}

async fn run_workload(ep: &str, pid: u32) -> Figures {
    let mut f = Figures::default();
    let value = vec![b'v'; VALUE_LEN];
    let mut c = connect(ep).await;
    c.put("warmup", value.clone(), None)
        .await
        .expect("warm-up put");
    f.rss_idle_mb = rss_mb(pid);

    f.puts_1 = throughput(vec![c.clone()], PUTS_1, |mut c, _, i| async move {
        c.put(format!("p1/{i}"), vec![b'v'; VALUE_LEN], None)
            .await
            .expect("put");
    })
    .await;
    f.puts_16 = throughput(clients(ep, 16).await, PUTS_16, |mut c, ci, i| async move {
        c.put(format!("p16/{ci}/{i}"), vec![b'v'; VALUE_LEN], None)
            .await
            .expect("put");
    })
    .await;
    f.ranges_1 = throughput(vec![c.clone()], RANGES_1, |mut c, _, i| async move {
        let g = c
            .get(format!("p1/{}", i % PUTS_1), None)
            .await
            .expect("get");
        assert_eq!(g.kvs().len(), 1);
    })
    .await;
    f.ranges_16 = throughput(
        clients(ep, 16).await,
        RANGES_16,
        |mut c, ci, i| async move {
            let g = c
                .get(format!("p16/{ci}/{}", i % PUTS_16), None)
                .await
                .expect("get");
            assert_eq!(g.kvs().len(), 1);
        },
    )
    .await;

    // Watch latency: one put at a time, timed until its event arrives.
    let mut ws = c
        .watch("lat/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = ws.message().await.expect("watch ok").expect("open");
    assert!(created.created());
    let mut lat = Vec::with_capacity(WATCH_ROUNDS);
    let mut w = connect(ep).await;
    for i in 0..WATCH_ROUNDS {
        let t = Instant::now();
        let key = format!("lat/{i}");
        let (put, ev) = tokio::join!(w.put(key.clone(), value.clone(), None), async {
            loop {
                let m = ws.message().await.expect("watch ok").expect("open");
                if let Some(e) = m.events().first() {
                    assert_eq!(e.event_type(), EventType::Put);
                    return t.elapsed();
                }
            }
        });
        put.expect("put");
        lat.push(ev);
    }
    lat.sort();
    f.watch_p50_us = lat[lat.len() / 2].as_secs_f64() * 1e6;
    f.watch_p99_us = lat[lat.len() * 99 / 100].as_secs_f64() * 1e6;

    // 100,000 keys of 100 bytes, written 100 per txn by 16 clients.
    let before = Instant::now();
    let cs = clients(ep, 16).await;
    let per = RSS_KEYS / 100 / 16 + 1;
    throughput(cs, per, move |mut c, ci, i| async move {
        let batch = ci * per + i;
        if batch * 100 >= RSS_KEYS {
            return;
        }
        let ops: Vec<TxnOp> = (0..100)
            .map(|k| {
                TxnOp::put(
                    format!("rss/{:07}", batch * 100 + k),
                    vec![b'r'; VALUE_LEN],
                    None::<PutOptions>,
                )
            })
            .collect();
        c.txn(Txn::new().and_then(ops)).await.expect("txn");
    })
    .await;
    let n = c
        .get(
            "rss/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(n as usize, RSS_KEYS);
    eprintln!("  loaded {RSS_KEYS} keys in {:.1?}", before.elapsed());
    f.rss_100k_mb = rss_mb(pid);
    eprintln!("  {f:?}");
    f
}

fn print_table(a: &Figures, b: &Figures) {
    println!();
    println!(
        "{:<34} {:>14} {:>14} {:>10}",
        "metric", "embedded", "etcd 3.4", "emb/etcd"
    );
    let row = |name: &str, x: f64, y: f64| {
        println!("{name:<34} {x:>14.0} {y:>14.0} {:>9.2}x", x / y);
    };
    let rowf = |name: &str, x: f64, y: f64| {
        println!("{name:<34} {x:>14.1} {y:>14.1} {:>9.2}x", x / y);
    };
    row("puts/s, 1 client", a.puts_1, b.puts_1);
    row("puts/s, 16 clients", a.puts_16, b.puts_16);
    row("ranges/s, 1 client", a.ranges_1, b.ranges_1);
    row("ranges/s, 16 clients", a.ranges_16, b.ranges_16);
    row("watch latency p50 (us)", a.watch_p50_us, b.watch_p50_us);
    row("watch latency p99 (us)", a.watch_p99_us, b.watch_p99_us);
    rowf("anonymous RSS idle (MB)", a.rss_idle_mb, b.rss_idle_mb);
    rowf(
        "anonymous RSS, 100,000 x 100 B keys (MB)",
        a.rss_100k_mb,
        b.rss_100k_mb,
    );
    println!();
    println!("embedded keeps no disk log; etcd fsyncs its WAL on every commit.");
}
