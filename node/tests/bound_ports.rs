//! Listen addresses with port 0: raft-node binds ports the OS picks, reports
//! them in `--addrs-file` before serving, and gives its peers the bound peer
//! address (not `:0`), so a cluster forms on ports nobody chose in advance.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_node::client::KvClient;
use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{StatusRequest, StatusResponse};
use raftlane_tls::{Dialer, Expect};

/// Members killed when the test ends, passed or not.
struct Members {
    tmp: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Members {
    fn addrs_file(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("member-{id}.addrs"))
    }

    fn logs(&self) -> String {
        (1..=2)
            .map(|id| {
                let log = self.tmp.path().join(format!("member-{id}.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                format!("--- member {id} ---\n{text}")
            })
            .collect()
    }

    /// Starts member `id` on 127.0.0.1 port 0 everywhere, voters 1 and 2.
    fn spawn(&mut self, id: u64, peers: &[String]) {
        let log = std::fs::File::create(self.tmp.path().join(format!("member-{id}.log"))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-node"));
        cmd.args(["--id", &id.to_string(), "--cluster-id", "bound"])
            .arg("--data-dir")
            .arg(self.tmp.path().join(format!("member-{id}")))
            .args(["--peer-addr", "127.0.0.1:0", "--client-addr", "127.0.0.1:0"])
            .args([
                "--admin-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .arg("--addrs-file")
            .arg(self.addrs_file(id))
            .args(["--initial-voters", "1,2", "--insecure-plaintext"])
            .args(["--tick-ms", "50", "--election-ticks", "10"]);
        if !peers.is_empty() {
            cmd.args(["--peers", &peers.join(",")]);
        }
        let child = cmd
            .env("RAFTLANE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raft-node");
        self.children.push(child);
    }

    /// Waits for member `id`'s addrs file; returns its four addresses.
    fn bound(&self, id: u64) -> BTreeMap<String, SocketAddr> {
        let path = self.addrs_file(id);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let v: BTreeMap<String, String> = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()));
                return v
                    .into_iter()
                    .map(|(k, a)| (k, a.parse().expect("a socket address")))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "no {} within 20 s\n{}",
                path.display(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn status(admin: SocketAddr) -> Option<StatusResponse> {
    let d = Dialer::Plaintext;
    let ep = d
        .endpoint(&admin.to_string())
        .ok()?
        .timeout(Duration::from_secs(2));
    let ch = d.connect(ep, Expect::AnyMember).await.ok()?;
    let s = NodeAdminClient::new(ch)
        .status(StatusRequest {})
        .await
        .ok()?;
    Some(s.into_inner())
}

fn in_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn port_0_binds_os_chosen_ports_reported_in_the_addrs_file_and_advertised_to_peers() {
    let mut m = Members {
        tmp: tempfile::tempdir().unwrap(),
        children: Vec::new(),
    };
    // Member 2 knows no peer: it can reach member 1 only at the address
    // member 1 advertises in its own traffic.
    m.spawn(2, &[]);
    let two = m.bound(2);
    m.spawn(1, &[format!("2={}", two["peer"])]);
    let one = m.bound(1);

    for (id, bound) in [(1, &one), (2, &two)] {
        let keys: Vec<&str> = bound.keys().map(String::as_str).collect();
        assert_eq!(keys, ["admin", "client", "metrics", "peer"], "member {id}");
        for (port, addr) in bound {
            assert_eq!(addr.ip().to_string(), "127.0.0.1", "{id} {port}");
            assert_ne!(addr.port(), 0, "member {id}: {port} port");
            TcpStream::connect_timeout(addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("member {id}: {port} {addr}: {e}"));
        }
    }
    // Written whole: no temporary file is left beside it.
    let files: Vec<String> = in_dir(m.tmp.path())
        .into_iter()
        .filter(|n| n.contains("addrs"))
        .collect();
    assert_eq!(files, ["member-1.addrs", "member-2.addrs"]);

    // A leader needs both votes, so member 2 must have learned where member
    // 1 is: its peer table has member 1 at the bound peer address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (s1, s2) = loop {
        if let (Some(s1), Some(s2)) = (status(one["admin"]).await, status(two["admin"]).await) {
            let learned = s2.peers.iter().any(|p| p.id == 1 && !p.address.is_empty());
            if s1.leader_id != 0 && s1.leader_id == s2.leader_id && learned {
                break (s1, s2);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader with both members within 30 s\n{}",
            m.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let address_of = |s: &StatusResponse, id: u64| {
        s.peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.address.clone())
    };
    assert_eq!(
        address_of(&s2, 1),
        Some(one["peer"].to_string()),
        "member 2 reaches member 1 at its bound peer address"
    );
    assert_eq!(address_of(&s1, 2), Some(two["peer"].to_string()));

    // Writes through either member's client port: the follower forwards to
    // the leader at the peer address it knows.
    for (id, bound) in [(1, &one), (2, &two)] {
        let kv = KvClient::new(
            &[bound["client"].to_string()],
            Duration::from_secs(15),
            &Dialer::Plaintext,
        )
        .unwrap();
        let key = format!("bound/{id}");
        kv.put(key.as_bytes(), b"v")
            .await
            .unwrap_or_else(|e| panic!("put through member {id}: {e}\n{}", m.logs()));
        assert_eq!(
            kv.get(key.as_bytes()).await.unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
}

#[test]
fn an_addrs_file_that_cannot_be_written_stops_the_start_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(["--id", "1", "--cluster-id", "bound"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--peer-addr", "127.0.0.1:0", "--client-addr", "127.0.0.1:0"])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--addrs-file")
        .arg(tmp.path().join("missing-dir").join("m.addrs"))
        .args(["--initial-voters", "1", "--insecure-plaintext"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--addrs-file"), "{err}");
}
