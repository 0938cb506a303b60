//! The controller's Prometheus metrics and its HTTP endpoints: `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (the CRD is established and
//! the controller runs; a standby replica waiting for the lease is ready too,
//! so a rollout is not held up by leader election).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    pub reason: &'static str,
}

/// Counters and gauges of the controller; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub reconciles: Counter,
    pub failures: Family<FailureLabel, Counter>,
    pub duration: Histogram,
    pub members: Family<ClusterLabel, Gauge>,
    pub voters: Family<ClusterLabel, Gauge>,
    pub learners: Family<ClusterLabel, Gauge>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let (reconciles, failures, members, voters, learners, leader) = Default::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let mut r = Registry::with_prefix("raft_operator");
        r.register(
            "reconciles",
            "Reconcile passes",
            Counter::clone(&reconciles),
        );
        r.register(
            "reconcile_failures",
            "Reconcile passes that failed, by reason",
            Family::clone(&failures),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass",
            duration.clone(),
        );
        r.register(
            "members",
            "Members in the raft membership",
            Family::clone(&members),
        );
        r.register("voters", "Voting members", Family::clone(&voters));
        r.register("learners", "Learners catching up", Family::clone(&learners));
        r.register(
            "is_leader",
            "1 while this replica holds the leader-election lease",
            Gauge::clone(&leader),
        );
        Metrics {
            registry: Arc::new(Mutex::new(r)),
            reconciles,
            failures,
            duration,
            members,
            voters,
            learners,
            leader,
        }
    }
}

impl Metrics {
    pub fn observe_pass(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().expect("metrics lock"))
            .expect("writing to a String");
        out
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

/// Serves the metrics port until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if s.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }),
        )
        .with_state(HttpState { metrics, ready });
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_rendered_with_its_labels() {
        let m = Metrics::default();
        m.observe_pass(Duration::from_millis(3));
        m.failures
            .get_or_create(&FailureLabel { reason: "member" })
            .inc();
        let label = ClusterLabel {
            namespace: "raft".into(),
            name: "demo".into(),
        };
        m.voters.get_or_create(&label).set(3);
        let text = m.render();
        for want in [
            "raft_operator_reconciles_total 1",
            "raft_operator_reconcile_failures_total{reason=\"member\"} 1",
            "raft_operator_reconcile_duration_seconds_count 1",
            "raft_operator_voters{namespace=\"raft\",name=\"demo\"} 3",
            "raft_operator_is_leader 0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
