//! The thin API layer of leader election ([`crate::leadership`]): reads
//! the Lease, writes the decided spec (create when there is none, replace
//! with the read resourceVersion otherwise, so a concurrent write by
//! another replica makes ours fail with 409 and we follow), and runs the
//! operator's loops only while this replica leads. A leader that cannot
//! renew within the renew deadline stops: the process exits and the
//! kubelet restarts it as a follower, as client-go's elector does.

use std::future::Future;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use crate::leadership::{Decision, LEASE_NAME, LeaseTimes, decide, desired, released};
use crate::{Error, Result};

/// One replica's side of the election.
#[derive(Clone)]
pub struct LeaderElector {
    leases: Api<Lease>,
    me: String,
    times: LeaseTimes,
}

fn kube_error(action: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Kube {
        action: action.to_owned(),
        source,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// The elector of replica `me` (its pod name) over the Lease in
    /// `namespace`.
    pub fn new(client: kube::Client, namespace: &str, me: impl Into<String>, times: LeaseTimes) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            me: me.into(),
            times,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.me
    }

    /// One round: takes or renews the lease when it is ours to take.
    /// Returns whether this replica holds it now, or who does.
    pub async fn try_acquire_or_renew(&self) -> Result<Result<(), String>> {
        let now = Timestamp::now();
        let current = self
            .leases
            .get_opt(LEASE_NAME)
            .await
            .map_err(kube_error("reading Lease knit-operator"))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(desired(None, &self.me, now, &self.times)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Ok(())),
                Err(e) if is_conflict(&e) => Ok(Err("another replica, which created it first".into())),
                Err(e) => Err(kube_error("creating Lease knit-operator")(e)),
            };
        };
        if let Decision::Follow { holder, .. } = decide(lease.spec.as_ref(), &self.me, now) {
            return Ok(Err(holder));
        }
        lease.spec = Some(desired(lease.spec.as_ref(), &self.me, now, &self.times));
        match self
            .leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) if is_conflict(&e) => Ok(Err("another replica, which wrote it first".into())),
            Err(e) => Err(kube_error("writing Lease knit-operator")(e)),
        }
    }

    /// Gives the lease up if this replica holds it (replace at the read
    /// resourceVersion), so another replica leads within its retry period
    /// rather than the lease duration. Returns whether it was released.
    pub async fn release(&self) -> Result<bool> {
        let current = self
            .leases
            .get_opt(LEASE_NAME)
            .await
            .map_err(kube_error("reading Lease knit-operator"))?;
        let Some(mut lease) = current else {
            return Ok(false);
        };
        let Some(free) = lease
            .spec
            .as_ref()
            .and_then(|spec| released(spec, &self.me, Timestamp::now()))
        else {
            return Ok(false);
        };
        lease.spec = Some(free);
        match self
            .leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(kube_error("releasing Lease knit-operator")(e)),
        }
    }

    /// Waits until this replica leads (`on_leading(false)` while it
    /// follows), then runs `work` while renewing. Returns `work`'s output,
    /// or an error once the lease could not be renewed for the renew
    /// deadline: the caller must stop (exit), another replica takes over.
    pub async fn lead<T>(&self, work: impl Future<Output = T>, on_leading: impl Fn(bool)) -> Result<T> {
        let mut last_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Ok(())) => break,
                Ok(Err(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(%holder, me = %self.me, "following: another replica leads");
                        last_holder = Some(holder);
                    }
                    on_leading(false);
                }
                Err(e) => tracing::warn!(error = %knit_telemetry::error_chain(&e), "leader election"),
            }
            tokio::time::sleep(self.times.retry).await;
        }
        tracing::info!(me = %self.me, "leading: this replica reconciles");
        on_leading(true);
        tokio::select! {
            out = work => Ok(out),
            lost = self.keep_renewing() => Err(lost),
        }
    }

    /// Renews every retry period; returns once renewal has failed for the
    /// renew deadline, or another replica holds the lease.
    async fn keep_renewing(&self) -> Error {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.times.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(Ok(())) => last_renewed = tokio::time::Instant::now(),
                Ok(Err(holder)) => return lost(format!("{holder} holds the lease now")),
                Err(e) => tracing::warn!(error = %knit_telemetry::error_chain(&e), "renewing the lease"),
            }
            if last_renewed.elapsed() >= self.times.renew_deadline {
                return lost(format!("not renewed for {:?}", self.times.renew_deadline));
            }
        }
    }
}

fn lost(why: String) -> Error {
    Error::LeadershipLost(why)
}
