//! Generated gRPC API of raftlane: the peer transport, node admin and key-value services.

pub mod codec;

/// Peer transport: `Send`, `SendStream`, `SendSnapshot`.
pub mod transport {
    tonic::include_proto!("raftlane.transport.v1");
}

/// Node administration: status, peer table, membership.
pub mod admin {
    tonic::include_proto!("raftlane.admin.v1");
}

/// Client key-value API and the log command format.
pub mod kv {
    tonic::include_proto!("raftlane.kv.v1");
}
