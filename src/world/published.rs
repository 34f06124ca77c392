//! Following what every host publishes about itself (`/_mgmt/facts/<h>`:
//! its facts and graph name, under its lease; #20) for templates'
//! `hosts(WHERE)`: one read, then a watch from the next revision, so a
//! host appearing or going (its lease revoked or expired) is one event.
//!
//! Only while the graph's text calls `hosts()`; otherwise nothing is read
//! or watched. A watch that fails is dropped with a warning and the next
//! [`Published::changed`] reads again, after a back-off.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchStream};
use futures::StreamExt;

use super::{World, WorldError, FACTS};
use crate::graph::template;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Every host's published record, kept current while followed.
pub struct Published {
    world: World,
    on: bool,
    hosts: template::Published,
    rev: i64,
    stream: Option<WatchStream>,
    stale: bool,
    backoff: Duration,
}

impl Published {
    pub fn new(world: World) -> Published {
        Published {
            world,
            on: false,
            hosts: Default::default(),
            rev: 0,
            stream: None,
            stale: true,
            backoff: BACKOFF_MIN,
        }
    }

    /// Follows (reading now) or stops following.
    pub async fn follow(&mut self, on: bool) -> Result<(), WorldError> {
        if !on {
            (self.on, self.stream, self.stale) = (false, None, true);
            self.hosts.clear();
            return Ok(());
        }
        self.on = true;
        if self.stale {
            self.read().await?;
        }
        Ok(())
    }

    /// The records as last seen.
    pub fn hosts(&self) -> template::Published {
        self.hosts.clone()
    }

    /// Waits for a change of any record; pending forever when not
    /// following. Cancel-safe: changes applied before are kept.
    pub async fn changed(&mut self) {
        if !self.on {
            return std::future::pending().await;
        }
        loop {
            if self.stale {
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                match self.read().await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!("cannot read the hosts' published facts: {e}; retrying");
                        continue;
                    }
                }
            }
            if self.stream.is_none() {
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(self.rev + 1);
                match self.world.client.watch(FACTS, Some(opts)).await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) => {
                        self.lost(&format!("cannot watch: {e}"));
                        continue;
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let resp = match stream.next().await {
                Some(Ok(r)) if !r.canceled() => r,
                Some(Ok(_)) => {
                    self.lost("the store cancelled the watch");
                    continue;
                }
                Some(Err(e)) => {
                    self.lost(&format!("the watch failed: {e}"));
                    continue;
                }
                None => {
                    self.lost("the store closed the watch");
                    continue;
                }
            };
            self.backoff = BACKOFF_MIN;
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.rev = self.rev.max(kv.mod_revision());
                let Some(host) = String::from_utf8_lossy(kv.key())
                    .strip_prefix(FACTS)
                    .map(str::to_owned)
                else {
                    continue;
                };
                changed |= match ev.event_type() {
                    EventType::Put => {
                        let v: serde_json::Value =
                            serde_json::from_slice(kv.value()).unwrap_or_default();
                        self.hosts.insert(host, v.clone()) != Some(v)
                    }
                    EventType::Delete => self.hosts.remove(&host).is_some(),
                };
            }
            if changed {
                return;
            }
        }
    }

    async fn read(&mut self) -> Result<(), WorldError> {
        let resp = self
            .world
            .client
            .get(FACTS, Some(GetOptions::new().with_prefix()))
            .await?;
        self.rev = resp.header().map_or(0, |h| h.revision());
        self.hosts = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let host = key.strip_prefix(FACTS)?.to_owned();
                Some((host, serde_json::from_slice(kv.value()).unwrap_or_default()))
            })
            .collect();
        (self.stale, self.stream) = (false, None);
        Ok(())
    }

    fn lost(&mut self, why: &str) {
        tracing::warn!("the hosts' published facts: {why}; reading them again");
        (self.stream, self.stale) = (None, true);
    }
}
