//! One task per Watch RPC: it multiplexes the stream's watchers, answers
//! create/cancel/progress requests, and feeds every watcher from the event
//! log in revision order.
//!
//! Back-pressure (same idea as etcd's "unsynced watchers"): events are never
//! queued per watcher. A watcher is a position (`next`) in the store's event
//! log; the task copies events from the log only when it is about to send
//! them, into one bounded channel of responses per stream. A client that
//! stops reading fills that channel and the HTTP/2 window, the task then
//! waits on the send, and writes carry on unaffected: the backlog is the log
//! itself, which compaction bounds. A watcher that falls behind the
//! compaction point gets etcd's answer: a response with `canceled` and
//! `compact_revision` set, after which the client must re-read and re-watch.
//! Nothing is lost or duplicated silently: a watcher's events are sent in
//! revision order, each exactly once, and a revision is never split.
//!
//! Wake-ups: a commit wakes only the streams with a watcher whose range
//! holds a key it wrote (`dispatch.rs` keeps that index and marks each such
//! stream with the first revision that touched it). A woken stream takes the
//! state lock once per round and reads the log only for watchers that may
//! have events; the others jump over the revisions nobody marked. So a
//! commit costs O(matching streams), and a woken stream O(its watchers);
//! `dispatch_cost_by_watcher_count` measures it. Progress notifications and
//! catching up from an older revision do not depend on wake-ups: the first
//! runs on the stream's timer, the second loops until every watcher is at
//! the head of the log.
//!
//! Not handled here: fragmenting huge responses (`fragment`), which etcd
//! 3.4 only does when the client asks; responses are bounded instead.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use etcd_client::proto::{PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::dispatch::StreamId;
use super::error::EtcdError;
use super::kv::{Event, KeyRange, LogRead};
use super::quota;
use super::rights::Rights;
use super::Shared;

/// Revisions per response when catching up, as etcd's `watchBatchMaxRevs`.
const MAX_REVS_PER_RESPONSE: usize = 1000;
/// Soft cap on the keys and values carried by one response.
const MAX_BYTES_PER_RESPONSE: usize = 1 << 20;
/// Responses buffered per stream before the task waits for the client.
pub(crate) const STREAM_BUFFER: usize = 16;

const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

/// etcd 3.4's reasons, as a client sees them in `cancel_reason`.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    /// The next revision this watcher has not seen yet.
    next: i64,
    /// The first revision whose commit was checked against this watcher's
    /// range (the one after its creation): marks say nothing about older ones.
    checked_from: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

/// The state of one Watch RPC; owned by its task. Dropping it takes the
/// stream and its ranges out of the dispatch registry.
pub(crate) struct WatchStream {
    shared: Arc<Shared>,
    /// Responses to the client; bounded, its receiver is the gRPC body.
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
    cancel: CancellationToken,
    /// Whom the stream speaks for: a watch outside what it may read is
    /// refused at creation, and a host's watches count against its quota.
    who: Rights,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// This stream in the dispatch registry.
    id: StreamId,
    /// Notified by commits that touch one of our ranges; we are its only waiter.
    woken: Arc<Notify>,
    /// The head revision at our last `take` of the registry's mark: every
    /// commit after it that touched our ranges is marked there.
    taken: i64,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.shared.dispatch().close(self.id);
    }
}

impl WatchStream {
    pub fn new(
        shared: Arc<Shared>,
        tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
        cancel: CancellationToken,
        who: Rights,
    ) -> WatchStream {
        let (id, woken) = shared.dispatch().open();
        WatchStream {
            shared,
            tx,
            cancel,
            who,
            watchers: BTreeMap::new(),
            next_id: 0,
            id,
            woken,
            taken: 0,
        }
    }

