//! What each of a member's four ports holds at once, and the servers built
//! with it. No single client may run a member's memory or descriptors up:
//!
//! - connections, TLS handshakes in progress, handshake time and idle time
//!   per port ([`raftlane_tls::limits`]);
//! - HTTP/2 streams per connection, the reset-flood limit (a GOAWAY once a
//!   connection caused [`MAX_ERROR_RESETS`] stream errors), a maximum
//!   connection age (so a rotated certificate is in use on every connection
//!   within it);
//! - the largest message, and a byte budget for unfinished messages shared by
//!   every stream of the port ([`budget`]); the count of fields of a message
//!   is checked before it is decoded (`raftlane_proto::codec`).
//!
//! Defaults, and what they were measured against, are in the README's
//! "Limits" table.

pub mod budget;

use std::sync::Arc;
use std::time::Duration;

use raftlane_tls::limits::{Gate, PortCounters, PortLimits};
use tonic::transport::Server;

use crate::config::NodeConfig;
use crate::metrics::{Metrics, Port as PortLabel, Refusal};
use budget::Budget;

/// A member's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Peer,
    Client,
    Admin,
    Metrics,
}

/// Stream errors one connection may cause before it is sent a GOAWAY
/// (hyper's own default, 1024, is dropped by tonic unless set; CVE-2025-8671).
pub const MAX_ERROR_RESETS: usize = 100;
/// After `--max-connection-age-ms`, how long open streams may finish.
const AGE_GRACE: Duration = Duration::from_secs(30);
/// Largest request on the admin port (peer-table updates, membership calls).
const ADMIN_MAX_MESSAGE: usize = 1 << 20;
/// The admin port's budget and streams: the operator, an admin, backup Jobs.
const ADMIN_BUDGET: usize = 8 << 20;
const ADMIN_MAX_STREAMS: u32 = 16;
/// Largest request on the client port: a key and its value.
pub const CLIENT_MAX_MESSAGE: usize = 4 << 20;
/// Streams one peer connection may hold: 4 lanes, a snapshot, and the
/// client writes a follower forwards.
const PEER_MAX_STREAMS: u32 = 1024;
/// HTTP/2 windows of the peer port. A lane that stops being read can hold at
/// most its stream window; the connection window is far larger than all lanes
/// of a peer together, so a stalled lane never starves the others.
const PEER_STREAM_WINDOW: u32 = 1 << 20;
const PEER_CONNECTION_WINDOW: u32 = 64 << 20;
/// HTTP/2 pings on the peer port: a dead peer's connection is found in about
/// their sum (the client, admin and metrics ports rely on the idle timeout).
const PEER_PING_EVERY: Duration = Duration::from_secs(10);
const PEER_PING_TIMEOUT: Duration = Duration::from_secs(3);

impl Port {
    pub fn name(self) -> &'static str {
        match self {
            Port::Peer => "peer",
            Port::Client => "client",
            Port::Admin => "admin",
            Port::Metrics => "metrics",
        }
    }

    /// This port's connection limits under `cfg`.
    pub fn limits(self, cfg: &NodeConfig) -> PortLimits {
        PortLimits {
            max_connections: match self {
                Port::Peer => cfg.peer_max_connections,
                Port::Client => cfg.client_max_connections,
                Port::Admin => cfg.admin_max_connections,
                Port::Metrics => cfg.metrics_max_connections,
            } as usize,
            max_handshakes: cfg.max_handshakes as usize,
            handshake_timeout: NodeConfig::ms(cfg.handshake_timeout_ms),
            idle_timeout: NodeConfig::ms(cfg.idle_timeout_ms),
        }
    }

    /// The gate of this port, its counters exported by `m`.
    pub fn gate(self, cfg: &NodeConfig, m: &Metrics) -> Arc<Gate> {
        let port = self.name();
        let refused = |reason| {
            m.port_refused
                .get_or_create(&Refusal { port, reason })
                .clone()
        };
        Gate::new(
            port,
            self.limits(cfg),
            PortCounters {
                open: m
                    .port_connections
                    .get_or_create(&PortLabel { port })
                    .clone(),
                refused_connections: refused("connections"),
                refused_handshakes: refused("handshakes"),
                idle_closed: refused("idle"),
            },
        )
    }

    /// The byte budget of this port's unfinished messages.
    pub fn budget(self, cfg: &NodeConfig, m: &Metrics) -> Budget {
        let port = self.name();
        let total = match self {
            Port::Peer => cfg.peer_budget_bytes as usize,
            Port::Client => cfg.client_budget_bytes as usize,
            Port::Admin | Port::Metrics => ADMIN_BUDGET,
        };
        Budget::new(
            total,
            m.port_buffered_bytes
                .get_or_create(&PortLabel { port })
                .clone(),
            m.port_refused
                .get_or_create(&Refusal {
                    port,
                    reason: "budget",
                })
                .clone(),
        )
    }

    /// The largest message this port accepts.
    pub fn max_message(self) -> usize {
        match self {
            Port::Peer => crate::transport::MAX_MESSAGE_BYTES,
            Port::Client => CLIENT_MAX_MESSAGE,
            Port::Admin | Port::Metrics => ADMIN_MAX_MESSAGE,
        }
    }

    /// The gRPC server of this port (not the metrics port, plain HTTP).
    pub fn server(self, cfg: &NodeConfig) -> Server {
        let server = Server::builder()
            .http2_max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
            .max_connection_age(NodeConfig::ms(cfg.max_connection_age_ms))
            .max_connection_age_grace(AGE_GRACE);
        match self {
            Port::Peer => server
                .max_concurrent_streams(Some(PEER_MAX_STREAMS))
                .initial_stream_window_size(PEER_STREAM_WINDOW)
                .initial_connection_window_size(PEER_CONNECTION_WINDOW)
                .http2_keepalive_interval(Some(PEER_PING_EVERY))
                .http2_keepalive_timeout(Some(PEER_PING_TIMEOUT)),
            Port::Client => server.max_concurrent_streams(Some(cfg.client_max_streams)),
            Port::Admin | Port::Metrics => server.max_concurrent_streams(Some(ADMIN_MAX_STREAMS)),
        }
    }
}
