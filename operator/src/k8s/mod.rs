//! raft-operator on Kubernetes (`raft-operator run`): waits for the CRD to be
//! established, takes the leader-election Lease, then runs the controllers
//! (RaftClusters, and RaftClusterBackups in `backups.rs`)
//! until SIGTERM (or until the Lease is lost, when it exits so a restart
//! campaigns again).

pub mod backups;
pub mod controller;
pub mod lease;
pub mod metrics;
pub mod resources;
pub mod runtime;
pub mod tls;
pub mod uninstall_check;
pub mod volumes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::DeserializeGuard;
use kube::runtime::events::Reporter;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backup::RaftClusterBackup;
use crate::crd::RaftCluster;
use controller::{error_policy, reconcile, Context};
use lease::LeaseLock;
use metrics::Metrics;

/// Lease duration: a crashed leader is replaced within this long.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that could not renew for this long stops reconciling, well before
/// a standby (counting the full duration on its own clock) takes over.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the holder renews (5 s): `LeaseLock::renew_every` of the Lease.
const RENEW_EVERY: Duration = lease::renew_interval(LEASE_DURATION);
/// Pause before retrying a failed renewal: short, so the renew margin holds
/// more than one try.
const RENEW_RETRY: Duration = Duration::from_secs(1);
/// The renew margin (5 s), the shorter of two windows: from when a renewal
/// falls due (`RENEW_EVERY` after the last success) to `RENEW_DEADLINE`, all
/// the time it has to get through; and from `RENEW_DEADLINE`, when this
/// replica stops, to `LEASE_DURATION`, the earliest a standby may take over.
const RENEW_MARGIN: Duration = shorter(
    RENEW_DEADLINE.saturating_sub(RENEW_EVERY),
    LEASE_DURATION.saturating_sub(RENEW_DEADLINE),
);
/// Bound on each step of every API request but a watch (connecting, sending,
/// waiting for the answer), well under [`RENEW_MARGIN`]: a renewal (a read,
/// then a write) to an API server that stopped answering fails in time to be
/// retried before the deadline, and a write sent just before the Lease was
/// lost is given up before a standby may act.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
// A renewal's read and write both fit in the margin, or the build fails.
const _: () = assert!(2 * REQUEST_TIMEOUT.as_nanos() < RENEW_MARGIN.as_nanos());
const CRD_NAME: &str = "raftclusters.raftlane.io";

const fn shorter(a: Duration, b: Duration) -> Duration {
    if a.as_nanos() < b.as_nanos() {
        a
    } else {
        b
    }
}

/// The client of every request but watches (gets, lists, writes, events,
/// Lease renewals): connecting, sending and waiting for the answer are each
/// bounded by `timeout` ([`REQUEST_TIMEOUT`] in `run`). kube's own retry of
/// 429/503/504 answers is off: it may wait out a long `Retry-After`, and a
/// failed request is retried anyway, by the next pass or renewal. Watches
/// must not use this client: a watch is a long poll, silent for minutes.
pub fn request_client(mut config: kube::Config, timeout: Duration) -> kube::Result<Client> {
    config.connect_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    // Counted from when the request was sent, not from when its pooled
    // connection went idle.
    config.reset_reader_on_write = true;
    config.default_retry = false;
    Client::try_from(config)
}

/// Settings of `raft-operator run`.
pub struct RunOptions {
    /// Namespace to watch; None watches all namespaces.
    pub namespace: Option<String>,
    pub metrics_addr: SocketAddr,
    pub leader_election: bool,
    /// Namespaces whose clusters get a per-cluster NetworkPolicy.
    pub network_policies: Option<std::collections::BTreeSet<String>>,
    pub lease_name: String,
    /// Where the Lease lives (the operator's own namespace).
    pub lease_namespace: String,
    /// This replica's name in the Lease and in events (the pod name).
    pub identity: String,
}

/// Turns true on the first SIGTERM or Ctrl-C; the handler is installed once,
/// at startup, so no signal is missed between waits.
fn shutdown_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn fired(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|on| *on).await;
}

