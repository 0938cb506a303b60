//! The local runtime: members are `raft-node` processes on this machine, member
//! `id` on 127.0.0.`id` with ports picked free at each start, data and logs under
//! the state folder. A member that exits is started again on fresh ports with
//! its id and data, as a rescheduled pod comes back on a new IP. What a member
//! runs as is recorded in `member-<id>.json`, so a restarted operator adopts the
//! processes it left running instead of starting them twice. A member deleted
//! after leaving the membership has its data dir retired (renamed, kept).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{Member, Runtime};
use crate::crd::RaftSettings;

/// What is recorded of a started member.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Record {
    pid: u32,
    peer: String,
    client: String,
    admin: String,
    metrics: String,
}

pub struct LocalRuntime {
    dir: PathBuf,
    cluster_id: String,
    node_bin: PathBuf,
    raft: RaftSettings,
    /// Processes this operator started (so they can be reaped).
    children: BTreeMap<u64, Child>,
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))
        .with_context(|| format!("no free port on {ip}"))?
        .local_addr()?
        .port())
}

/// True when `pid` is a live raft-node process (not a reused pid).
fn alive(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("raft-node"))
        .unwrap_or(false)
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
}

impl LocalRuntime {
    /// Members of cluster `cluster_id` live under `dir`.
    pub fn new(
        dir: &Path,
        cluster_id: &str,
        node_bin: PathBuf,
        raft: RaftSettings,
    ) -> anyhow::Result<LocalRuntime> {
        fs::create_dir_all(dir).with_context(|| format!("state dir {}", dir.display()))?;
        anyhow::ensure!(
            node_bin.exists(),
            "raft-node binary not found at {}",
            node_bin.display()
        );
        Ok(LocalRuntime {
            dir: dir.to_path_buf(),
            cluster_id: cluster_id.to_string(),
            node_bin,
            raft,
            children: BTreeMap::new(),
        })
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("member-{id}.json"))
    }

    fn records(&self) -> anyhow::Result<BTreeMap<u64, Record>> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let Some(id) = name
                .strip_prefix("member-")
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let Ok(id) = id.parse::<u64>() else { continue };
            let rec: Record = serde_json::from_slice(&fs::read(&path)?)
                .with_context(|| format!("{}: unreadable", path.display()))?;
            out.insert(id, rec);
        }
        Ok(out)
    }

    /// Reaps children that exited, so they are not listed.
    fn reap(&mut self) {
        self.children
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }

    /// Stops every member (SIGTERM) and waits for them; for Ctrl-C and `local down`.
    pub fn stop_all(&mut self) -> anyhow::Result<Vec<u64>> {
        let mut stopped = Vec::new();
        for (id, rec) in self.records()? {
            if alive(rec.pid) {
                terminate(rec.pid);
                stopped.push(id);
            }
        }
        for c in self.children.values_mut() {
            let _ = c.wait();
        }
        self.children.clear();
        Ok(stopped)
    }
}

/// Asks a member to stop and waits for it, killing it if it takes too long, so
/// its data is never moved while it still writes.
async fn stop(pid: u32) {
    if !alive(pid) {
        return;
    }
    terminate(pid);
    for _ in 0..100 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) with a pid read from our own record; no memory is shared.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid read from our own record; no memory is shared.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

impl Runtime for LocalRuntime {
    async fn list(&mut self) -> anyhow::Result<Vec<Member>> {
        self.reap();
        Ok(self
            .records()?
            .into_iter()
            .filter(|(_, r)| alive(r.pid))
            .map(|(id, r)| Member::at(id, r.peer, r.client, r.admin))
            .collect())
    }

    async fn create(
        &mut self,
        id: u64,
        initial_voters: Option<&BTreeSet<u64>>,
        peers: &BTreeMap<u64, String>,
    ) -> anyhow::Result<Member> {
        anyhow::ensure!(
            (1..=254).contains(&id),
            "member id {id} has no 127.0.0.x address"
        );
        let ip = format!("127.0.0.{id}");
        let addr = |port: u16| format!("{ip}:{port}");
        let rec_addrs = [
            free_port(&ip)?,
            free_port(&ip)?,
            free_port(&ip)?,
            free_port(&ip)?,
        ];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("member-{id}.log")))?;
        let mut cmd = Command::new(&self.node_bin);
        cmd.args(["--id", &id.to_string(), "--cluster-id", &self.cluster_id])
            .arg("--data-dir")
            .arg(self.dir.join(format!("member-{id}")))
            .args([
                "--peer-addr",
                &addr(rec_addrs[0]),
                "--client-addr",
                &addr(rec_addrs[1]),
            ])
            .args([
                "--admin-addr",
                &addr(rec_addrs[2]),
                "--metrics-addr",
                &addr(rec_addrs[3]),
            ])
            .args(["--tick-ms", &self.raft.tick_ms.to_string()])
            .args(["--election-ticks", &self.raft.election_ticks.to_string()])
            .args(["--heartbeat-ticks", &self.raft.heartbeat_ticks.to_string()])
            .args([
                "--snapshot-entries",
                &self.raft.snapshot_entries.to_string(),
            ])
            .args(["--lanes", &self.raft.lanes.to_string()]);
        if let Some(v) = initial_voters {
            let v: Vec<String> = v.iter().map(u64::to_string).collect();
            cmd.args(["--initial-voters", &v.join(",")]);
        }
        let peers: Vec<String> = peers
            .iter()
            .filter(|(p, _)| **p != id)
            .map(|(p, a)| format!("{p}={a}"))
            .collect();
        if !peers.is_empty() {
            cmd.args(["--peers", &peers.join(",")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.node_bin.display()))?;
        let rec = Record {
            pid: child.id(),
            peer: addr(rec_addrs[0]),
            client: addr(rec_addrs[1]),
            admin: addr(rec_addrs[2]),
            metrics: addr(rec_addrs[3]),
        };
        let tmp = self.record_path(id).with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&rec)?)?;
        fs::rename(&tmp, self.record_path(id))?;
        self.children.insert(id, child);
        Ok(Member::at(id, rec.peer, rec.client, rec.admin))
    }

    async fn delete(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(rec) = self.records()?.get(&id) {
            stop(rec.pid).await;
        }
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.try_wait();
        }
        // Data first, record last: a crash in between leaves a record whose
        // process is gone, and the next pass finishes the delete.
        let data = self.dir.join(format!("member-{id}"));
        if data.exists() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            fs::rename(&data, self.dir.join(format!("member-{id}.retired-{stamp}")))?;
        }
        fs::remove_file(self.record_path(id)).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })?;
        Ok(())
    }

    fn with_data(&self) -> anyhow::Result<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            if let Some(id) = name
                .strip_prefix("member-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                if self.dir.join(&name).join("raft").exists() {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }

    /// raft-node writes `raft/` before it can join, so a member of the
    /// membership without it has lost its data: storage is data here.
    fn with_storage(&self) -> anyhow::Result<BTreeSet<u64>> {
        self.with_data()
    }
}
