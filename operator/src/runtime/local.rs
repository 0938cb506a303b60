//! The local runtime: members are `raft-node` processes on this machine, member
//! `id` on 127.0.0.`id`, data and logs under the state folder. Each start asks
//! for port 0 everywhere: raft-node binds ports the OS picks (no port is probed
//! and released first, for another process to take) and writes them to
//! `member-<id>.addrs` before serving; until then the member is listed without
//! an address. A member that exits is started again on fresh ports with
//! its id and data, as a rescheduled pod comes back on a new IP. What a member
//! runs as is recorded in `member-<id>.json`, written before the process is
//! started (its addresses added once known), so a restarted operator adopts
//! the processes it left running instead of starting them twice. A member deleted
//! after leaving the membership has its data dir retired (renamed, kept).
//!
//! Each member is started with `--state-marker <state>/member-<id>.holds-state`:
//! raft-node writes it as soon as its data dir holds raft state, outside the
//! data dir so that a wipe cannot erase it, and every later start that finds
//! it expects state. A child that exits with
//! [`WIPED_EXIT_CODE`] found its data dir empty: its storage is retired, so the
//! planner sees a member without storage (data lost) and replaces it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use raftlane_tls::files::Material;
use raftlane_tls::{Dialer, TlsSource};

use super::launch::{ExpectState, Launch, Listen, Transport};
use super::{Runtime, WIPED_EXIT_CODE};
use crate::certs::{self, Ca, CaChange, Leaf, Stored, StoredLeaf};
use crate::crd::{RaftClusterSpec, RaftSettings, MAX_REPLICAS};
use crate::plan::Member;
use crate::revision;

/// The certificates of a local cluster, as PEM files under `<state>/tls/`:
/// ca.crt, ca.key, trust.crt (what members trust: the CA, and the previous
/// one while rotating), member-<id>.crt/.key, admin.crt/.key, client.crt/.key
/// and the operator's operator.crt/.key; `state.json` records the CA's
/// generation, the rotation and which CA issued each certificate. Key files
/// are mode 0600; every file is rewritten whole (temporary file, rename), so
/// a member re-reading it never sees half of one.
pub struct LocalTls {
    dir: PathBuf,
    cluster: String,
    /// Clients without a certificate are let in (`insecureAnonymousClients`).
    anonymous_clients: bool,
    /// How long each CA rotation stage is held: members re-read their files
    /// every 2 s (raft-node's `--tls-reload-ms`), so three of those.
    grace: std::time::Duration,
}

/// `state.json` of [`LocalTls`].
#[derive(Serialize, Deserialize, Default)]
struct TlsState {
    generation: u32,
    #[serde(default)]
    rotated_for: Option<String>,
    /// While rotating: when the current stage began, Unix seconds.
    #[serde(default)]
    stage_since: Option<u64>,
    /// The generation of the CA that issued each certificate, by file stem.
    #[serde(default)]
    issued_by: BTreeMap<String, u32>,
}

/// One pass over a local cluster's certificates.
pub struct CertPass {
    pub dialer: Dialer,
    /// The operator's certificate or trust changed: re-dial.
    pub dialer_changed: bool,
    pub written: Vec<String>,
    pub ca_change: Option<CaChange>,
}

