//! The RaftCluster controller: one reconcile pass per trigger, the pass of
//! `reconcile.rs` that the local runtime runs too, hosted here by the API
//! server (status), events and the Lease. Triggers: a change to
//! the cluster, to a Pod, Service or PVC it owns (volumes kept past the
//! cluster's deletion are not owned), or a requeue. A pass never waits: a
//! step that must wait is planned again after a short requeue. Before each
//! pass the cluster's certificates are issued or renewed (`tls.rs`); their
//! Secrets are owned by the cluster, so garbage collection removes them.
//! After each pass the members' volumes are grown to `spec.storage.size`
//! where their StorageClass allows it (`volumes.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::certs::CaChange;
use crate::crd::{RaftCluster, RaftClusterStatus, Retention};
use crate::k8s::metrics::{ClusterLabel, FailureLabel, Metrics};
use crate::k8s::resources::{
    client_service, disruption_budget, network_policy, network_policy_name, peer_service,
    RETIRED_LABEL,
};
use crate::k8s::runtime::{cluster_volumes, delete_gone, retire, KubeRuntime};
use crate::k8s::tls::{self, OperatorCert};
use crate::k8s::volumes;
use crate::plan::{Action as Step, Observed};
use crate::reconcile::{self, AdminClients, Host, PassError};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use raftlane_tls::Dialer;

/// Finalizer that retires or deletes volumes per `whenDeleted` before the
/// RaftCluster goes (owner references cannot honour a retention policy).
pub const FINALIZER: &str = "raftlane.io/volumes";
/// Field manager of the status, applied server-side.
pub const STATUS_MANAGER: &str = "raft-operator-status";
/// Requeue while an operation is in flight or waiting.
const BUSY_REQUEUE: Duration = Duration::from_secs(2);
/// Requeue of a settled cluster: members are health-checked this often even
/// when nothing in Kubernetes changes.
const IDLE_REQUEUE: Duration = Duration::from_secs(60);
/// Longest backoff after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0:#}")]
    Member(anyhow::Error),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("this replica no longer holds the leader-election lease")]
    NotLeader,
}

impl Error {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes_api",
            Error::Member(_) => "member",
            Error::NotLeader => "not_leader",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "finalizer",
            },
        }
    }
}

/// What the controller keeps of one cluster between passes.
#[derive(Default)]
struct ClusterState {
    admins: Option<AdminClients>,
    operator: OperatorCert,
}

/// What every reconcile pass shares.
pub struct Context {
    pub client: Client,
    reporter: Reporter,
    pub metrics: Metrics,
    /// Admin clients and the operator's certificate per cluster UID, kept
    /// between passes.
    clusters: tokio::sync::Mutex<HashMap<String, ClusterState>>,
    /// Consecutive failures per cluster UID, for the backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
    /// Turns true when the leader-election Lease is lost: from then on no
    /// write is sent (step, status, event, finalizer, volume), even by a pass
    /// already running; each is checked just before it goes out.
    lost: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where each cluster gets its `<name>-peers` NetworkPolicy.
    network_policies: PolicyScope,
}

/// The namespaces whose clusters get a `<name>-peers` NetworkPolicy. That
/// policy opens only the peer port, so it belongs only where the chart's
/// members policy opens the others: alone it would shut the operator out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyScope {
    Everywhere,
    Namespaces(std::collections::BTreeSet<String>),
}

impl PolicyScope {
    fn covers(&self, ns: &str) -> bool {
        match self {
            PolicyScope::Everywhere => true,
            PolicyScope::Namespaces(n) => n.contains(ns),
        }
    }
}

impl Context {
    pub fn new(client: Client, reporter: Reporter, metrics: Metrics) -> Context {
        Context {
            client,
            reporter,
            metrics,
            clusters: Default::default(),
            failures: Default::default(),
            lost: None,
            network_policies: PolicyScope::Everywhere,
        }
    }

    /// Per-cluster NetworkPolicies only in `scope` (`raft-operator run` takes
    /// it from the chart); elsewhere an existing one is deleted.
    pub fn network_policies_in(mut self, scope: PolicyScope) -> Context {
        self.network_policies = scope;
        self
    }