/// Waits until the API server serves RaftClusters, reporting while it waits.
/// A watch that fails (the API server restarting, its certificate not yet
/// trusted after a node restart) is tried again after a back-off: the
/// operator waits for its API server, it never exits over it.
async fn wait_for_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut failures = 0;
    loop {
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            CRD_NAME,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(Duration::from_secs(10), established).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                failures += 1;
                let pause = controller::backoff(failures).min(MAX_WATCH_RETRY);
                tracing::warn!(error = %e, retry_in = ?pause, "watching CRD {CRD_NAME} failed");
                tokio::time::sleep(pause).await;
            }
            Err(_) => tracing::warn!(
                "waiting for CRD {CRD_NAME} to be established (kubectl apply -f crds/raftcluster.yaml)"
            ),
        }
    }
}

/// The longest pause between two tries of a failed watch.
const MAX_WATCH_RETRY: Duration = Duration::from_secs(30);

/// One bounded try: an API server that does not answer in time counts as a
/// failed renewal.
async fn attempt(lock: &LeaseLock) -> anyhow::Result<bool> {
    tokio::time::timeout(lock.renew_every(), lock.try_acquire())
        .await
        .context("the API server did not answer in time")?
        .context("lease")
}

/// Campaigns until this replica holds the Lease, then renews it in a task
/// that sets `lost` once no renewal succeeded for `RENEW_DEADLINE`.
async fn lead(lock: LeaseLock, lost: watch::Sender<bool>) -> (Arc<LeaseLock>, JoinHandle<()>) {
    // Standing by is said once; every later try at the debug level.
    let mut said = false;
    loop {
        match attempt(&lock).await {
            Ok(true) => break,
            Ok(false) if !said => {
                tracing::info!("another replica leads; standing by");
                said = true;
            }
            Ok(false) => tracing::debug!("another replica leads; standing by"),
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(lock.renew_every()).await;
    }
    let lock = Arc::new(lock);
    let renewer = lock.clone();
    let task = tokio::spawn(async move {
        let mut last_ok = Instant::now();
        let mut pause = renewer.renew_every();
        loop {
            // The deadline is a timer of its own: a renewal still waiting on
            // the API server when it passes does not delay giving up.
            let wait = pause;
            let renew = async {
                tokio::time::sleep(wait).await;
                let started = Instant::now();
                (started, attempt(&renewer).await)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(last_ok + RENEW_DEADLINE) => break,
                (started, r) = renew => match r {
                    Ok(true) => {
                        last_ok = started;
                        pause = renewer.renew_every();
                    }
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the lease failed; retrying");
                        pause = RENEW_RETRY;
                    }
                },
            }
        }
        tracing::error!("leadership lost: no renewal of the lease succeeded in time");
        let _ = lost.send(true);
    });
    (lock, task)
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let stop = shutdown_signal()?;
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    // Watches are long polls and keep kube's defaults; every other request,
    // Lease renewals included, goes through the bounded client.
    let watches = Client::try_from(config.clone()).context("the Kubernetes client")?;
    let client = request_client(config, REQUEST_TIMEOUT).context("the Kubernetes client")?;
    let metrics = Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {}", opts.metrics_addr))?;
    tokio::spawn(metrics::serve(listener, metrics.clone(), ready.clone()));

    tokio::select! {
        _ = wait_for_crd(&watches) => {}
        _ = fired(stop.clone()) => return Ok(()),
    }
    ready.store(true, Ordering::Release);

    let (lost_tx, mut lost) = watch::channel(false);
    let lock = if opts.leader_election {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
        let lock = LeaseLock::new(leases, &opts.lease_name, &opts.identity, LEASE_DURATION);
        tokio::select! {
            l = lead(lock, lost_tx) => Some(l),
            _ = fired(stop.clone()) => return Ok(()),
        }
    } else {
        None
    };
    metrics.leader.set(1);
    tracing::info!(
        namespace = opts.namespace.as_deref().unwrap_or("(all)"),
        "controller starting"
    );

    let api = |client: &Client| -> (
        Api<DeserializeGuard<RaftCluster>>,
        Api<Pod>,
        Api<PersistentVolumeClaim>,
        Api<Service>,
    ) {
        match &opts.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        }
    };
    let (clusters, pods, claims, services) = api(&watches);
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=raft-operator");
    let reporter = Reporter {
        controller: "raft-operator".into(),
        instance: Some(opts.identity.clone()),
    };
    let ctx = Arc::new({
        let ctx = Context::new(client.clone(), reporter, metrics.clone());
        let scope = opts.network_policies.clone().unwrap_or_default();
        ctx.network_policies_in(controller::PolicyScope::Namespaces(scope))
            .leading_while(lost.clone())
    });
    let until = || {
        let (stop, lost) = (stop.clone(), lost.clone());
        async move {
            tokio::select! {
                _ = fired(stop) => {}
                _ = fired(lost) => {}
            }
        }
    };
    // RaftClusterBackups and their Jobs: a second controller on the same
    // context (Lease, request client, events), stopped with the first.
    let (backups, jobs): (Api<DeserializeGuard<RaftClusterBackup>>, Api<Job>) =
        match &opts.namespace {
            Some(ns) => (
                Api::namespaced(watches.clone(), ns),
                Api::namespaced(watches.clone(), ns),
            ),
            None => (Api::all(watches.clone()), Api::all(watches.clone())),
        };
    let clusters_done = Controller::new(clusters, watcher::Config::default())
        .owns(pods, owned.clone())
        .owns(claims, owned.clone())
        .owns(services, owned.clone())
        .graceful_shutdown_on(until())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        });
    let backups_done = Controller::new(backups, watcher::Config::default())
        .owns(jobs, owned)
        .graceful_shutdown_on(until())
        .run(backups::reconcile, backups::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "backup controller");
            }
        });
    futures::future::join(clusters_done, backups_done).await;
    metrics.leader.set(0);
    if *lost.borrow_and_update() {
        anyhow::bail!("lost the leader-election lease; exiting so a restart campaigns again");
    }
    if let Some((lock, renewer)) = lock {
        // Stopped first, so it cannot take the Lease back after the release.
        renewer.abort();
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "releasing the lease");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gives_up_well_inside_the_renew_margin() {
        assert_eq!(RENEW_EVERY, LEASE_DURATION / 3, "as LeaseLock::renew_every");
        assert_eq!(RENEW_MARGIN, Duration::from_secs(5));
        // A renewal is a read, then a write, each bounded.
        assert!(2 * REQUEST_TIMEOUT < RENEW_MARGIN, "{REQUEST_TIMEOUT:?}");
        // A try that hung, then the pause, leave time for another try.
        assert!(REQUEST_TIMEOUT + RENEW_RETRY < RENEW_MARGIN);
    }

    /// A watch failing as it did on a real cluster right after a node
    /// restart is tried again (after a back-off), not the end of the operator.
    #[tokio::test(start_paused = true)]
    async fn a_failed_crd_watch_is_retried_until_the_crd_is_served() {
        use http::{Request, Response};
        use kube::client::Body;

        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = tokio::spawn(async move {
            for _ in 0..2 {
                let (_, send) = handle.next_request().await.expect("a request");
                send.send_error(std::io::Error::other(
                    "invalid peer certificate: UnknownIssuer",
                ));
            }
            let (req, send) = handle.next_request().await.expect("a request");
            assert!(req.uri().path().ends_with("/customresourcedefinitions"));
            let crd = serde_json::json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinitionList",
                "metadata": {"resourceVersion": "1"},
                "items": [{
                    "metadata": {"name": CRD_NAME, "resourceVersion": "1"},
                    "spec": {
                        "group": "raftlane.io",
                        "names": {"kind": "RaftCluster", "plural": "raftclusters"},
                        "scope": "Namespaced",
                        "versions": [],
                    },
                    "status": {"conditions": [{"type": "Established", "status": "True"}]},
                }],
            });
            let body = Body::from(serde_json::to_vec(&crd).unwrap());
            send.send_response(Response::builder().body(body).unwrap());
        });
        let client = Client::new(svc, "default");
        tokio::time::timeout(Duration::from_secs(600), wait_for_crd(&client))
            .await
            .expect("the CRD seen established after two failed watches");
        api.await.unwrap();
    }
}
