//! WatchStore: the reader side. Lists a prefix, then watches it from the
//! listed revision, and turns both into [`WatchEvent`]s.
//!
//! On every (re)connect all known keys are marked stale; the new list
//! refreshes the ones that still exist. A key still stale once the list is
//! complete is reported deleted when its writer's canary says the writer
//! is complete again ([`crate::drain`]): at once after an ordinary
//! reconnect, only after re-export when etcd restarted empty. So deletions
//! made while the reader was away are never missed, and an empty etcd never
//! withdraws what is still true.
//!
//! A key is reported again only when its value changed. Values are compared
//! by fingerprint, not by `mod_revision`: an etcd that restarted empty
//! counts revisions from 1 again, so a new value can carry an old revision.
//! Reconnects back off from 100 ms to 5 s.
//!
//! While watching, the deletions of one revision are reported together: a
//! revision that deletes a writer's canaries is its lease expiring, and the
//! keys it deletes wait for the canaries like stale keys do.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use crate::drain::StaleKeys;
use crate::etcd::prefix_end;
use crate::{Error, Result, fingerprint};

/// Keys per page of the initial list.
const PAGE: i64 = 5000;

/// What a reader sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed (or first seen in a list).
    Upsert {
        /// Full key.
        key: String,
        /// Raw value.
        value: Vec<u8>,
    },
    /// A key was deleted (or found stale after a re-list).
    Delete {
        /// Full key.
        key: String,
    },
    /// The list after a (re)connect is complete; watching from here on.
    ListDone,
    /// The connection was lost; the store reconnects on its own.
    Disconnected {
        /// What went wrong.
        error: String,
    },
}

/// Lists and watches `prefix` until `tx` is closed, connecting with
/// `connect` (called again after every failure).
pub async fn watch_prefix<F, Fut>(mut connect: F, prefix: String, tx: mpsc::Sender<WatchEvent>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Client>>,
{
    let mut known = Known::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = match connect().await {
            Ok(client) => list_and_watch(client, &prefix, &mut known, &tx, &mut backoff).await,
            Err(e) => Err(e),
        };
        if tx.is_closed() {
            return;
        }
        let error = match outcome {
            Ok(()) => "watch ended".to_owned(),
            Err(e) => knit_telemetry::error_chain(&e),
        };
        if tx.send(WatchEvent::Disconnected { error }).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What the reader has reported: each key's value fingerprint, and the
/// stale keys held back after a relist.
#[derive(Default)]
struct Known {
    values: BTreeMap<String, u64>,
    stale: StaleKeys,
}

async fn list_and_watch(
    mut client: Client,
    prefix: &str,
    known: &mut Known,
    tx: &mpsc::Sender<WatchEvent>,
    backoff: &mut Duration,
) -> Result<()> {
    let end = prefix_end(prefix);
    let mut stale: BTreeSet<String> = known.values.keys().cloned().collect();
    let mut listed_canaries: Vec<String> = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = client
            .get(from.clone(), Some(options))
            .await
            .map_err(etcd("listing"))?;
        if revision == 0 {
            revision = page.header().map(|h| h.revision()).unwrap_or_default();
        }
        for kv in page.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            stale.remove(key);
            if crate::keys::is_canary(key) {
                listed_canaries.push(key.to_owned());
            }
            upsert(known, tx, key, kv).await?;
        }
        match (page.more(), page.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let forget = known
        .stale
        .after_list(stale, listed_canaries.iter().map(String::as_str));
    for key in forget {
        known.values.remove(&key);
        send(tx, WatchEvent::Delete { key }).await?;
    }
    if known.stale.held() > 0 {
        tracing::info!(
            %prefix,
            held = known.stale.held(),
            "keys missing after a relist are kept until their writer's canary is back"
        );
    }
    send(tx, WatchEvent::ListDone).await?;
    *backoff = Duration::from_millis(100);

    let mut stream = client
        .watch(prefix, Some(watch_options(prefix, revision + 1)))
        .await
        .map_err(etcd("watching"))?;
    // Deletions are reported a revision at a time (a lost lease deletes all
    // of a writer's keys in one revision, canaries among them); a revision
    // may come in several fragments, sent back to back.
    let mut deleted = Deletions::default();
    let mut last_size = 0;
    loop {
        // Only a response filled up to etcd's limit may be a fragment with
        // more of its revision to come; after any other the deletions are
        // reported at once.
        if last_size < MAY_BE_FRAGMENT {
            deleted.report(prefix, known, tx).await?;
        }
        let next = if deleted.keys.is_empty() {
            stream.message().await
        } else {
            match tokio::time::timeout(FRAGMENT_WAIT, stream.message()).await {
                Ok(next) => next,
                Err(_) => {
                    deleted.report(prefix, known, tx).await?;
                    continue;
                }
            }
        };
        let Some(resp) = next.map_err(etcd("watching"))? else {
            break;
        };
        if resp.canceled() {
            return Err(Error::WatchCanceled(resp.cancel_reason().to_owned()));
        }
        last_size = resp
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.key().len() + kv.value().len() + 32)
            .sum();
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            if deleted.revision != kv.mod_revision() {
                deleted.report(prefix, known, tx).await?;
            }
            match event.event_type() {
                EventType::Put => {
                    for released in known.stale.on_put(key) {
                        known.values.remove(&released);
                        send(tx, WatchEvent::Delete { key: released }).await?;
                    }
                    upsert(known, tx, key, kv).await?;
                }
                EventType::Delete => {
                    deleted.revision = kv.mod_revision();
                    deleted.keys.push(key.to_owned());
                }
            }
        }
    }
    deleted.report(prefix, known, tx).await
}

