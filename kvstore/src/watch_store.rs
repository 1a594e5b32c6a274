//! WatchStore: the reader side. Lists a prefix, then watches it from the
//! listed revision, and turns both into [`WatchEvent`]s.
//!
//! On every (re)connect all known keys are marked stale; the new list
//! refreshes the ones that still exist, and whatever is still stale once
//! the list is complete is reported deleted — so deletions made while the
//! reader was away are never missed. Reconnects back off from 100 ms to 5 s.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use crate::etcd::prefix_end;
use crate::{Error, Result};

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
    let mut known: BTreeMap<String, i64> = BTreeMap::new();
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
            Err(e) => crate::error_chain(&e),
        };
        if tx.send(WatchEvent::Disconnected { error }).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn list_and_watch(
    mut client: Client,
    prefix: &str,
    known: &mut BTreeMap<String, i64>,
    tx: &mpsc::Sender<WatchEvent>,
    backoff: &mut Duration,
) -> Result<()> {
    let end = prefix_end(prefix);
    let mut stale: BTreeSet<String> = known.keys().cloned().collect();
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
            if known.get(key) != Some(&kv.mod_revision()) {
                upsert(known, tx, key, kv).await?;
            }
        }
        match (page.more(), page.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    for key in stale {
        known.remove(&key);
        send(tx, WatchEvent::Delete { key }).await?;
    }
    send(tx, WatchEvent::ListDone).await?;
    *backoff = Duration::from_millis(100);

    let options = WatchOptions::new()
        .with_range(end)
        .with_start_revision(revision + 1);
    let mut stream = client
        .watch(prefix, Some(options))
        .await
        .map_err(etcd("watching"))?;
    while let Some(resp) = stream.message().await.map_err(etcd("watching"))? {
        if resp.canceled() {
            return Err(Error::WatchCanceled(resp.cancel_reason().to_owned()));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => upsert(known, tx, key, kv).await?,
                EventType::Delete => {
                    known.remove(key);
                    send(tx, WatchEvent::Delete { key: key.to_owned() }).await?;
                }
            }
        }
    }
    Ok(())
}

/// Records `key` at its revision and reports it.
async fn upsert(
    known: &mut BTreeMap<String, i64>,
    tx: &mpsc::Sender<WatchEvent>,
    key: &str,
    kv: &etcd_client::KeyValue,
) -> Result<()> {
    known.insert(key.to_owned(), kv.mod_revision());
    send(
        tx,
        WatchEvent::Upsert {
            key: key.to_owned(),
            value: kv.value().to_vec(),
        },
    )
    .await
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
