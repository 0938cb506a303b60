//! Mutual TLS for every raftlane port.
//!
//! Trust is per cluster: each RaftCluster has its own CA, and every
//! certificate it signs names one [`Identity`] in a URI SAN
//! (`raftlane://<cluster>/member/<id>`, `/operator`, `/admin`, `/client/<name>`).
//! A member checks who is calling from that identity, not from strings the
//! caller puts in its requests, and checks whom it dialled the same way.
//!
//! - [`identity`]: the names and their URI form.
//! - [`issue`]: a cluster CA and the certificates it signs (rcgen).
//! - [`files`]: certificate, key and CA files, reloaded when they change.
//! - [`limits`]: what one port holds at once (connections, handshakes) and
//!   how long a connection may stay silent.
//! - [`server`]: TLS on accepted connections; the caller's identity reaches
//!   each request as a [`server::Caller`] extension.
//! - [`client`]: [`client::Dialer`], which makes gRPC channels that verify the
//!   server's identity, or plaintext ones behind an explicit choice.

pub mod client;
pub mod files;
pub mod identity;
pub mod issue;
pub mod limits;
pub mod server;

pub use client::{Dialer, Expect};
pub use files::{TlsFiles, TlsSource};
pub use identity::{Identity, Role};
pub use server::{Caller, ClientAuth, ServerTls};

/// The crypto provider every config here uses (ring: no C toolchain needed).
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