/// Writes `body` to `path` whole: a temporary file (mode `mode`), fsync, rename.
fn write_file(path: &Path, body: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read_opt(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl LocalTls {
    pub fn new(cluster_dir: &Path, cluster: &str, anonymous_clients: bool) -> LocalTls {
        LocalTls {
            dir: cluster_dir.join("tls"),
            cluster: cluster.to_string(),
            anonymous_clients,
            grace: std::time::Duration::from_secs(6),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_path(&self, leaf: &Leaf) -> PathBuf {
        self.dir.join(format!("{}.crt", leaf.stem()))
    }

    pub fn key_path(&self, leaf: &Leaf) -> PathBuf {
        self.dir.join(format!("{}.key", leaf.stem()))
    }

    pub fn trust_path(&self) -> PathBuf {
        self.dir.join("trust.crt")
    }

    /// How member `id` is started.
    fn transport(&self, id: u64) -> Transport {
        let leaf = Leaf::Member(id);
        Transport::Tls {
            cert: self.cert_path(&leaf).display().to_string(),
            key: self.key_path(&leaf).display().to_string(),
            ca: self.trust_path().display().to_string(),
            anonymous_clients: self.anonymous_clients,
        }
    }

    fn state(&self) -> anyhow::Result<TlsState> {
        let path = self.dir.join("state.json");
        match read_opt(&path)? {
            None => Ok(TlsState::default()),
            Some(t) => {
                serde_json::from_str(&t).with_context(|| format!("{}: unreadable", path.display()))
            }
        }
    }

    fn write_state(&self, state: &TlsState) -> anyhow::Result<()> {
        let body = serde_json::to_vec_pretty(state)?;
        write_file(&self.dir.join("state.json"), &body, 0o644)
    }

    /// Removes member `id`'s certificate (it left the cluster).
    fn forget_member(&self, id: u64) -> anyhow::Result<()> {
        remove_if_present(&self.cert_path(&Leaf::Member(id)))?;
        remove_if_present(&self.key_path(&Leaf::Member(id)))
    }

    /// Member ids with a certificate file.
    fn member_ids(&self) -> anyhow::Result<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries {
                let name = e?.file_name().to_string_lossy().to_string();
                if let Some(id) = name
                    .strip_prefix("member-")
                    .and_then(|n| n.strip_suffix(".crt"))
                    .and_then(|n| n.parse().ok())
                {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }

    fn read(&self, wanted: &[Leaf]) -> anyhow::Result<(Stored, TlsState)> {
        let state = self.state()?;
        let ca = match (
            read_opt(&self.dir.join("ca.crt"))?,
            read_opt(&self.dir.join("ca.key"))?,
        ) {
            (Some(cert_pem), Some(key_pem)) if state.generation > 0 => Some(Ca {
                cert_pem,
                key_pem,
                generation: state.generation,
                previous_pem: read_opt(&self.dir.join("previous-ca.crt"))?,
                rotated_for: state.rotated_for.clone(),
                stage_since: state
                    .stage_since
                    .map(|t| std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)),
            }),
            _ => None,
        };
        // Every member reads the one trust.crt: a leaf's trust is the CA's.
        let trust = ca.as_ref().map(Ca::trust_bundle).unwrap_or_default();
        let mut leaves = BTreeMap::new();
        for leaf in wanted {
            let (Some(cert_pem), Some(key_pem)) = (
                read_opt(&self.cert_path(leaf))?,
                read_opt(&self.key_path(leaf))?,
            ) else {
                continue;
            };
            let generation = state.issued_by.get(&leaf.stem()).copied().unwrap_or(0);
            leaves.insert(
                leaf.clone(),
                StoredLeaf {
                    cert_pem,
                    key_pem,
                    generation,
                    trust_pem: trust.clone(),
                },
            );
        }
        Ok((Stored { ca, leaves }, state))
    }

    /// Issues what is missing, renews what is due and rotates the CA when
    /// asked (`annotation`) or due, for members `ids` (and those that have a
    /// certificate already), by the rules of [`certs::plan`].
    pub fn sync(
        &self,
        ids: impl IntoIterator<Item = u64>,
        annotation: Option<&str>,
    ) -> anyhow::Result<CertPass> {
        fs::create_dir_all(&self.dir).with_context(|| format!("{}", self.dir.display()))?;
        let mut all: BTreeSet<u64> = ids.into_iter().collect();
        all.extend(self.member_ids()?);
        let wanted = certs::leaves(all);
        let (stored, mut state) = self.read(&wanted)?;
        let names = |l: &Leaf| match l {
            Leaf::Member(id) => vec![
                "127.0.0.1".to_string(),
                "localhost".to_string(),
                format!("127.0.0.{id}"),
            ],
            _ => Vec::new(),
        };
        let changes = certs::plan(
            &self.cluster,
            &stored,
            &wanted,
            names,
            annotation,
            self.grace,
            std::time::SystemTime::now(),
        )?;
        let mut written = Vec::new();
        let next = certs::applied(&stored, &changes);
        let ca = next.ca.clone().expect("plan always leaves a CA");
        // The CA and the trust bundle first (a rotation's bundle trusts the
        // old CA and the new), then the certificates: a member never reads a
        // certificate its peers do not trust yet. A crash in between leaves
        // certificates recorded as the old CA's, which the next pass reissues.
        if let Some((ca, _)) = &changes.ca {
            write_file(&self.dir.join("ca.key"), ca.key_pem.as_bytes(), 0o600)?;
            write_file(&self.dir.join("ca.crt"), ca.cert_pem.as_bytes(), 0o644)?;
            match &ca.previous_pem {
                Some(p) => write_file(&self.dir.join("previous-ca.crt"), p.as_bytes(), 0o644)?,
                None => remove_if_present(&self.dir.join("previous-ca.crt"))?,
            }
            state.generation = ca.generation;
            state.rotated_for = ca.rotated_for.clone();
            state.stage_since = ca
                .stage_since
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            self.write_state(&state)?;
            written.push(format!("ca (#{})", ca.generation));
        }
        let trust = ca.trust_bundle();
        let mut operator_changed = false;
        if read_opt(&self.trust_path())?.as_deref() != Some(trust.as_str()) {
            write_file(&self.trust_path(), trust.as_bytes(), 0o644)?;
            operator_changed = true;
        }
        let mut issued = false;
        for (leaf, l) in &changes.leaves {
            if stored.leaves.get(leaf).map(|s| &s.cert_pem) == Some(&l.cert_pem) {
                // Only the trust changed: trust.crt says it for every member.
                continue;
            }
            write_file(&self.key_path(leaf), l.key_pem.as_bytes(), 0o600)?;
            write_file(&self.cert_path(leaf), l.cert_pem.as_bytes(), 0o644)?;
            state.issued_by.insert(leaf.stem(), l.generation);
            operator_changed |= *leaf == Leaf::Operator;
            issued = true;
            written.push(leaf.stem());
        }
        if issued {
            self.write_state(&state)?;
        }
        let op = &next.leaves[&Leaf::Operator];
        let material = Material::from_pem(
            Some(op.cert_pem.as_bytes()),
            Some(op.key_pem.as_bytes()),
            trust.as_bytes(),
        )?;
        Ok(CertPass {
            dialer: Dialer::Tls(TlsSource::fixed(material)),
            dialer_changed: operator_changed,
            written,
            ca_change: changes.ca.map(|(_, why)| why),
        })
    }
}

/// Where a started member listens: what raft-node writes to its addrs file
/// (`--addrs-file`), and what its record holds once that was read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Bound {
    peer: String,
    client: String,
    admin: String,
    metrics: String,
}

/// What is recorded of a started member.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Record {
    /// None while starting: `create` writes the record before the spawn and
    /// the pid right after it (see [`LocalRuntime::settle`]).
    #[serde(default)]
    pid: Option<u32>,
    /// Its addresses, as fields `peer`, `client`, `admin` and `metrics`;
    /// absent until raft-node wrote its addrs file and a `list` read it.
    #[serde(flatten)]
    addrs: Option<Bound>,
    /// The spec revision it was started at.
    #[serde(default)]
    revision: Option<String>,
}

/// The raft-node binary a spec's `image` names locally: a path (starting
/// with `/` or `.`) is the binary itself; anything else, a container image
/// name, means `default` (raft-operator's `--node-bin`).
pub fn node_binary(image: &str, default: &Path) -> PathBuf {
    if image.starts_with('/') || image.starts_with('.') {
        PathBuf::from(image)
    } else {
        default.to_path_buf()
    }
}

pub struct LocalRuntime {
    dir: PathBuf,
    cluster_id: String,
    /// `--node-bin`: what a spec without a binary path runs.
    default_bin: PathBuf,
    /// What members are started with now (see [`LocalRuntime::set_spec`]).
    node_bin: PathBuf,
    raft: RaftSettings,
    revision: String,
    /// `spec.restore.file`: what the initial voters of a new cluster start from.
    restore: Option<PathBuf>,
    /// The cluster's certificates; none when the spec turns TLS off.
    tls: Option<LocalTls>,
    /// Processes this operator started (so they can be reaped).
    children: BTreeMap<u64, Child>,
}

/// Renames member data dir `data` aside (kept, never used again), if it exists.
fn retire_data(data: &Path) -> anyhow::Result<()> {
    if data.exists() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut name = data.as_os_str().to_owned();
        name.push(format!(".retired-{stamp}"));
        fs::rename(data, &name).with_context(|| format!("retiring {}", data.display()))?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    fs::remove_file(path)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .with_context(|| format!("removing {}", path.display()))
}

/// The live raft-node process started with data dir `data`, if there is one:
/// what a record without a pid was written for. Only one raft-node runs on a
/// data dir: it locks its raft log (`<data>/raft/LOCK`), and a second one
/// exits after waiting a while for that lock. In that while both exist, so
/// the newest start is taken: a record is written for the latest start.
fn find_started(data: &str) -> Option<u32> {
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| alive(pid, data))
        .max_by_key(|&pid| (started_at(pid), pid))
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`
/// field 22).
fn started_at(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// True when `pid` is a live process started on data dir `data` (a member
/// of ours, not a reused pid), whatever its binary is called (`spec.image`
/// may name any file).
fn alive(pid: u32, data: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let argv: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            argv.windows(2)
                .any(|w| w[0] == b"--data-dir" && w[1] == data.as_bytes())
        })
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
    /// Members of cluster `cluster_id` live under `dir`, with certificates
    /// under `dir/tls` unless `spec.tls.enabled` is false; `default_bin` is
    /// raft-node unless `spec.image` names a binary. The binary is checked by
    /// [`LocalRuntime::set_spec`] (stopping members needs none).
    pub fn new(
        dir: &Path,
        cluster_id: &str,
        default_bin: PathBuf,
        spec: &RaftClusterSpec,
    ) -> anyhow::Result<LocalRuntime> {
        fs::create_dir_all(dir).with_context(|| format!("state dir {}", dir.display()))?;
        let tls = &spec.tls;
        Ok(LocalRuntime {
            dir: dir.to_path_buf(),
            cluster_id: cluster_id.to_string(),
            node_bin: node_binary(&spec.image, &default_bin),
            default_bin,
            raft: spec.raft.clone(),
            revision: revision::of(spec),
            restore: spec.restore.as_ref().map(|r| PathBuf::from(&r.file)),
            tls: tls
                .enabled
                .then(|| LocalTls::new(dir, cluster_id, tls.insecure_anonymous_clients)),
            children: BTreeMap::new(),
        })
    }

    /// Members started from now on run as `spec` says (binary, raft
    /// settings) and are recorded at its revision. Refused, with the last
    /// spec kept, when the binary it names does not exist.
    pub fn set_spec(&mut self, spec: &RaftClusterSpec) -> anyhow::Result<()> {
        let bin = node_binary(&spec.image, &self.default_bin);
        anyhow::ensure!(
            bin.is_file(),
            "spec.image: raft-node binary not found at {}",
            bin.display()
        );
        self.node_bin = bin;
        self.raft = spec.raft.clone();
        self.revision = revision::of(spec);
        self.restore = spec.restore.as_ref().map(|r| PathBuf::from(&r.file));
        Ok(())
    }

    /// The certificates, unless TLS is off.
    pub fn tls(&self) -> Option<&LocalTls> {
        self.tls.as_ref()
    }

    /// One pass over the certificates (see [`LocalTls::sync`]): the dialer
    /// the operator reaches members with. Plaintext only when TLS is off.
    pub fn sync_certs(
        &self,
        replicas: u32,
        annotation: Option<&str>,
    ) -> anyhow::Result<Option<CertPass>> {
        match &self.tls {
            None => Ok(None),
            Some(t) => Ok(Some(t.sync(1..=u64::from(replicas), annotation)?)),
        }
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("member-{id}.json"))
    }

    /// Where member `id`'s raft-node writes the addresses it bound.
    fn addrs_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("member-{id}.addrs"))
    }

    /// The addresses member `id`'s raft-node reported, once it has (the file
    /// is written whole, so it is there complete or not at all).
    fn read_addrs(&self, id: u64) -> anyhow::Result<Option<Bound>> {
        let path = self.addrs_path(id);
        match read_opt(&path)? {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t)
                .map(Some)
                .with_context(|| format!("{}: unreadable", path.display())),
        }
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("member-{id}"))
    }

    /// Written by member `id`'s raft-node (`--state-marker`) once its data dir
    /// holds raft state; beside the data dir, so a wiped one is told.
    fn marker_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("member-{id}.holds-state"))
    }

    /// Ids with a data dir or a holds-state marker (retired dirs aside).
    fn stored_ids(&self) -> anyhow::Result<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix("member-") else {
                continue;
            };
            let id = rest.strip_suffix(".holds-state").unwrap_or(rest);
            if let Ok(id) = id.parse::<u64>() {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Writes member `id`'s record whole and durably (file and directory
    /// fsynced): it is what finds the process again after a crash.
    fn write_record(&self, id: u64, rec: &Record) -> anyhow::Result<()> {
        write_file(
            &self.record_path(id),
            &serde_json::to_vec_pretty(rec)?,
            0o644,
        )?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))
    }

    /// A record without a pid was left by a `create` that stopped (crashed,
    /// or failed to write) between writing it and recording the pid. If the
    /// spawn happened, its process is the raft-node started on this member's
    /// data dir (a member's process is stopped before it is started again,
    /// and raft-node locks its data dir: see [`find_started`]): it is
    /// adopted, its pid recorded; its addresses are read from its addrs file
    /// by `list`, as for any start. Found none, the start never ran and the
    /// record is removed. Only one operator runs per state dir (its lock) and
    /// `create` does not yield between the record and the spawn, so no start
    /// is in flight here.
    fn settle(&self, id: u64, mut rec: Record) -> anyhow::Result<Option<Record>> {
        let data = self.data_dir(id).display().to_string();
        match find_started(&data) {
            Some(pid) => {
                tracing::warn!(member = id, pid, "adopting member {id}, started unrecorded");
                rec.pid = Some(pid);
                self.write_record(id, &rec)?;
                Ok(Some(rec))
            }
            None => {
                remove_if_present(&self.record_path(id))?;
                Ok(None)
            }
        }
    }

    /// The members' records, those left without a pid settled first.
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
            let rec = match rec.pid {
                Some(_) => rec,
                None => match self.settle(id, rec)? {
                    Some(rec) => rec,
                    None => continue,
                },
            };
            out.insert(id, rec);
        }
        Ok(out)
    }

    /// Reaps children that exited, so they are not listed, and retires the
    /// storage of each that refused an empty data dir under `--expect-state`:
    /// data dir first, marker last, so a crash in between is finished by the
    /// next refusal. (A member adopted from an earlier operator is not a
    /// child, but it started already: only a start can be refused.) Without
    /// `repair` a refused child is kept, to be retired by a pass that repairs.
    fn reap(&mut self, repair: bool) -> anyhow::Result<()> {
        let mut wiped = Vec::new();
        self.children.retain(|id, c| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) if status.code() == Some(WIPED_EXIT_CODE) => {
                if repair {
                    wiped.push(*id);
                }
                !repair
            }
            Ok(Some(_)) | Err(_) => false,
        });
        for id in wiped {
            tracing::warn!(
                member = id,
                "member {id} refused to start: its data dir is empty although it held state \
                 (wiped); its storage is retired and the member replaced"
            );
            retire_data(&self.data_dir(id))?;
            remove_if_present(&self.record_path(id))?;
            remove_if_present(&self.addrs_path(id))?;
            remove_if_present(&self.marker_path(id))?;
        }
        Ok(())
    }

    /// Stops every member (SIGTERM) and waits for them; for Ctrl-C and `local down`.
    pub fn stop_all(&mut self) -> anyhow::Result<Vec<u64>> {
        let mut stopped = Vec::new();
        for (id, rec) in self.records()? {
            let data = self.data_dir(id).display().to_string();
            if let Some(pid) = rec.pid.filter(|&p| alive(p, &data)) {
                terminate(pid);
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
async fn stop(pid: u32, data: &str) {
    if !alive(pid, data) {
        return;
    }
    terminate(pid);
    for _ in 0..100 {
        if !alive(pid, data) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) with a pid read from our own record; no memory is shared.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    // Gone before anything else uses its data dir (a restart, a retirement).
    for _ in 0..100 {
        if !alive(pid, data) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid read from our own record; no memory is shared.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

impl Runtime for LocalRuntime {
    /// Running members; one whose raft-node has not reported its addresses
    /// yet is listed without any (neither missing nor reachable). Reported,
    /// they are kept in its record.
    async fn list(&mut self, repair: bool) -> anyhow::Result<Vec<Member>> {
        self.reap(repair)?;
        let mut out = Vec::new();
        for (id, mut r) in self.records()? {
            let data = self.data_dir(id).display().to_string();
            if !r.pid.is_some_and(|p| alive(p, &data)) {
                continue;
            }
            if r.addrs.is_none() {
                match self.read_addrs(id) {
                    Ok(Some(b)) => {
                        r.addrs = Some(b);
                        self.write_record(id, &r)?;
                    }
                    Ok(None) => {}
                    // Written whole by raft-node, so this is not a half-written
                    // file: the member stays without an address, and said why.
                    Err(e) => tracing::warn!(member = id, "member {id}: {e:#}"),
                }
            }
            out.push(
                match r.addrs {
                    Some(b) => Member::at(id, b.peer, b.client, b.admin),
                    None => Member::unreachable(id),
                }
                .at_revision(r.revision),
            );
        }
        Ok(out)
    }

    async fn create(
        &mut self,
        id: u64,
        initial_voters: Option<&BTreeSet<u64>>,
        peers: &BTreeMap<u64, String>,
    ) -> anyhow::Result<Member> {
        anyhow::ensure!(
            (1..=u64::from(MAX_REPLICAS)).contains(&id),
            "member id {id} has no 127.0.0.x address"
        );
        // Port 0: raft-node binds ports the OS picks and reports them in its
        // addrs file, which `list` reads.
        let any_port = format!("127.0.0.{id}:0");
        let addrs_file = self.addrs_path(id);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("member-{id}.log")))?;
        let launch = Launch {
            id,
            cluster_id: &self.cluster_id,
            data_dir: self.data_dir(id).display().to_string(),
            listen: Listen {
                peer: any_port.clone(),
                client: any_port.clone(),
                admin: any_port.clone(),
                metrics: any_port,
                advertise: None,
            },
            peers,
            initial_voters,
            // raft-node writes the marker itself once its data holds state,
            // and expects state at every start that finds it.
            expect_state: ExpectState::No,
            state_marker: Some(self.marker_path(id).display().to_string()),
            addrs_file: Some(addrs_file.display().to_string()),
            restore_from: self.restore.as_ref().map(|f| f.display().to_string()),
            raft: &self.raft,
            transport: match &self.tls {
                Some(t) => {
                    // A member beyond the last pass's certificates gets its own now.
                    if !t.cert_path(&Leaf::Member(id)).exists() {
                        t.sync([id], None)?;
                    }
                    t.transport(id)
                }
                None => Transport::Plaintext,
            },
        };
        // Recorded before it runs: a crash after the spawn cannot leave a
        // process no record names (the operator restarted would start the
        // member twice, on one data dir). The record has no pid until the
        // spawn returns one; one left without is settled by `records`. An
        // addrs file of an earlier start goes first: the one `list` reads is
        // this start's.
        remove_if_present(&addrs_file)?;
        let mut rec = Record {
            pid: None,
            addrs: None,
            revision: Some(self.revision.clone()),
        };
        self.write_record(id, &rec)?;
        let mut cmd = Command::new(&self.node_bin);
        cmd.args(launch.args());
        let spawned = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                remove_if_present(&self.record_path(id))?;
                return Err(e).with_context(|| format!("starting {}", self.node_bin.display()));
            }
        };
        rec.pid = Some(child.id());
        self.children.insert(id, child);
        self.write_record(id, &rec)?;
        // Its ports are known once it has bound them: a later `list` says.
        Ok(Member::unreachable(id).at_revision(rec.revision))
    }

    /// Stops the process (SIGTERM, waited for) and starts it again on its
    /// data dir, on new ports, with the spec as it is now (listed without
    /// an address until it has bound them).
    async fn restart(&mut self, id: u64, peers: &BTreeMap<u64, String>) -> anyhow::Result<Member> {
        if let Some(pid) = self.records()?.get(&id).and_then(|r| r.pid) {
            stop(pid, &self.data_dir(id).display().to_string()).await;
        }
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.wait();
        }
        self.create(id, None, peers).await
    }

    async fn delete(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(pid) = self.records()?.get(&id).and_then(|r| r.pid) {
            stop(pid, &self.data_dir(id).display().to_string()).await;
        }
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.try_wait();
        }
        // Data first, record last: a crash in between leaves a record whose
        // process is gone, and the next pass finishes the delete. The marker
        // goes with the data: a member created again starts on a fresh dir.
        retire_data(&self.data_dir(id))?;
        remove_if_present(&self.marker_path(id))?;
        if let Some(t) = &self.tls {
            t.forget_member(id)?;
        }
        remove_if_present(&self.addrs_path(id))?;
        remove_if_present(&self.record_path(id))?;
        Ok(())
    }

    /// Nothing to record: raft-node writes `member-<id>.holds-state` itself
    /// (`--state-marker`) as soon as its data holds state.
    async fn record_state(&mut self, _holding: &BTreeSet<u64>) -> anyhow::Result<()> {
        Ok(())
    }

    /// Data dirs holding raft state, and those recorded as having held it
    /// (wiped since, until raft-node refuses them).
    fn with_data(&self) -> anyhow::Result<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        for id in self.stored_ids()? {
            if self.marker_path(id).exists() {
                out.insert(id);
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

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
            "{} missing: build the workspace first",
            bin.display()
        );
        bin
    }

    fn runtime(dir: &Path) -> LocalRuntime {
        let spec = serde_json::from_value(serde_json::json!({"replicas": 3})).unwrap();
        LocalRuntime::new(dir, "c", node_bin(), &spec).unwrap()
    }

    /// Observes as a pass does (list, then record which members hold state:
    /// here every running one, bootstrapped voters all) until `done` holds
    /// (bounded).
    async fn list_until(rt: &mut LocalRuntime, what: &str, done: impl Fn(&LocalRuntime) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let running = rt.list(true).await.unwrap();
            let holding = running.iter().map(|m| m.id).collect();
            rt.record_state(&holding).await.unwrap();
            if done(rt) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn a_record_holds_its_addresses_as_fields_once_known_and_none_before() {
        let known = r#"{"pid":7,"peer":"127.0.0.1:1","client":"127.0.0.1:2",
            "admin":"127.0.0.1:3","metrics":"127.0.0.1:4","revision":"r"}"#;
        let rec: Record = serde_json::from_str(known).unwrap();
        assert_eq!(
            rec.addrs.as_ref().map(|a| a.admin.as_str()),
            Some("127.0.0.1:3")
        );
        let back = serde_json::to_value(&rec).unwrap();
        assert_eq!(back["admin"], "127.0.0.1:3", "{back}");
        let starting: Record = serde_json::from_str(r#"{"pid":null,"revision":"r"}"#).unwrap();
        assert!(starting.addrs.is_none() && starting.pid.is_none());
        let back = serde_json::to_value(&starting).unwrap();
        assert!(
            back.get("admin").is_none() && back.get("peer").is_none(),
            "{back}"
        );
    }

    /// Lists until member `id` is listed with addresses (bounded); returns them.
    async fn listed_at(rt: &mut LocalRuntime, id: u64) -> crate::plan::Addrs {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = rt.list(true).await.unwrap();
            if let Some(a) = listed
                .iter()
                .find(|m| m.id == id)
                .and_then(|m| m.addrs.clone())
            {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} listed without addresses for 20 s: {listed:?}\n{}",
                fs::read_to_string(rt.dir.join(format!("member-{id}.log"))).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The member binds its own ports (port 0): `create` cannot say where
    /// it is, `list` says once raft-node reported them, the record keeps
    /// them, and the member answers there. Started again, it binds anew.
    #[tokio::test]
    async fn a_member_started_by_create_is_reachable_at_the_ports_it_bound() {
        use raftlane_proto::admin::node_admin_client::NodeAdminClient;
        use raftlane_proto::admin::StatusRequest;

        let tmp = tempfile::tempdir().unwrap();
        let mut rt = runtime(tmp.path());
        let certs = rt.sync_certs(1, None).unwrap().unwrap();
        // A file of some earlier start is not taken for this start's.
        fs::write(
            rt.addrs_path(1),
            r#"{"peer":"127.0.0.1:1","client":"127.0.0.1:2","admin":"127.0.0.1:3","metrics":"127.0.0.1:4"}"#,
        )
        .unwrap();
        let voters = BTreeSet::from([1]);
        let m = rt.create(1, Some(&voters), &BTreeMap::new()).await.unwrap();
        assert!(m.addrs.is_none(), "no address before it bound: {m:?}");
        assert_eq!(m.revision.as_deref(), Some(rt.revision.as_str()));
        let args = fs::read(format!(
            "/proc/{}/cmdline",
            rt.records().unwrap()[&1].pid.unwrap()
        ))
        .unwrap();
        let args = String::from_utf8_lossy(&args).replace('\0', " ");
        assert!(
            args.contains("--peer-addr 127.0.0.1:0") && args.contains("--addrs-file"),
            "{args}"
        );

        let a = listed_at(&mut rt, 1).await;
        let rec = rt.records().unwrap()[&1].clone();
        let bound = rec.addrs.clone().expect("recorded once known");
        assert_eq!(
            (&bound.peer, &bound.client, &bound.admin),
            (&a.peer, &a.client, &a.admin)
        );
        assert_eq!(rt.read_addrs(1).unwrap().as_ref(), Some(&bound));
        for addr in [&bound.peer, &bound.client, &bound.admin, &bound.metrics] {
            let (ip, port) = addr.rsplit_once(':').unwrap();
            assert_eq!(ip, "127.0.0.1", "{addr}");
            assert_ne!(port.parse::<u16>().unwrap(), 0, "{addr}");
            std::net::TcpStream::connect(addr.as_str()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            let ep = certs.dialer.endpoint(&a.admin).unwrap();
            if let Ok(ch) = certs
                .dialer
                .connect(ep, raftlane_tls::Expect::AnyMember)
                .await
            {
                if let Ok(s) = NodeAdminClient::new(ch).status(StatusRequest {}).await {
                    break s.into_inner();
                }
            }
            assert!(
                Instant::now() < deadline,
                "member 1 not reached at {}",
                a.admin
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!((status.id, status.cluster_id.as_str()), (1, "c"));

        // Restarted, it is without an address until it bound new ports.
        let m = rt.restart(1, &BTreeMap::new()).await.unwrap();
        assert!(m.addrs.is_none());
        assert!(rt.records().unwrap()[&1].addrs.is_none());
        let again = listed_at(&mut rt, 1).await;
        std::net::TcpStream::connect(again.admin.as_str()).unwrap();
        rt.stop_all().unwrap();
    }

    #[tokio::test]
    async fn a_member_whose_data_dir_was_wiped_is_refused_and_its_storage_retired_by_a_list_that_repairs(
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut rt = runtime(tmp.path());
        let voters = BTreeSet::from([1]);
        rt.create(1, Some(&voters), &BTreeMap::new()).await.unwrap();
        list_until(&mut rt, "member 1 seen holding state", |rt| {
            rt.marker_path(1).exists()
        })
        .await;

        // The process dies and its data dir is emptied (a wiped volume).
        let mut child = rt.children.remove(&1).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // Killed as soon as its log held state, it may not have made its
        // snapshot folder yet.
        for sub in ["raft", "snapshots"] {
            match fs::remove_dir_all(rt.data_dir(1).join(sub)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r.unwrap(),
            }
        }
        assert!(rt.list(true).await.unwrap().is_empty());
        assert!(rt.with_storage().unwrap().contains(&1), "it held state");

        // Started again, it refuses. Listed without repair (a paused pass),
        // its storage stays; listed with, the runtime retires it.
        rt.create(1, None, &BTreeMap::new()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt
            .children
            .get_mut(&1)
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "member 1 did not refuse in 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(rt.list(false).await.unwrap().is_empty());
        assert!(rt.with_storage().unwrap().contains(&1) && rt.data_dir(1).exists());
        list_until(&mut rt, "member 1's storage retired", |rt| {
            !rt.with_storage().unwrap().contains(&1)
        })
        .await;
        assert!(!rt.data_dir(1).exists() && !rt.record_path(1).exists());
        let retired = fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("member-1.retired-"))
            .count();
        assert_eq!(retired, 1, "the emptied dir is kept aside");
        let log = fs::read_to_string(tmp.path().join("member-1.log")).unwrap();
        assert!(
            log.contains("--expect-state") && log.contains("looks wiped"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn members_run_with_certificates_under_the_state_dir_and_the_operator_dials_them() {
        use std::os::unix::fs::PermissionsExt;

        use raftlane_proto::admin::node_admin_client::NodeAdminClient;
        use raftlane_proto::admin::StatusRequest;

        let tmp = tempfile::tempdir().unwrap();
        let mut rt = runtime(tmp.path());
        let certs = rt.sync_certs(1, None).unwrap().expect("TLS by default");
        let tls = tmp.path().join("tls");
        for f in [
            "ca.crt",
            "trust.crt",
            "member-1.crt",
            "admin.crt",
            "client.crt",
        ] {
            assert!(tls.join(f).exists(), "{f}");
        }
        for f in [
            "ca.key",
            "member-1.key",
            "admin.key",
            "client.key",
            "operator.key",
        ] {
            let mode = fs::metadata(tls.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let voters = BTreeSet::from([1]);
        rt.create(1, Some(&voters), &BTreeMap::new()).await.unwrap();
        let admin = listed_at(&mut rt, 1).await.admin;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            let ep = certs.dialer.endpoint(&admin).unwrap();
            if let Ok(ch) = certs
                .dialer
                .connect(ep, raftlane_tls::Expect::AnyMember)
                .await
            {
                if let Ok(s) = NodeAdminClient::new(ch).status(StatusRequest {}).await {
                    break s.into_inner();
                }
            }
            assert!(Instant::now() < deadline, "member 1 not reached over TLS");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!((status.id, status.cluster_id.as_str()), (1, "c"));
        // A second pass has nothing to write.
        let again = rt.sync_certs(1, None).unwrap().unwrap();
        assert!(again.written.is_empty() && !again.dialer_changed);
        // A rotation (its stages not held here) first trusts both CAs, then
        // rewrites every certificate, then drops the old CA.
        rt.tls.as_mut().unwrap().grace = Duration::ZERO;
        let member = fs::read_to_string(tls.join("member-1.crt")).unwrap();
        let rotated = rt.sync_certs(1, Some("r1")).unwrap().unwrap();
        assert!(rotated.dialer_changed);
        assert_eq!(
            fs::read_to_string(tls.join("member-1.crt")).unwrap(),
            member
        );
        let trust = fs::read_to_string(tls.join("trust.crt")).unwrap();
        assert_eq!(trust.matches("BEGIN CERTIFICATE").count(), 2);
        let reissued = rt.sync_certs(1, Some("r1")).unwrap().unwrap();
        assert_eq!(reissued.ca_change, Some(CaChange::LeavesReissued));
        assert!(reissued.written.contains(&"member-1".to_string()));
        let done = rt.sync_certs(1, Some("r1")).unwrap().unwrap();
        assert_eq!(done.ca_change, Some(CaChange::RotationDone));
        let trust = fs::read_to_string(tls.join("trust.crt")).unwrap();
        assert_eq!(trust.matches("BEGIN CERTIFICATE").count(), 1);
        rt.stop_all().unwrap();
    }

    /// A crash after the spawn but before the pid was recorded leaves the
    /// record `create` wrote first, without a pid: the next operator finds
    /// the process by it and adopts it (it is listed, and stopped by
    /// `stop_all`); a record without a pid whose start never ran is dropped.
    #[tokio::test]
    async fn a_member_started_but_not_yet_recorded_by_pid_is_adopted_not_orphaned() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rt = runtime(tmp.path());
        let voters = BTreeSet::from([1]);
        rt.create(1, Some(&voters), &BTreeMap::new()).await.unwrap();
        let pid = rt.records().unwrap()[&1].pid.unwrap();
        // The operator dies with the pid not yet written: only the record
        // written before the spawn is on disk.
        let mut child = rt.children.remove(&1).unwrap();
        let mut rec = rt.records().unwrap()[&1].clone();
        rec.pid = None;
        rt.write_record(1, &rec).unwrap();
        drop(rt);

        let mut rt = runtime(tmp.path());
        let listed = rt.list(true).await.unwrap();
        assert_eq!(listed.len(), 1, "the unrecorded process is listed");
        assert_eq!(rt.records().unwrap()[&1].pid, Some(pid), "and recorded");
        assert_eq!(rt.stop_all().unwrap(), vec![1]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "member 1 not stopped in 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A record whose spawn never happened (no process has its addresses).
        rt.write_record(2, &Record { pid: None, ..rec }).unwrap();
        assert!(rt.list(true).await.unwrap().is_empty());
        assert!(
            !rt.record_path(2).exists(),
            "the record of no start is dropped"
        );
    }

    #[tokio::test]
    async fn a_deleted_member_created_again_does_not_expect_state() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rt = runtime(tmp.path());
        let voters = BTreeSet::from([1]);
        rt.create(1, Some(&voters), &BTreeMap::new()).await.unwrap();
        list_until(&mut rt, "member 1 seen holding state", |rt| {
            rt.marker_path(1).exists()
        })
        .await;
        rt.delete(1).await.unwrap();
        assert!(rt.with_data().unwrap().is_empty());

        rt.create(1, Some(&voters), &BTreeMap::new()).await.unwrap();
        list_until(&mut rt, "member 1 running on a fresh data dir", |rt| {
            rt.data_dir(1).join("raft").exists()
        })
        .await;
        assert_eq!(rt.list(true).await.unwrap().len(), 1, "it runs");
        rt.stop_all().unwrap();
    }
}