    /// Steps are taken and status written only while `lost` stays false.
    pub fn leading_while(mut self, lost: tokio::sync::watch::Receiver<bool>) -> Context {
        self.lost = Some(lost);
        self
    }

    pub(crate) fn leading(&self) -> bool {
        self.lost.as_ref().is_none_or(|l| !*l.borrow())
    }

    /// Before a write: `Err(NotLeader)` once the Lease is lost.
    pub(crate) fn still_leading(&self) -> Result<(), Error> {
        match self.leading() {
            true => Ok(()),
            false => Err(Error::NotLeader),
        }
    }

    async fn event(&self, rc: &RaftCluster, type_: EventType, reason: &str, note: String) {
        self.publish(&rc.object_ref(&()), type_, reason, note).await;
    }

    /// Writes one event. Each goes through a fresh [`Recorder`]: a shared one
    /// folds events of the same reason into a series that keeps the first
    /// note, and here every note matters (which member, which address).
    /// Events are written for steps, failures and changed waits: an idle
    /// pass writes none.
    pub(crate) async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, MAX_NOTE)),
            action: "Reconcile".into(),
            secondary: None,
        };
        // Not even an event from a replica that lost the Lease.
        if !self.leading() {
            tracing::debug!(reason, "not leading: event not written");
            return;
        }
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        // An event that cannot be written is logged, never a reason to fail.
        if let Err(e) = recorder.publish(&ev, regarding).await {
            tracing::warn!(error = %e, reason, "writing an event failed");
        }
    }

    /// Reports an object of `kind` whose stored form cannot be read (a
    /// warning, and a Warning event `InvalidSpec` naming why): it is left
    /// alone, and never stops the watch.
    pub(crate) async fn unreadable(
        &self,
        kind: &str,
        regarding: &ObjectReference,
        invalid: &kube::core::error_boundary::InvalidObject,
    ) {
        tracing::warn!(
            name = invalid.metadata.name.as_deref().unwrap_or("?"),
            error = %invalid.error,
            "skipping a {kind} that cannot be read"
        );
        self.publish(
            regarding,
            EventType::Warning,
            "InvalidSpec",
            invalid.error.clone(),
        )
        .await;
    }
}

/// Longest event note the API server accepts (1 kB), in bytes.
const MAX_NOTE: usize = 1024;

fn truncate(mut note: String, max: usize) -> String {
    if note.len() > max {
        let mut end = max - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// The event reason of a carried-out step.
fn reason(step: &Step) -> &'static str {
    match step {
        Step::Create { .. } => "MemberCreated",
        Step::PushAddresses { .. } => "AddressesPushed",
        Step::AddLearner { .. } => "LearnerAdded",
        Step::Promote { .. } => "LearnerPromoted",
        Step::TransferLeader { .. } => "LeaderTransferred",
        Step::RemoveMember { .. } => "MemberRemoved",
        Step::Delete { .. } => "MemberDeleted",
        Step::Restart { .. } => "MemberRestarted",
    }
}

/// One pass for one RaftCluster. A cluster whose stored form cannot be read
/// is reported in an event and left alone; it never stops the watch.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<RaftCluster>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // Before the finalizer helper, which may add our finalizer (a write).
    ctx.still_leading()?;
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(rc) => {
            let api: Api<RaftCluster> =
                Api::namespaced(ctx.client.clone(), &rc.namespace().unwrap_or_default());
            finalizer(&api, FINALIZER, Arc::new(rc.clone()), |ev| async {
                match ev {
                    Finalized::Apply(rc) => apply(&rc, &ctx).await,
                    Finalized::Cleanup(rc) => cleanup(&rc, &ctx).await,
                }
            })
            .await
            .map_err(|e| Error::Finalizer(Box::new(e)))
        }
        Err(invalid) => {
            ctx.unreadable("RaftCluster", &obj.object_ref(&()), invalid)
                .await;
            if obj.meta().deletion_timestamp.is_some() {
                release_unreadable(&obj, &ctx).await
            } else {
                Ok(Action::await_change())
            }
        }
    };
    ctx.metrics.observe_pass(started.elapsed());
    if result.is_ok() {
        if let Some(uid) = obj.uid() {
            ctx.failures.lock().expect("failures lock").remove(&uid);
        }
    }
    result
}

