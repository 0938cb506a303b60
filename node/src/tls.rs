//! This member's TLS: its certificate must name it, every port serves it, and
//! changed files are taken into use without a restart (peer streams are then
//! dialled again, so they too run on the new certificate).

use std::sync::Arc;
use std::time::Duration;

use raftlane_tls::server::Admit;
use raftlane_tls::{ClientAuth, Identity, ServerTls, TlsFiles, TlsSource};

use crate::config::NodeConfig;
use crate::metrics::{Metrics, Port as PortLabel};
use crate::ports::Port;
use crate::transport::PeerTable;

/// The TLS material of `cfg`, or none with `--insecure-plaintext`. Fails when
/// a file is unreadable or the certificate is not this member's.
pub fn open(cfg: &NodeConfig) -> anyhow::Result<Option<Arc<TlsSource>>> {
    let (Some(cert), Some(key), Some(ca)) = (&cfg.tls_cert, &cfg.tls_key, &cfg.tls_ca) else {
        return Ok(None);
    };
    let source = TlsSource::open(TlsFiles {
        cert: Some(cert.clone()),
        key: Some(key.clone()),
        ca: ca.clone(),
        expect: Some(Identity::member(&cfg.cluster_id, cfg.id)),
    })?;
    Ok(Some(source))
}

/// TLS of one port: the peer port admits only members, the admin port any
/// certificate of the cluster, the client port any but the backup Jobs' (and
/// clients without one under `--insecure-anonymous-clients`).
pub fn port(source: &Arc<TlsSource>, port: Port, cfg: &NodeConfig, m: &Metrics) -> Arc<ServerTls> {
    let (auth, admit) = match port {
        Port::Peer => (ClientAuth::Required, Admit::Members),
        Port::Client if cfg.insecure_anonymous_clients => (ClientAuth::Optional, Admit::Clients),
        Port::Client => (ClientAuth::Required, Admit::Clients),
        Port::Admin | Port::Metrics => (ClientAuth::Required, Admit::Cluster),
    };
    let port = port.name();
    ServerTls::new(
        source.clone(),
        auth,
        admit,
        m.tls_refused.get_or_create(&PortLabel { port }).clone(),
    )
}

/// Re-reads the files every `every`; new material re-dials every peer. A bad
/// file keeps the old material in use, logged and counted.
pub async fn watch(
    source: Arc<TlsSource>,
    every: Duration,
    metrics: Metrics,
    peers: Arc<dyn PeerTable>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match source.reload() {
            Ok(false) => {}
            Ok(true) => {
                metrics.tls_reloads.inc();
                tracing::info!("TLS files changed: the new certificate is in use");
                peers.redial_all();
            }
            Err(e) => {
                metrics.tls_reload_failures.inc();
                tracing::error!(error = %e, "TLS files changed but cannot be used; the previous certificate stays in use");
            }
        }
    }
}
