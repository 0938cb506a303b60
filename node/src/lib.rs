//! raft-node: a replicated key-value member of a raftlane cluster, built on
//! raft-rs, with a gRPC peer transport behind the [`transport::Transport`] seam.

pub mod client;
pub mod config;
pub mod consensus;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod ports;
pub mod service;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod transport;
