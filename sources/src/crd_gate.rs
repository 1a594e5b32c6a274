//! Watches of kinds whose CRD may not be installed (Cilium's policies),
//! started only while the CRD exists.
//!
//! A watcher of a missing kind fails its list with 404 and retries with
//! backoff (up to every 30 s), forever: on a cluster without Cilium every
//! agent would re-list both Cilium kinds twice a minute, about 67 requests a
//! second at 1,000 nodes. Instead one watch of the CRD object itself (by
//! name, long-lived, no polling) says whether the kind exists: while it does
//! the kind's own watch runs and its events pass through; when it is absent
//! (or deleted) the kind's watch is stopped and the `absent` change is
//! emitted, which counts as a complete, empty list.

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};

/// The events of `watch()` while CRD `crd` (e.g.
/// `ciliumnetworkpolicies.cilium.io`) exists, and `absent()` whenever it
/// does not.
pub(crate) fn while_crd_exists<T, W, A>(
    client: &Client,
    crd: &'static str,
    watch: W,
    absent: A,
) -> BoxStream<'static, T>
where
    T: Send + 'static,
    W: Fn() -> BoxStream<'static, T> + Send + 'static,
    A: Fn() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<T>(64);
    let crds = watcher(
        Api::<PartialObjectMeta<CustomResourceDefinition>>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={crd}")),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut crds = crds.boxed();
        let mut listed_present = false;
        let mut present: Option<bool> = None;
        let mut forwarding: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let event = tokio::select! {
                e = crds.next() => match e {
                    Some(e) => e,
                    None => break,
                },
                () = tx.closed() => break,
            };
            let now = match event {
                Ok(Event::Init) => {
                    listed_present = false;
                    continue;
                }
                Ok(Event::InitApply(_)) => {
                    listed_present = true;
                    continue;
                }
                Ok(Event::InitDone) => listed_present,
                Ok(Event::Apply(_)) => true,
                Ok(Event::Delete(_)) => false,
                Err(e) => {
                    tracing::warn!(%crd, error = %e, "watching the CRD failed; retrying");
                    continue;
                }
            };
            if present == Some(now) {
                continue;
            }
            present = Some(now);
            if let Some(task) = forwarding.take() {
                task.abort();
            }
            if now {
                tracing::info!(%crd, "CRD installed; watching its objects");
                let (mut stream, tx) = (watch(), tx.clone());
                forwarding = Some(tokio::spawn(async move {
                    while let Some(item) = stream.next().await {
                        if tx.send(item).await.is_err() {
                            return;
                        }
                    }
                }));
            } else {
                tracing::debug!(%crd, "CRD not installed");
                if tx.send(absent()).await.is_err() {
                    break;
                }
            }
        }
        if let Some(task) = forwarding {
            task.abort();
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}
