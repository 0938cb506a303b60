//! Test harness: real `raft-node` processes on distinct loopback addresses, each
//! with its own data dir and log file, killed with SIGKILL when the test ends.
//! Members run with mutual TLS (a CA of the test's own, a certificate per
//! member, an admin certificate for the harness's clients) unless the cluster's
//! extra flags say `--insecure-plaintext`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_node::client::KvClient;
use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{StatusRequest, StatusResponse, UpsertPeersRequest};
use raftlane_tls::issue::Authority;
use raftlane_tls::{Dialer, Expect, Identity, TlsFiles, TlsSource};
use tonic::transport::Channel;

/// Lifetime of the harness's certificates.
const CERT_VALIDITY: Duration = Duration::from_secs(86_400);

pub const TICK_MS: u64 = 50;
pub const ELECTION_TICKS: u64 = 10;
/// One election timeout.
pub const ELECTION: Duration = Duration::from_millis(TICK_MS * ELECTION_TICKS);

pub struct Member {
    pub id: u64,
    pub dir: PathBuf,
    pub ip: String,
    pub peer: String,
    pub client: String,
    pub admin: String,
    pub metrics: String,
    pub child: Option<Child>,
    pub restarts: u32,
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub cluster_id: String,
    pub members: BTreeMap<u64, Member>,
    /// Flags added to every member's command line.
    pub extra: Vec<String>,
    /// Where members reach a peer, when not at its own address (a proxy).
    pub reach: BTreeMap<u64, String>,
    /// The cluster's CA; none on plaintext.
    pub ca: Option<Authority>,
    net: (u8, u8),
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback /16 of this test's own, so tests running at once never collide.
fn pick_net() -> (u8, u8) {
    let seed = std::process::id() as u64
        ^ Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    (1 + (seed % 250) as u8, 1 + ((seed / 250) % 250) as u8)
}

impl Cluster {
    /// Starts `n` voters that bootstrap together.
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        let mut c = Cluster::prepare(n, extra);
        c.start_voters();
        c
    }

    /// Allocates `n` members without starting them.
    pub fn prepare(n: u64, extra: &[&str]) -> Cluster {
        let mut c = Cluster {
            tmp: tempfile::tempdir().unwrap(),
            cluster_id: format!("test-{}", std::process::id()),
            members: BTreeMap::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            reach: BTreeMap::new(),
            ca: None,
            net: pick_net(),
        };
        if !c.extra.iter().any(|a| a == "--insecure-plaintext") {
            let ca = Authority::generate(&c.cluster_id, 1, CERT_VALIDITY).unwrap();
            std::fs::create_dir_all(c.tls_dir()).unwrap();
            std::fs::write(c.tls_dir().join("ca.crt"), ca.cert_pem()).unwrap();
            let admin = Identity::admin(&c.cluster_id);
            c.ca = Some(ca);
            c.write_cert("admin", &admin);
        }
        for id in 1..=n {
            c.add_member(id);
        }
        c
    }