    /// Runs until the client closes its side, stops reading for good (the
    /// response receiver is dropped), or the server is cancelled.
    pub async fn run(mut self, mut reqs: Streaming<PbWatchRequest>) {
        let woken = self.woken.clone();
        let mut progress = tokio::time::interval(self.shared.cfg.watch_progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await; // the first tick is immediate
        loop {
            if self.catch_up().await.is_none() {
                break;
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                msg = reqs.message() => match msg {
                    Ok(Some(req)) => {
                        if !self.handle(req).await {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = woken.notified() => {}
                _ = progress.tick() => {
                    if !self.progress_notify().await {
                        break;
                    }
                }
            }
        }
        tracing::debug!(watches = self.watchers.len(), "store: watch stream ended");
        self.count_open(-(self.watchers.len() as i64));
    }

    /// Counts `n` watches opened (closed, when negative) in the store's
    /// total and its host's.
    fn count_open(&self, n: i64) {
        let open = &self.shared.counters.watches_open;
        if n >= 0 {
            open.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            open.fetch_sub(n.unsigned_abs(), Ordering::Relaxed);
        }
        if let Some(sp) = self.who.speaker() {
            sp.count_watches(n);
        }
    }

    fn header(&self, rev: i64) -> Option<etcd_client::proto::PbResponseHeader> {
        self.shared.header(rev)
    }

    /// Sends one response, giving up when the server stops or the client is gone.
    async fn send(&self, resp: PbWatchResponse) -> bool {
        tokio::select! {
            r = self.tx.send(Ok(resp)) => r.is_ok(),
            _ = self.cancel.cancelled() => false,
        }
    }

    async fn handle(&mut self, req: PbWatchRequest) -> bool {
        match req.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                self.create(Create {
                    key: c.key,
                    range_end: c.range_end,
                    watch_id: c.watch_id,
                    start_revision: c.start_revision,
                    prev_kv: c.prev_kv,
                    progress_notify: c.progress_notify,
                    filters: c.filters,
                })
                .await
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => {
                if !self.remove(c.watch_id) {
                    return true; // etcd 3.4 is silent about unknown ids
                }
                let rev = self.shared.rev();
                self.send(PbWatchResponse {
                    header: self.header(rev),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // Bring every watcher to the head first: only then is the
                // revision a valid bound for all of them.
                let Some(rev) = self.catch_up().await else {
                    return false;
                };
                self.send(PbWatchResponse {
                    header: self.header(rev),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => true,
        }
    }

    async fn create(&mut self, c: Create) -> bool {
        let refuse = |reason: String| PbWatchResponse {
            header: self.header(self.shared.rev()),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        let limit = self.shared.cfg.max_watches_per_stream;
        if self.watchers.len() >= limit {
            let reason = format!("mgmt: too many watches on this stream (limit {limit}); cancel some or open another stream");
            return self.send(refuse(reason)).await;
        }
        if let Err(reason) = quota::check_watch(&self.shared, self.who.speaker()) {
            return self.send(refuse(reason)).await;
        }
        if let Some(g) = self
            .who
            .guard()
            .filter(|g| !g.may_read(&c.key, &c.range_end))
        {
            super::access::log_denied(g, "watch", &c.key);
            return self
                .send(refuse(EtcdError::PermissionDenied.to_string()))
                .await;
        }
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let range = KeyRange::new(&key, &c.range_end);
        if !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end {
            return self.send(refuse(EMPTY_RANGE.to_string())).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self.send(refuse(DUPLICATE_ID.to_string())).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        // Registered under the state lock, with the revision read there: the
        // commits after `rev` are exactly those checked against the range.
        let rev = {
            let st = self.shared.lock();
            self.shared.dispatch().watch(self.id, &range);
            st.kv.rev()
        };
        let next = if c.start_revision > 0 {
            c.start_revision
        } else {
            rev + 1
        };
        self.watchers.insert(
            id,
            Watcher {
                range,
                next,
                checked_from: rev + 1,
                prev_kv: c.prev_kv,
                no_put: c.filters.contains(&FILTER_NOPUT),
                no_delete: c.filters.contains(&FILTER_NODELETE),
                progress_notify: c.progress_notify,
            },
        );
        self.count_open(1);
        self.send(PbWatchResponse {
            header: self.header(rev),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    /// Forgets watcher `id` and its range; false if there was none.
    fn remove(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.remove(&id) else {
            return false;
        };
        self.shared.dispatch().unwatch(self.id, &w.range);
        self.count_open(-1);
        true
    }

    async fn progress_notify(&mut self) -> bool {
        // Watchers nobody woke are still at old positions: catch up first.
        let Some(rev) = self.catch_up().await else {
            return false;
        };
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next > rev)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let resp = PbWatchResponse {
                header: self.header(rev),
                watch_id: id,
                ..Default::default()
            };
            if !self.send(resp).await {
                return false;
            }
        }
        true
    }

    /// Sends every watcher the events it has not seen, in rounds of at most
    /// one bounded response per watcher, until all are at the head of the
    /// log. Returns that head, or `None` when the stream must stop.
    async fn catch_up(&mut self) -> Option<i64> {
        loop {
            let (rev, behind, out) = self.read_round();
            if out.is_empty() && !behind {
                return Some(rev);
            }
            for (id, batch) in out {
                let resp = match batch {
                    Err(compact) => {
                        self.remove(id);
                        PbWatchResponse {
                            header: self.header(rev),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compact,
                            ..Default::default()
                        }
                    }
                    Ok(events) => {
                        let prev_kv = self.watchers.get(&id).is_some_and(|w| w.prev_kv);
                        self.shared
                            .counters
                            .watch_events
                            .fetch_add(events.len() as u64, Ordering::Relaxed);
                        PbWatchResponse {
                            header: self.header(rev),
                            watch_id: id,
                            events: events.iter().map(|e| to_pb(e, prev_kv)).collect(),
                            ..Default::default()
                        }
                    }
                };
                if !self.send(resp).await {
                    return None;
                }
            }
        }
    }

    /// One round of `catch_up` under the state lock: the head revision,
    /// whether a watcher is still behind it, and each watcher's next batch
    /// (`Err` with the compaction point when its history is gone).
    ///
    /// Watchers whose positions are past our last `take` and not older than
    /// their registration jump over the revisions up to the registry's mark
    /// (or the head when unmarked) without reading the log: every commit in
    /// between was checked against their ranges and none matched. Watchers
    /// further back (a `start_revision` in the past, or a batch that stopped
    /// short) read the log as before.
    fn read_round(&mut self) -> (i64, bool, Vec<Batch>) {
        let mut out = Vec::new();
        let mut behind = false;
        let st = self.shared.lock();
        let head = st.kv.rev();
        let clean_to = self.shared.dispatch().take(self.id).map_or(head, |d| d - 1);
        for (id, w) in self.watchers.iter_mut() {
            if w.next > self.taken && w.next >= w.checked_from && w.next <= clean_to {
                w.next = clean_to + 1;
            }
            if w.next > head {
                continue;
            }
            let read = st.kv.read_log(
                w.next,
                &w.range,
                MAX_REVS_PER_RESPONSE,
                MAX_BYTES_PER_RESPONSE,
            );
            match read {
                LogRead::Compacted(c) => out.push((*id, Err(c))),
                LogRead::Events { mut events, next } => {
                    w.next = next;
                    behind |= next <= head;
                    events.retain(|e| {
                        let put = e.cur.is_live();
                        !(put && w.no_put || !put && w.no_delete)
                    });
                    if !events.is_empty() {
                        out.push((*id, Ok(events)));
                    }
                }
            }
        }
        self.taken = head;
        (head, behind, out)
    }
}

/// One watcher's next response: its events, or the compaction point that
/// cancels it.
type Batch = (i64, Result<Vec<Event>, i64>);

/// The fields of a create request that `handle` passes on (etcd-client does
/// not export the request's own type).
struct Create {
    key: Vec<u8>,
    range_end: Vec<u8>,
    watch_id: i64,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    filters: Vec<i32>,
}

fn to_pb(e: &Event, prev_kv: bool) -> PbEvent {
    let put = e.cur.is_live();
    PbEvent {
        r#type: if put { 0 } else { 1 },
        kv: Some(e.cur.to_pb(&e.key, false)),
        prev_kv: if prev_kv {
            e.prev.as_ref().map(|p| p.to_pb(&e.key, false))
        } else {
            None
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use etcd_client::{Client, WatchOptions};

    use crate::store::{Config, Store};

    type Served = tokio::task::JoinHandle<Result<(), crate::store::StoreError>>;

    /// A store serving on a free loopback port: its URL, what stops it, and
    /// its task.
    async fn serve_store() -> (String, tokio_util::sync::CancellationToken, Served) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let cancel = tokio_util::sync::CancellationToken::new();
        let store = Store::new(Config::default());
        let server = tokio::spawn({
            let cancel = cancel.clone();
            async move { store.serve(listener, cancel).await }
        });
        (url, cancel, server)
    }

    /// Time from the first of `puts` sequential puts to the last event, with
    /// `watchers` watchers on distinct prefixes of one watch stream; each put
    /// matches exactly one watcher, so only the watcher count varies.
    async fn dispatch(watchers: usize, puts: usize) -> std::time::Duration {
        let (url, cancel, server) = serve_store().await;
        let mut client = Client::connect([url], None).await.expect("connect");
        let opts = || Some(WatchOptions::new().with_prefix());
        let mut ws = client.watch("w/00000/", opts()).await.expect("watch");
        for i in 1..watchers {
            ws.watch(format!("w/{i:05}/"), opts()).await.expect("watch");
        }
        let mut created = 0;
        while created < watchers {
            let m = ws.message().await.expect("watch").expect("open");
            created += usize::from(m.created());
        }
        let start = Instant::now();
        let writer = spawn_writer(client.clone(), puts, watchers);
        let mut events = 0;
        while events < puts {
            let m = ws.message().await.expect("watch").expect("open");
            events += m.events().len();
        }
        let took = start.elapsed();
        writer.await.expect("writer");
        cancel.cancel();
        server.await.expect("join").expect("serve");
        took
    }

    /// Puts `puts` values round-robin under `w/<i>/k` for `n` prefixes.
    fn spawn_writer(mut client: Client, puts: usize, n: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for i in 0..puts {
                let key = format!("w/{:05}/k", i % n);
                client.put(key, "v", None).await.expect("put");
            }
        })
    }

    /// As [`dispatch`], with `streams` watch streams of one watcher each
    /// (one per host, as the emulator has), spread over connections of at
    /// most 100 streams.
    async fn dispatch_streams(streams: usize, puts: usize) -> std::time::Duration {
        use futures::StreamExt;
        let (url, cancel, server) = serve_store().await;
        let mut clients = Vec::new();
        for _ in 0..streams.div_ceil(100) {
            let c = Client::connect([url.clone()], None).await.expect("connect");
            clients.push(c);
        }
        let mut all = Vec::new();
        for i in 0..streams {
            let opts = Some(WatchOptions::new().with_prefix());
            let c = &mut clients[i / 100];
            let mut ws = c.watch(format!("w/{i:05}/"), opts).await.expect("watch");
            let m = ws.message().await.expect("watch").expect("open");
            assert!(m.created());
            all.push(ws);
        }
        let mut merged = futures::stream::select_all(all);
        let start = Instant::now();
        let writer = spawn_writer(clients[0].clone(), puts, streams);
        let mut events = 0;
        while events < puts {
            let m = merged.next().await.expect("open").expect("watch");
            events += m.events().len();
        }
        let took = start.elapsed();
        writer.await.expect("writer");
        drop(merged);
        cancel.cancel();
        server.await.expect("join").expect("serve");
        took
    }

    /// A measurement, not a check: `cargo test --lib dispatch_cost -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run by hand"]
    async fn dispatch_cost_by_watcher_count() {
        for watchers in [10, 1_000, 10_000] {
            let took = dispatch(watchers, 10_000).await;
            println!(
                "{watchers} watchers, 10000 puts: {took:?} ({:.1} us/put)",
                took.as_secs_f64() * 1e6 / 10_000.0
            );
        }
        for streams in [10, 1_000, 10_000] {
            let took = dispatch_streams(streams, 10_000).await;
            println!(
                "{streams} streams of 1 watcher, 10000 puts: {took:?} ({:.1} us/put)",
                took.as_secs_f64() * 1e6 / 10_000.0
            );
        }
    }
}
