//! Real raft-node processes standing in for member pods: each on its own
//! loopback address (its "pod IP") with the pod's fixed ports, so the
//! controller's admin calls and pushed addresses reach real members.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_operator::certs::{Ca, Leaf, LEAF_VALIDITY};
use raft_operator::k8s::resources::{ADMIN_PORT, CLIENT_PORT, METRICS_PORT, PEER_PORT};
use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{StatusRequest, StatusResponse};
use raftlane_tls::files::Material;
use raftlane_tls::{Dialer, Expect, TlsSource};

pub struct Members {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    cluster_id: String,
    /// This test's own loopback /16, so tests running at once never collide.
    net: (u8, u8),
    children: BTreeMap<u64, Child>,
    /// The cluster's CA: the tests store it as the cluster's CA Secret, so the
    /// operator and these members trust each other.
    pub ca: Ca,
    /// An admin's dialer, for the tests' own status reads.
    dialer: Dialer,
}

impl Drop for Members {
    fn drop(&mut self) {
        for c in self.children.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// raft-node, built next to this test binary by `cargo build --workspace`.
fn node_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("raft-node");
    assert!(
        bin.exists(),
        "{} missing: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    bin
}

impl Members {
    pub fn new(cluster_id: &str) -> Members {
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
        let ca = Ca::generate(cluster_id, 1).unwrap();
        let admin = ca
            .authority()
            .unwrap()
            .issue(&Leaf::Admin.identity(cluster_id), &[], LEAF_VALIDITY)
            .unwrap();
        let material = Material::from_pem(
            Some(admin.cert_pem.as_bytes()),
            Some(admin.key_pem.as_bytes()),
            ca.cert_pem.as_bytes(),
        )
        .unwrap();
        Members {
            tmp: tempfile::tempdir().unwrap(),
            bin: node_bin(),
            cluster_id: cluster_id.into(),
            net: (10 + (seed % 200) as u8, ((seed >> 8) % 250) as u8),
            children: BTreeMap::new(),
            ca,
            dialer: Dialer::Tls(TlsSource::fixed(material)),
        }
    }

    /// An admin's dialer of this cluster.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Writes member `id`'s certificate, key and the CA under the temp dir,
    /// as its Secret volume would hold them: (cert, key, ca) paths.
    pub fn tls_files(&self, id: u64) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.tmp.path().join(format!("tls-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let issued = self
            .ca
            .authority()
            .unwrap()
            .issue(
                &Leaf::Member(id).identity(&self.cluster_id),
                &["localhost".into()],
                LEAF_VALIDITY,
            )
            .unwrap();
        let paths = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
        std::fs::write(&paths.0, issued.cert_pem).unwrap();
        std::fs::write(&paths.1, issued.key_pem).unwrap();
        std::fs::write(&paths.2, &self.ca.cert_pem).unwrap();
        paths
    }

    /// The raft-node binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The address of member `id`'s `n`th pod (a new pod gets a new IP).
    pub fn ip(&self, id: u64, n: u8) -> String {
        format!("127.{}.{}.{}", self.net.0, self.net.1, id as u8 + 10 * n)
    }

    pub fn peer(&self, ip: &str) -> String {
        format!("{ip}:{PEER_PORT}")
    }

    /// Starts member `id` at `ip` on its data dir, as its pod would.
    pub fn start(&mut self, id: u64, ip: &str, initial_voters: &[u64], peers: &[(u64, String)]) {
        let data = self.tmp.path().join(format!("member-{id}"));
        let log =
            std::fs::File::create(self.tmp.path().join(format!("member-{id}-{ip}.log"))).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--id", &id.to_string(), "--cluster-id", &self.cluster_id])
            .arg("--data-dir")
            .arg(&data)
            .args(["--peer-addr", &format!("{ip}:{PEER_PORT}")])
            .args(["--client-addr", &format!("{ip}:{CLIENT_PORT}")])
            .args(["--admin-addr", &format!("{ip}:{ADMIN_PORT}")])
            .args(["--metrics-addr", &format!("{ip}:{METRICS_PORT}")])
            .args(["--tick-ms", "50"]);
        let (cert, key, ca) = self.tls_files(id);
        cmd.arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--tls-ca")
            .arg(ca);
        if !initial_voters.is_empty() {
            let v: Vec<String> = initial_voters.iter().map(u64::to_string).collect();
            cmd.args(["--initial-voters", &v.join(",")]);
        }
        if !peers.is_empty() {
            let p: Vec<String> = peers.iter().map(|(i, a)| format!("{i}={a}")).collect();
            cmd.args(["--peers", &p.join(",")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        if let Some(mut old) = self.children.insert(id, child) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// Kills member `id` and deletes its data, as when its volume is lost.
    pub fn lose(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(self.tmp.path().join(format!("member-{id}")));
    }

    pub async fn status(&self, ip: &str) -> Option<StatusResponse> {
        let endpoint = self
            .dialer
            .endpoint(&format!("{ip}:{ADMIN_PORT}"))
            .ok()?
            .timeout(Duration::from_secs(2));
        let ch = self
            .dialer
            .connect(endpoint, Expect::AnyMember)
            .await
            .ok()?;
        let mut admin = NodeAdminClient::new(ch);
        Some(admin.status(StatusRequest {}).await.ok()?.into_inner())
    }

    /// Waits until member `id` (at its first address) has applied exactly
    /// `voters`: a pass proposes a membership change, raft applies it after.
    pub async fn wait_voters(&self, id: u64, voters: &[u64]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.status(&self.ip(id, 0)).await.map(|s| s.voters);
            if now.as_deref() == Some(voters) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {id}'s voters {now:?}, not {voters:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the member at `ip` sees a leader; returns that leader's id.
    pub async fn wait_leader(&self, ip: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.status(ip).await.filter(|s| s.leader_id != 0) {
                return s.leader_id;
            }
            assert!(
                Instant::now() < deadline,
                "no leader seen at {ip} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