    /// Starts every prepared member as an initial voter.
    pub fn start_voters(&mut self) {
        let ids = self.all_ids();
        let voters: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        for id in ids {
            let advertise = self.reach.get(&id).cloned();
            let mut args = vec!["--initial-voters".to_string(), voters.join(",")];
            if let Some(a) = advertise {
                args.extend(["--advertise-addr".to_string(), a]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.spawn(id, &args);
        }
    }

    /// Allocates addresses and a data dir for member `id` (not started).
    pub fn add_member(&mut self, id: u64) {
        let ip = self.ip_for(id, 0);
        let m = self.member_at(id, ip);
        self.members.insert(id, m);
    }

    fn ip_for(&self, id: u64, generation: u32) -> String {
        format!(
            "127.{}.{}.{}",
            self.net.0,
            self.net.1.wrapping_add(generation as u8 * 17),
            id
        )
    }

    fn member_at(&self, id: u64, ip: String) -> Member {
        Member {
            id,
            dir: self.tmp.path().join(format!("member-{id}")),
            peer: format!("{ip}:{}", free_port(&ip)),
            client: format!("{ip}:{}", free_port(&ip)),
            admin: format!("{ip}:{}", free_port(&ip)),
            metrics: format!("{ip}:{}", free_port(&ip)),
            ip,
            child: None,
            restarts: 0,
        }
    }

    pub fn peers_flag(&self) -> String {
        self.members
            .values()
            .map(|m| format!("{}={}", m.id, self.reach.get(&m.id).unwrap_or(&m.peer)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the CA bundle and certificates are.
    pub fn tls_dir(&self) -> PathBuf {
        self.tmp.path().join("tls")
    }

    /// Issues `who` a certificate as `<name>.crt` and `<name>.key` under `tls_dir`.
    pub fn write_cert(&self, name: &str, who: &Identity) {
        let ca = self.ca.as_ref().expect("a TLS cluster");
        let issued = ca.issue(who, &["localhost".into()], CERT_VALIDITY).unwrap();
        let dir = self.tls_dir();
        std::fs::write(dir.join(format!("{name}.crt")), issued.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), issued.key_pem).unwrap();
    }

    /// How the harness dials members: as an admin of the cluster, or plaintext.
    pub fn dialer(&self) -> Dialer {
        self.dialer_as("admin")
    }

    /// A dialer presenting certificate `<name>` from `tls_dir`.
    pub fn dialer_as(&self, name: &str) -> Dialer {
        if self.ca.is_none() {
            return Dialer::Plaintext;
        }
        let dir = self.tls_dir();
        Dialer::Tls(
            TlsSource::open(TlsFiles {
                cert: Some(dir.join(format!("{name}.crt"))),
                key: Some(dir.join(format!("{name}.key"))),
                ca: dir.join("ca.crt"),
                expect: None,
            })
            .unwrap(),
        )
    }

    /// The TLS flags of member `id`, issuing its certificate on first use.
    fn tls_flags(&self, id: u64) -> Vec<String> {
        if self.ca.is_none() {
            return Vec::new();
        }
        let name = format!("member-{id}");
        let dir = self.tls_dir();
        if !dir.join(format!("{name}.crt")).exists() {
            self.write_cert(&name, &Identity::member(&self.cluster_id, id));
        }
        let path = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
        vec![
            "--tls-cert".into(),
            path("crt"),
            "--tls-key".into(),
            path("key"),
            "--tls-ca".into(),
            dir.join("ca.crt").display().to_string(),
        ]
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("member-{id}.log"))
    }

    /// Starts member `id` with its current addresses and data dir.
    pub fn spawn(&mut self, id: u64, args: &[&str]) {
        let peers = self.peers_flag();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        // Fast raft timing for tests, unless the cluster sets its own.
        let fast = [
            "--tick-ms".to_string(),
            TICK_MS.to_string(),
            "--election-ticks".to_string(),
            ELECTION_TICKS.to_string(),
        ];
        let timing: &[String] = if self.extra.iter().any(|a| a == "--tick-ms") {
            &[]
        } else {
            &fast
        };
        let tls = self.tls_flags(id);
        let m = self.members.get_mut(&id).expect("known member");
        let child = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .args(["--id", &id.to_string(), "--cluster-id", &self.cluster_id])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--peer-addr", &m.peer, "--client-addr", &m.client])
            .args(["--admin-addr", &m.admin, "--metrics-addr", &m.metrics])
            .args(["--peers", &peers])
            .args(timing)
            .args(&tls)
            .args(&self.extra)
            .args(args)
            .env("RAFTLANE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raft-node");
        m.child = Some(child);
    }

    pub fn pid(&self, id: u64) -> u32 {
        self.members[&id].child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush anything that was not already durable.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.members.get_mut(&id).unwrap().child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Member `id`'s exit code once its process has exited (`None` while it
    /// runs; -1 when a signal ended it).
    pub fn exit_code(&mut self, id: u64) -> Option<i32> {
        let child = self.members.get_mut(&id)?.child.as_mut()?;
        let status = child.try_wait().unwrap()?;
        Some(status.code().unwrap_or(-1))
    }

    /// Moves a stopped member to a fresh IP and ports, as a rescheduled pod.
    pub fn readdress(&mut self, id: u64) {
        let restarts = self.members[&id].restarts + 1;
        let ip = self.ip_for(id, restarts);
        let mut m = self.member_at(id, ip);
        m.restarts = restarts;
        self.members.insert(id, m);
    }

    pub fn endpoints(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|i| self.members[i].client.clone()).collect()
    }

    pub fn all_ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.members
            .values()
            .filter(|m| m.child.is_some())
            .map(|m| m.id)
            .collect()
    }

    /// A client over the given members (retrying across them).
    pub fn kv(&self, ids: &[u64]) -> KvClient {
        KvClient::new(
            &self.endpoints(ids),
            Duration::from_secs(15),
            &self.dialer(),
        )
        .unwrap()
    }

    /// A lazily connected channel to `addr`, any member of the cluster.
    pub fn channel(&self, addr: &str, timeout: Duration) -> Channel {
        let d = self.dialer();
        d.channel(
            d.endpoint(addr).unwrap().timeout(timeout),
            Expect::AnyMember,
        )
    }

    pub async fn admin(&self, id: u64) -> NodeAdminClient<Channel> {
        NodeAdminClient::new(self.channel(&self.members[&id].admin, Duration::from_secs(5)))
    }

    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let mut a = self.admin(id).await;
        a.status(StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until the running members agree on one leader; returns it.
    pub async fn wait_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for id in self.running_ids() {
                if let Some(s) = self.status(id).await {
                    leaders.push((s.leader_id, s.role == "leader" && s.id == s.leader_id));
                }
            }
            let first = leaders.first().map(|l| l.0).unwrap_or(0);
            if first != 0
                && leaders.len() == self.running_ids().len()
                && leaders.iter().all(|l| l.0 == first)
                && leaders.iter().any(|l| l.1)
            {
                return first;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {leaders:?}\n{}",
                self.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `cond` holds for member `id`'s status.
    pub async fn wait_status(
        &self,
        id: u64,
        within: Duration,
        what: &str,
        cond: impl Fn(&StatusResponse) -> bool,
    ) -> StatusResponse {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status(id).await {
                if cond(&s) {
                    return s;
                }
                assert!(
                    Instant::now() < deadline,
                    "member {id}: {what} not reached within {within:?}; last status {s:?}\n{}",
                    self.logs_tail()
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "member {id}: no status within {within:?}\n{}",
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn upsert(&self, on: u64, peers: &[(u64, String)]) -> Vec<u64> {
        let mut a = self.admin(on).await;
        a.upsert_peers(UpsertPeersRequest {
            peers: peers.iter().cloned().collect(),
        })
        .await
        .expect("upsert peers")
        .into_inner()
        .changed
    }

    /// Starts member `id` in join mode, gives every member its address, adds it as
    /// a learner through `leader`, and waits until it applied the leader's commit.
    pub async fn add_learner_and_wait(&mut self, leader: u64, id: u64) -> StatusResponse {
        self.add_member(id);
        self.spawn(id, &[]); // join mode: no --initial-voters
        let addr = self.members[&id].peer.clone();
        for other in self.all_ids().into_iter().filter(|o| *o != id) {
            self.upsert(other, &[(id, addr.clone())]).await;
        }
        let mut admin = self.admin(leader).await;
        admin
            .add_learner(raftlane_proto::admin::MemberRequest { id })
            .await
            .expect("add learner");
        let target = self.status(leader).await.unwrap().commit_index;
        self.wait_status(id, ELECTION * 40, "learner caught up", |s| {
            s.applied_index >= target
        })
        .await
    }

    /// Sum of every series of metric `name` on member `id`.
    pub async fn metric(&self, id: u64, name: &str) -> f64 {
        self.metric_with(id, name, "").await
    }

    /// Sum of the series of metric `name` whose labels contain `label`.
    pub async fn metric_with(&self, id: u64, name: &str, label: &str) -> f64 {
        let url = format!("http://{}/metrics", self.members[&id].metrics);
        let body = http_get(&url).await;
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for id in self.members.keys() {
            let text = std::fs::read_to_string(self.log_path(*id)).unwrap_or_default();
            let lines: Vec<_> = text.lines().rev().take(15).collect();
            out += &format!("--- member {id} log tail ---\n");
            for l in lines.into_iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail());
        }
        for m in self.members.values_mut() {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A minimal HTTP/1.0 GET over a TCP socket, for /metrics and the probes.
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Writes keys `prefix<i>` = `value-<i>` through `kv`, 16 at a time; every one
/// must be acknowledged. Returns the keys.
pub async fn write_keys(kv: &KvClient, prefix: &str, range: std::ops::Range<u64>) -> Vec<String> {
    use futures::StreamExt;
    futures::stream::iter(range)
        .map(|i| async move {
            let k = format!("{prefix}{i:06}");
            kv.put(k.as_bytes(), format!("value-{i}").as_bytes())
                .await
                .unwrap_or_else(|e| panic!("put {k}: {e}"));
            k
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Asserts every key reads back through `kv` with its value.
pub async fn assert_keys(kv: &KvClient, keys: &[String]) {
    for k in keys {
        let i: u64 = k
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let v = kv
            .get(k.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {k}: {e}"));
        assert_eq!(
            v.as_deref(),
            Some(format!("value-{i}").as_bytes()),
            "key {k}"
        );
    }
}

/// Helpers for fault tests that route peers through proxies and pause members.
impl Cluster {
    /// Starts member `id` reaching each peer in `reach` at that address (a proxy
    /// of its own) instead of the cluster-wide `reach`.
    pub fn spawn_reaching(&mut self, id: u64, reach: BTreeMap<u64, String>, args: &[&str]) {
        let shared = std::mem::replace(&mut self.reach, reach);
        self.spawn(id, args);
        self.reach = shared;
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to member `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid(id).to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} member {id}");
    }

    /// Member `id`'s status, or `None` if it does not answer within `within`.
    pub async fn status_within(&self, id: u64, within: Duration) -> Option<StatusResponse> {
        tokio::time::timeout(within, self.status(id))
            .await
            .ok()
            .flatten()
    }
}
