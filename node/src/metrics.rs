//! Prometheus metrics of a member and the HTTP endpoints that serve them:
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (storage is open
//! and the raft loop runs; never requires a quorum, so a cluster can start).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
use raftlane_tls::limits::{Gate, Held};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLane {
    pub peer: u64,
    pub lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Dropped {
    pub peer: u64,
    pub lane: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendError {
    pub peer: u64,
    pub lane: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Port {
    pub port: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

/// Every metric a member exports. Cheap to clone: families share their storage.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Raft messages handed to a peer's stream or unary call.
    pub sent: Family<PeerLane, Counter>,
    /// Raft messages dropped before reaching a peer, by reason.
    pub dropped: Family<Dropped, Counter>,
    /// Failed sends by gRPC status code.
    pub send_errors: Family<SendError, Counter>,
    /// `SendStream` calls opened.
    pub stream_opens: Family<PeerLane, Counter>,
    /// Times a peer answered UNIMPLEMENTED to `SendStream` and unary `Send` took over.
    pub unary_fallbacks: Family<PeerLane, Counter>,
    /// Time a message waited in its lane before it was handed to the network.
    pub send_wait_seconds: Histogram,
    /// Reports posted to the raft loop (unreachable, snapshot_finish, snapshot_failure).
    pub reports: Family<Kind, Counter>,
    /// Reports lost because the raft loop's report channel was full.
    pub reports_lost: Counter,
    /// Inbound raft messages accepted for the raft loop.
    pub received: Counter,
    /// Inbound envelopes or messages refused, by reason.
    pub rejected: Family<Kind, Counter>,
    /// Inbound messages dropped because the raft inbox was full.
    pub inbox_dropped: Counter,
    pub snapshot_bytes_sent: Counter,
    pub snapshot_bytes_received: Counter,
    pub term: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub leader_id: Gauge,
    /// Client proposals by outcome (ok, error).
    pub proposals: Family<Kind, Counter>,
    /// Time from proposal to apply, seconds.
    pub proposal_seconds: Histogram,
    /// Snapshots taken locally.
    pub snapshots_taken: Counter,
    /// Connections refused by TLS (handshake failed, identity not admitted), by port.
    pub tls_refused: Family<Port, Counter>,
    /// Changed TLS files that could not be used (the previous ones stayed).
    pub tls_reload_failures: Counter,
    /// New TLS material taken into use without a restart.
    pub tls_reloads: Counter,
    /// Admin calls refused to a certificate that may not make them, by call.
    pub admin_denied: Family<Call, Counter>,
    /// Connections open now, by port.
    pub port_connections: Family<Port, Gauge>,
    /// Connections or streams a port's limits turned away, by port and limit.
    pub port_refused: Family<Refusal, Counter>,
    /// Bytes of unfinished messages held against a port's budget.
    pub port_buffered_bytes: Family<Port, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub port: &'static str,
    /// `connections`, `handshakes`, `idle` (closed), `budget` (stream ended).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    pub call: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("raftlane");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            sent: Family::default(),
            dropped: Family::default(),
            send_errors: Family::default(),
            stream_opens: Family::default(),
            unary_fallbacks: Family::default(),
            send_wait_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            reports: Family::default(),
            reports_lost: Counter::default(),
            received: Counter::default(),
            rejected: Family::default(),
            inbox_dropped: Counter::default(),
            snapshot_bytes_sent: Counter::default(),
            snapshot_bytes_received: Counter::default(),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            leader_id: Gauge::default(),
            proposals: Family::default(),
            proposal_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            snapshots_taken: Counter::default(),
            tls_refused: Family::default(),
            tls_reload_failures: Counter::default(),
            tls_reloads: Counter::default(),
            admin_denied: Family::default(),
            port_connections: Family::default(),
            port_refused: Family::default(),
            port_buffered_bytes: Family::default(),
        };
        r.register(
            "port_connections",
            "Connections open, by port",
            m.port_connections.clone(),
        );
        r.register(
            "port_refused",
            "Connections refused (connections, handshakes limits), closed idle, or streams ended over the byte budget (budget), by port",
            m.port_refused.clone(),
        );
        r.register(
            "port_buffered_bytes",
            "Bytes of unfinished request messages held against the port's budget",
            m.port_buffered_bytes.clone(),
        );
        r.register(
            "admin_denied",
            "Admin calls refused: the caller's certificate may not make them",
            m.admin_denied.clone(),
        );
        r.register(
            "tls_refused_connections",
            "Connections refused by TLS: failed handshakes and identities not admitted",
            m.tls_refused.clone(),
        );
        r.register(
            "tls_reload_failures",
            "Changed TLS files that could not be used",
            m.tls_reload_failures.clone(),
        );
        r.register(
            "tls_reloads",
            "New TLS material taken into use without a restart",
            m.tls_reloads.clone(),
        );
        r.register(
            "transport_sent_messages",
            "Raft messages sent to a peer",
            m.sent.clone(),
        );
        r.register(
            "transport_dropped_messages",
            "Raft messages dropped before reaching a peer",
            m.dropped.clone(),
        );
        r.register(
            "transport_send_errors",
            "Failed peer sends by gRPC code",
            m.send_errors.clone(),
        );
        r.register(
            "transport_stream_opens",
            "SendStream calls opened",
            m.stream_opens.clone(),
        );
        r.register(
            "transport_unary_fallbacks",
            "Peers found without SendStream, served by unary Send",
            m.unary_fallbacks.clone(),
        );
        r.register(
            "transport_send_wait_seconds",
            "Time a message waited in its lane",
            m.send_wait_seconds.clone(),
        );
        r.register(
            "transport_reports",
            "Reports posted to the raft loop",
            m.reports.clone(),
        );
        r.register(
            "transport_reports_lost",
            "Reports lost on a full report channel (raft retries a heartbeat later)",
            m.reports_lost.clone(),
        );
        r.register(
            "transport_received_messages",
            "Inbound raft messages accepted",
            m.received.clone(),
        );
        r.register(
            "transport_rejected",
            "Inbound envelopes or messages refused",
            m.rejected.clone(),
        );
        r.register(
            "transport_inbox_dropped_messages",
            "Inbound messages dropped on a full raft inbox",
            m.inbox_dropped.clone(),
        );
        r.register(
            "snapshot_sent_bytes",
            "Snapshot payload bytes sent",
            m.snapshot_bytes_sent.clone(),
        );
        r.register(
            "snapshot_received_bytes",
            "Snapshot payload bytes received",
            m.snapshot_bytes_received.clone(),
        );
        r.register("raft_term", "Current raft term", m.term.clone());
        r.register(
            "raft_commit_index",
            "Highest committed log index",
            m.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Highest applied log index",
            m.applied_index.clone(),
        );
        r.register(
            "raft_leader_id",
            "Leader known to this member (0: none)",
            m.leader_id.clone(),
        );
        r.register(
            "proposals",
            "Client proposals by outcome",
            m.proposals.clone(),
        );
        r.register(
            "proposal_duration_seconds",
            "Time from proposal to apply",
            m.proposal_seconds.clone(),
        );
        r.register(
            "snapshots_taken",
            "Snapshots taken locally",
            m.snapshots_taken.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

/// The metrics port's connections, within its gate's limits.
struct Gated {
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
}

impl axum::serve::Listener for Gated {
    type Io = Held<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.gate.accept(&self.listener).await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Serves the metrics port until the process ends, within `gate`'s limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
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
    axum::serve(Gated { listener, gate }, app).await
}