/// Requeues a failed pass with exponential backoff per cluster (1 s, 2 s, 4 s…
/// up to five minutes), counted by reason.
pub fn error_policy(
    obj: Arc<DeserializeGuard<RaftCluster>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&FailureLabel {
            reason: err.reason(),
        })
        .inc();
    let n = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let n = failures.entry(obj.uid().unwrap_or_default()).or_insert(0);
        *n += 1;
        *n
    };
    tracing::warn!(name = %obj.name_any(), failures = n, error = %err, "reconcile failed");
    Action::requeue(backoff(n))
}

pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Creates each cluster-wide object that is missing; existing ones are left
/// as they are (a read, never a write, when nothing is missing).
async fn ensure_cluster_objects(
    rc: &RaftCluster,
    ctx: &Context,
    with_policy: bool,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = rc.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for svc in [peer_service(rc), client_service(rc)] {
        if services.get_opt(&svc.name_any()).await?.is_none() {
            ctx.still_leading()?;
            services.create(&PostParams::default(), &svc).await?;
        }
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    if budgets.get_opt(&rc.name_any()).await?.is_none() {
        ctx.still_leading()?;
        budgets
            .create(&PostParams::default(), &disruption_budget(rc))
            .await?;
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let name = network_policy_name(&rc.name_any());
    let found = policies.get_opt(&name).await?.is_some();
    if with_policy != found {
        ctx.still_leading()?;
    }
    match (with_policy, found) {
        (true, false) => {
            policies
                .create(&PostParams::default(), &network_policy(rc))
                .await?;
        }
        (false, true) => {
            tracing::info!(namespace = %ns, policy = %name, "no members NetworkPolicy here: peer policy deleted");
            policies.delete(&name, &Default::default()).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Writes the status of `obj` (a RaftCluster, a RaftClusterBackup) with
/// server-side apply under its own field manager; every status write of both
/// controllers goes through here, and none once the Lease is lost (a stale
/// status could overwrite the new leader's).
pub(crate) async fn apply_status<K>(
    obj: &K,
    ctx: &Context,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    ctx.still_leading()?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

async fn apply(cached: &RaftCluster, ctx: &Context) -> Result<Action, Error> {
    if !ctx.leading() {
        return Err(Error::NotLeader);
    }
    // The pass works from a fresh read, not the watch cache: the status it
    // starts from (bootstrap voters above all) must be the last one written.
    let api: Api<RaftCluster> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let rc = &fresh;
    let name = rc.name_any();
    let uid = rc.uid().unwrap_or_default();
    let previous = rc.status.clone().unwrap_or_default();
    let members_now = previous.members.len() as u32;
    // Paused: the pass reads and at most writes the status, nothing else.
    if !rc.spec.paused {
        if previous.observed_generation.is_some()
            && previous.observed_generation != rc.metadata.generation
            && members_now != rc.spec.replicas
        {
            let note = format!("{members_now} → {} members", rc.spec.replicas);
            ctx.event(rc, EventType::Normal, "Scaling", note).await;
        }
        ensure_cluster_objects(
            rc,
            ctx,
            ctx.network_policies
                .covers(&rc.namespace().unwrap_or_default()),
        )
        .await?;
    }

    let mut state = ctx.clusters.lock().await.remove(&uid).unwrap_or_default();
    if let Err(e) = ctx.still_leading() {
        ctx.clusters.lock().await.insert(uid, state);
        return Err(e);
    }
    let dialer = match rc.spec.tls.enabled {
        true => {
            let synced = tls::sync(rc, &ctx.client, &mut state.operator, !rc.spec.paused).await;
            let synced = match synced {
                Ok(s) => s,
                Err(e) => {
                    ctx.clusters.lock().await.insert(uid, state);
                    return Err(match e.downcast::<kube::Error>() {
                        Ok(e) => Error::Kube(e),
                        Err(e) => Error::Member(e),
                    });
                }
            };
            if !synced.written.is_empty() {
                let reason = match synced.ca_change {
                    Some(CaChange::Expiring | CaChange::Requested(_)) => "CARotated",
                    Some(CaChange::LeavesReissued) => "CertificatesReissued",
                    Some(CaChange::RotationDone) => "CARotationDone",
                    _ => "CertificatesIssued",
                };
                let note = format!("written: {}", synced.written.join(", "));
                ctx.event(rc, EventType::Normal, reason, note).await;
            }
            Some(synced.dialer).filter(|_| synced.dialer_changed || state.admins.is_none())
        }
        false => Some(Dialer::Plaintext)
            .filter(|_| state.admins.as_ref().is_none_or(|a| a.dialer().is_tls())),
    };
    let mut admins = match (state.admins.take(), dialer) {
        (Some(mut a), Some(d)) => {
            a.set_dialer(d);
            a
        }
        (Some(a), None) => a,
        (None, d) => AdminClients::new(d.unwrap_or(Dialer::Plaintext)),
    };
    let mut rt = KubeRuntime::new(ctx.client.clone(), rc);
    let mut host = KubeHost { rc, ctx };
    let result = reconcile::pass(&mut rt, &mut host, &mut admins, rc, &uid, previous).await;
    state.admins = Some(admins);
    ctx.clusters.lock().await.insert(uid, state);
    let outcome = result.map_err(|e| match e {
        PassError::Observe(e) | PassError::Step(e) => Error::Member(e),
        PassError::Store(e) => match e.downcast::<kube::Error>() {
            Ok(e) => Error::Kube(e),
            Err(e) => e.downcast::<Error>().unwrap_or_else(Error::Member),
        },
        PassError::NotLeading => Error::NotLeader,
    })?;

    // After the pass, from the volumes it listed: no request while every
    // volume has the spec's size. Paused: nothing is patched.
    if !rc.spec.paused && ctx.leading() {
        grow_volumes(rc, ctx, &rt, &outcome.status).await?;
    }

    let members = &outcome.status.members;
    let label = ClusterLabel {
        namespace: rc.namespace().unwrap_or_default(),
        name,
    };
    let count = |role| members.iter().filter(|m| m.role == role).count() as i64;
    ctx.metrics
        .members
        .get_or_create(&label)
        .set(members.len() as i64);
    ctx.metrics
        .voters
        .get_or_create(&label)
        .set(count(crate::crd::MemberRole::Voter));
    ctx.metrics
        .learners
        .get_or_create(&label)
        .set(count(crate::crd::MemberRole::Learner));
    Ok(Action::requeue(if outcome.busy {
        BUSY_REQUEUE
    } else {
        IDLE_REQUEUE
    }))
}

/// Grows the members' volumes to `spec.storage.size` (`volumes.rs`): an
/// event per expanded PVC, a Warning event per refusal new to the
/// `VolumeExpansion` condition, and that condition written when it changes.
async fn grow_volumes(
    rc: &RaftCluster,
    ctx: &Context,
    rt: &KubeRuntime,
    status: &RaftClusterStatus,
) -> Result<(), Error> {
    let want = &rc.spec.storage.size;
    let growth = volumes::grow(&ctx.client, rt.claims_api(), &rt.claims(), want).await?;
    for (claim, from, class) in &growth.expanded {
        let note = format!("{claim}: {from} → {want} (StorageClass {class} allows expansion)");
        ctx.event(rc, EventType::Normal, "VolumeExpanding", note)
            .await;
    }
    let previous = status
        .conditions
        .iter()
        .find(|c| c.type_ == volumes::CONDITION);
    let now = jiff::Timestamp::now().to_string();
    let Some(next) = growth.condition(want, previous, &now) else {
        return Ok(());
    };
    if previous == Some(&next) {
        return Ok(());
    }
    // Each refusal is told once: while the condition says it, no event.
    let told = previous.map_or("", |c| c.message.as_str());
    for p in growth.problems(want) {
        if !told.contains(&p.sentence) {
            ctx.event(rc, EventType::Warning, p.event, p.sentence).await;
        }
    }
    let mut status = status.clone();
    status.conditions.retain(|c| c.type_ != volumes::CONDITION);
    status.conditions.push(next);
    apply_status(rc, ctx, &status).await?;
    Ok(())
}

/// The pass's host on Kubernetes: status in the status subresource, steps,
/// waits and failures as events, and steps only while the Lease is held.
struct KubeHost<'a> {
    rc: &'a RaftCluster,
    ctx: &'a Context,
}

impl Host for KubeHost<'_> {
    async fn save_status(
        &mut self,
        status: &RaftClusterStatus,
        _: &Observed,
    ) -> anyhow::Result<()> {
        Ok(apply_status(self.rc, self.ctx, status).await?)
    }

    async fn step_done(&mut self, step: &Step, done: &str) {
        let reason = reason(step);
        self.ctx
            .event(self.rc, EventType::Normal, reason, done.into())
            .await;
    }

    async fn step_failed(&mut self, step: &Step, error: &anyhow::Error) {
        let note = format!("{step:?}: {error:#}");
        self.ctx
            .event(self.rc, EventType::Warning, "StepFailed", note)
            .await;
    }

    async fn waiting(&mut self, why: &str, blocked: bool) {
        let (type_, reason) = match blocked {
            true => (EventType::Warning, "Blocked"),
            false => (EventType::Normal, "Waiting"),
        };
        self.ctx.event(self.rc, type_, reason, why.into()).await;
    }

    fn may_act(&self) -> bool {
        self.ctx.leading()
    }
}

/// Before the RaftCluster goes: every volume of this cluster, retired ones
/// included, is deleted or retired per `whenDeleted`. Pods and Services go
/// with their owner.
async fn cleanup(rc: &RaftCluster, ctx: &Context) -> Result<Action, Error> {
    let policy = rc.spec.storage.retention_policy.when_deleted;
    release_volumes(&rc.object_ref(&()), policy, ctx).await?;
    // Done is the finalizer's removal, a write too.
    ctx.still_leading()?;
    forget(rc.meta(), ctx).await;
    Ok(Action::await_change())
}

/// Deletes or retires the volumes of the cluster `reference` names.
async fn release_volumes(
    reference: &ObjectReference,
    policy: Retention,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = reference.namespace.clone().unwrap_or_default();
    let cluster = reference.name.clone().unwrap_or_default();
    let uid = reference.uid.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut names = Vec::new();
    for claim in cluster_volumes(&claims, &cluster, &uid).await? {
        let name = claim.name_any();
        ctx.still_leading()?;
        match policy {
            Retention::Delete => delete_gone(&claims, &name).await?,
            Retention::Retain if claim.labels().contains_key(RETIRED_LABEL) => continue,
            Retention::Retain => retire(&claims, &name).await?,
        }
        names.push(name);
    }
    if !names.is_empty() {
        let (reason, verb) = match policy {
            Retention::Delete => ("VolumesDeleted", "deleted"),
            Retention::Retain => ("VolumesRetained", "retained (never reused)"),
        };
        let note = format!("{verb}: {}", names.join(", "));
        ctx.publish(reference, EventType::Normal, reason, note)
            .await;
    }
    Ok(())
}

/// Drops what the controller kept about a deleted cluster.
async fn forget(meta: &ObjectMeta, ctx: &Context) {
    let uid = meta.uid.clone().unwrap_or_default();
    ctx.clusters.lock().await.remove(&uid);
    ctx.failures.lock().expect("failures lock").remove(&uid);
    let label = ClusterLabel {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    };
    for family in [
        &ctx.metrics.members,
        &ctx.metrics.voters,
        &ctx.metrics.learners,
    ] {
        family.remove(&label);
    }
}

/// An unreadable RaftCluster that is being deleted: its spec (and so its
/// retention policy) is unknown, so its volumes are retired, the safe choice,
/// and then our finalizer is removed so the deletion can finish.
async fn release_unreadable(
    obj: &DeserializeGuard<RaftCluster>,
    ctx: &Context,
) -> Result<Action, Error> {
    let meta = obj.meta();
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    release_volumes(&obj.object_ref(&()), Retention::Retain, ctx).await?;
    let api: Api<DeserializeGuard<RaftCluster>> = Api::namespaced(
        ctx.client.clone(),
        &meta.namespace.clone().unwrap_or_default(),
    );
    // The resourceVersion makes this a compare-and-set: a finalizer added
    // meanwhile by someone else fails it (and the next pass retries).
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    ctx.still_leading()?;
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    forget(meta, ctx).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = truncate(note, MAX_NOTE);
        assert!(cut.len() <= MAX_NOTE && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(truncate("short".into(), MAX_NOTE), "short");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 9, 10, 40].map(|n| backoff(n).as_secs()).to_vec();
        assert_eq!(secs, [1, 2, 4, 256, 300, 300]);
    }
}