/// How long a watch waits for the next fragment of a revision before it
/// takes the revision as complete (etcd sends fragments back to back).
const FRAGMENT_WAIT: Duration = Duration::from_millis(100);

/// The size (keys, values and a little per event) from which a watch
/// response may be a fragment: etcd fills every fragment but the last up
/// to its request limit (1.5 MiB by default).
const MAY_BE_FRAGMENT: usize = 512 * 1024;

/// The deletions of one revision, not reported yet.
#[derive(Default)]
struct Deletions {
    revision: i64,
    keys: Vec<String>,
}

impl Deletions {
    /// Reports the deletions gathered, except those held for a writer
    /// whose canaries went with them ([`StaleKeys::on_deleted_together`]).
    async fn report(&mut self, prefix: &str, known: &mut Known, tx: &mpsc::Sender<WatchEvent>) -> Result<()> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let keys = std::mem::take(&mut self.keys);
        let count = keys.len();
        let forget = known.stale.on_deleted_together(keys);
        if forget.len() < count {
            tracing::warn!(
                %prefix,
                held = count - forget.len(),
                "a writer's canaries were deleted with its keys (its lease expired): keeping them until the canaries are back"
            );
        }
        for key in forget {
            known.values.remove(&key);
            send(tx, WatchEvent::Delete { key }).await?;
        }
        Ok(())
    }
}

/// Reports `key` unless its value is the one already reported.
async fn upsert(
    known: &mut Known,
    tx: &mpsc::Sender<WatchEvent>,
    key: &str,
    kv: &etcd_client::KeyValue,
) -> Result<()> {
    let print = fingerprint(kv.value());
    if known.values.insert(key.to_owned(), print) == Some(print) {
        return Ok(());
    }
    send(
        tx,
        WatchEvent::Upsert {
            key: key.to_owned(),
            value: kv.value().to_vec(),
        },
    )
    .await
}

/// How a WatchStore watches `prefix` from `revision` on. A watcher that
/// catches up gets up to 1,000 revisions in one response, and a writer's
/// transaction holds up to 100 keys: far past gRPC's 4 MiB message limit,
/// which would fail the watch on every retry. `fragment` makes etcd split
/// any response larger than its request limit (1.5 MiB by default).
pub fn watch_options(prefix: &str, revision: i64) -> WatchOptions {
    WatchOptions::new()
        .with_range(prefix_end(prefix))
        .with_start_revision(revision)
        .with_fragment()
}

async fn send(tx: &mpsc::Sender<WatchEvent>, event: WatchEvent) -> Result<()> {
    tx.send(event).await.map_err(|_| Error::ReaderGone)
}

fn etcd(action: &'static str) -> impl Fn(etcd_client::Error) -> Error {
    move |source| Error::Etcd {
        action: action.into(),
        source,
    }
}
