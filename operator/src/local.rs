//! `raft-operator local`: the reconciler on one machine, members as local
//! processes (see `runtime/local.rs`). It re-reads the manifest when it changes
//! (edit `replicas` to scale), prints each step, and writes the status (same
//! schema as the CRD's) to `<state>/<name>/status.yaml` and the client endpoints
//! to `<state>/<name>/endpoints`.

use crate::naming::conditions::{AVAILABLE, RECONCILIATION_PAUSED};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use raftlane_tls::Dialer;

use crate::backup::{Auth, RaftClusterBackup};
use crate::certs::{Leaf, ROTATE_CA_ANNOTATION};
use crate::crd::{parse_manifest, RaftCluster, RaftClusterStatus};
use crate::local_backups::LocalBackups;
use crate::plan::{Action, Observed};
use crate::reconcile::{pass, AdminClients, Host, PassError};
use crate::revision;
use crate::runtime::local::LocalRuntime;

/// Time between reconcile passes.
const PASS_EVERY: Duration = Duration::from_millis(300);

pub struct LocalOptions {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub node_bin: PathBuf,
}

/// The manifest: its RaftCluster, the RaftClusterBackups of it, and when
/// the file was last changed.
fn load(file: &Path) -> anyhow::Result<(RaftCluster, Vec<RaftClusterBackup>, SystemTime)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("-f {}", file.display()))?;
    let mtime = std::fs::metadata(file)?.modified()?;
    let (c, backups) =
        parse_manifest(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok((c, backups, mtime))
}

fn cluster_dir(opts: &LocalOptions, c: &RaftCluster) -> anyhow::Result<PathBuf> {
    let name = c
        .metadata
        .name
        .clone()
        .context("metadata.name is required")?;
    Ok(opts.state_dir.join(name))
}

/// An exclusive `flock(2)` on `<state>/<name>/operator.lock`, which holds the
/// holder's pid: one operator per state dir, and `local down` refuses while one
/// runs (it would start the members again). The kernel drops the lock when the
/// process dies, however it dies, so a crashed operator never blocks the next;
/// the file is opened close-on-exec, so members do not inherit it.
struct OperatorLock {
    _file: std::fs::File,
}

/// Whose the lock is when it cannot be taken: the pid in the file, unless the
/// holder has not written it yet.
struct HeldBy(Option<u32>);

impl std::fmt::Display for HeldBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => write!(f, "pid unknown"),
        }
    }
}

impl OperatorLock {
    /// Takes the lock of cluster dir `dir` (created if missing) and writes our
    /// pid into it, or says who holds it.
    fn take(dir: &Path) -> anyhow::Result<Result<OperatorLock, HeldBy>> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(dir).with_context(|| format!("state dir {}", dir.display()))?;
        let path = dir.join("operator.lock");
        // Not truncated on open: the pid in it is the holder's until we hold it.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor we own and keep open; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            // The holder writes its pid just after taking the lock.
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            loop {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                if pid.is_some() || std::time::Instant::now() >= deadline {
                    return Ok(Err(HeldBy(pid)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        file.set_len(0)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        file.sync_all()?;
        Ok(Ok(OperatorLock { _file: file }))
    }
}

/// Writes a file whole and durably: temporary file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reconciles until Ctrl-C or SIGTERM, then stops the members.
pub async fn run(opts: LocalOptions) -> anyhow::Result<()> {
    let (mut cluster, mut backups, mut mtime) = load(&opts.file)?;
    let name = cluster
        .metadata
        .name
        .clone()
        .context("metadata.name is required")?;
    let dir = cluster_dir(&opts, &cluster)?;
    // Held until this function returns, the members stopped.
    let _lock = match OperatorLock::take(&dir)? {
        Ok(lock) => lock,
        Err(held) => anyhow::bail!("an operator ({held}) already runs on {}", dir.display()),
    };
    let mut rt = LocalRuntime::new(&dir, &name, opts.node_bin.clone(), &cluster.spec)?;
    rt.set_spec(&cluster.spec)
        .with_context(|| opts.file.display().to_string())?;
    let mut host = LocalHost { dir: dir.clone() };
    let status_path = host.status_path();
    let mut current = load_status(&status_path)?;
    anyhow::ensure!(
        cluster.spec.restore.is_none() || (current.term == 0 && current.leader.is_none()),
        "{}: spec.restore: {name} already formed (term {}): a backup restores only a new \
         cluster (remove spec.restore, or restore into a cluster of another name)",
        opts.file.display(),
        current.term
    );
    let mut taker = LocalBackups::new(&dir, opts.node_bin.with_file_name("raftctl"));
    // Replaced by the operator's certificate before the first pass dials.
    let mut admins = AdminClients::new(Dialer::Plaintext);
    let mut told_where = false;
    let mut last_summary = String::new();
    println!(
        "reconciling {name} ({} replicas) from {}; state in {}",
        cluster.spec.replicas,
        opts.file.display(),
        dir.display()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(PASS_EVERY) => {}
        }
        // Re-read the manifest when it changes; a bad edit keeps the last good spec.
        if let Ok(m) = std::fs::metadata(&opts.file).and_then(|m| m.modified()) {
            if m != mtime {
                mtime = m;
                // The CRD's update rules too (spec.tls fixed, storage never
                // shrinks), as the API server applies them to an edit.
                let edit = load(&opts.file).and_then(|(c, b, _)| {
                    RaftCluster::validate_cel_update(&c, &cluster)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.file.display()))?;
                    rt.set_spec(&c.spec)
                        .with_context(|| opts.file.display().to_string())?;
                    Ok((c, b))
                });
                match edit {
                    Ok((c, b)) => {
                        backups = b;
                        let (from, to) = (revision::of(&cluster.spec), revision::of(&c.spec));
                        if from != to {
                            println!("revision {from} -> {to}: members are rolled to it");
                        }
                        if c.spec.replicas != cluster.spec.replicas {
                            println!("replicas {} -> {}", cluster.spec.replicas, c.spec.replicas);
                        }
                        if c.spec.paused != cluster.spec.paused {
                            println!("paused {} -> {}", cluster.spec.paused, c.spec.paused);
                        }
                        cluster = c;
                    }
                    Err(e) => eprintln!("ignoring the edit, keeping the last good spec: {e:#}"),
                }
            }
        }

        // Certificates: issued, renewed or rotated before members are started.
        let annotation = cluster.metadata.annotations.as_ref();
        let annotation = annotation.and_then(|a| a.get(ROTATE_CA_ANNOTATION));
        match rt.sync_certs(cluster.spec.replicas, annotation.map(String::as_str)) {
            Ok(Some(certs)) => {
                if !certs.written.is_empty() {
                    println!("certificates written: {}", certs.written.join(", "));
                }
                if certs.dialer_changed || !admins.dialer().is_tls() {
                    admins.set_dialer(certs.dialer);
                }
                if !told_where {
                    told_where = true;
                    if let Some(t) = rt.tls() {
                        println!(
                            "client certificates: {} and {} (admin), {} and {} (client), CA {}; \
                             raftctl finds them with --state-dir",
                            t.cert_path(&Leaf::Admin).display(),
                            t.key_path(&Leaf::Admin).display(),
                            t.cert_path(&Leaf::Client).display(),
                            t.key_path(&Leaf::Client).display(),
                            t.dir().join("ca.crt").display(),
                        );
                    }
                }
            }
            Ok(None) => {
                if !told_where {
                    told_where = true;
                    println!(
                        "TLS is off (spec.tls.enabled: false): members serve every port \
                         unauthenticated"
                    );
                }
            }
            Err(e) => {
                eprintln!("certificates failed (retried next pass): {e:#}");
                continue;
            }
        }

        let outcome = pass(
            &mut rt,
            &mut host,
            &mut admins,
            &cluster,
            &name,
            current.clone(),
        )
        .await;
        match outcome {
            Ok(o) => {
                current = o.status;
                let auth = match rt.tls() {
                    Some(t) => Auth::Tls {
                        ca: t.trust_path().display().to_string(),
                        cert: t.cert_path(&Leaf::Admin).display().to_string(),
                        key: t.key_path(&Leaf::Admin).display().to_string(),
                    },
                    None => Auth::Plaintext,
                };
                match taker.pass(&backups, o.leader_admin.as_deref(), &auth) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(e) => eprintln!("backups failed (retried next pass): {e:#}"),
                }
            }
            Err(PassError::Observe(e)) => {
                eprintln!("observing members failed (retried next pass): {e:#}");
                continue;
            }
            // Reported by the host; the next pass plans it again, from the
            // status this pass may have saved before the step (the voters a
            // forming cluster starts with).
            Err(PassError::Step(_)) => {
                current = load_status(&status_path)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let summary = summarize(&current);
        if summary != last_summary {
            println!("{summary}");
            last_summary = summary;
        }
    }
    taker.stop();
    let stopped = rt.stop_all()?;
    println!("stopped members {stopped:?}");
    Ok(())
}

/// The saved status, or the empty one before the first save. A status that
/// exists but cannot be read stops the operator: guessing could bootstrap a
/// cluster that already holds data.
fn load_status(path: &std::path::Path) -> anyhow::Result<RaftClusterStatus> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            serde_yaml::from_str(&t).with_context(|| format!("{}: unreadable", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RaftClusterStatus::default()),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

/// The pass's host here: status in `status.yaml` with the client endpoints
/// beside it, steps and waits printed, failures on stderr. One operator runs
/// per state dir (its [`OperatorLock`]), so it may always act.
struct LocalHost {
    dir: PathBuf,
}

impl LocalHost {
    fn status_path(&self) -> PathBuf {
        self.dir.join("status.yaml")
    }
}

impl Host for LocalHost {
    async fn save_status(
        &mut self,
        status: &RaftClusterStatus,
        seen: &Observed,
    ) -> anyhow::Result<()> {
        write_atomic(
            &self.status_path(),
            serde_yaml::to_string(status)?.as_bytes(),
        )?;
        let endpoints: Vec<&str> = seen
            .running
            .values()
            .filter_map(|m| Some(m.addrs.as_ref()?.client.as_str()))
            .collect();
        write_atomic(
            &self.dir.join("endpoints"),
            format!("{}\n", endpoints.join(",")).as_bytes(),
        )
    }

    async fn step_done(&mut self, _: &Action, done: &str) {
        println!("{done}");
    }

    async fn step_failed(&mut self, step: &Action, error: &anyhow::Error) {
        eprintln!("{step:?} failed (retried next pass): {error:#}");
    }

    async fn waiting(&mut self, why: &str, _blocked: bool) {
        println!("waiting: {why}");
    }

    fn may_act(&self) -> bool {
        true
    }
}

fn summarize(s: &RaftClusterStatus) -> String {
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| {
            let lead = if s.leader.as_deref() == Some(m.name.as_str()) {
                "*"
            } else {
                ""
            };
            let role = match m.role {
                crate::crd::MemberRole::Voter => "voter",
                crate::crd::MemberRole::Learner => "learner",
            };
            let health = if m.healthy { "" } else { " (unhealthy)" };
            format!("{}{lead} {role} {}{health}", m.id, m.address)
        })
        .collect();
    format!(
        "term {} | {}{} | {}",
        s.term,
        if s.is(AVAILABLE) {
            "available"
        } else {
            "NOT available"
        },
        if s.is(RECONCILIATION_PAUSED) {
            " | paused (spec.paused)"
        } else {
            ""
        },
        members.join(", ")
    )
}

/// `raft-operator local down`: stops a cluster left running. It refuses while
/// an operator runs on the state dir, which would start the members again, and
/// holds the lock while it stops them, so that none starts meanwhile.
pub fn down(opts: &LocalOptions) -> anyhow::Result<()> {
    let (cluster, _, _) = load(&opts.file)?;
    let dir = cluster_dir(opts, &cluster)?;
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let _lock = match OperatorLock::take(&dir)? {
        Ok(lock) => lock,
        Err(held) => {
            let stop = match held.0 {
                Some(pid) => format!("Ctrl-C / kill {pid}"),
                None => "Ctrl-C / kill it".to_string(),
            };
            anyhow::bail!(
                "an operator ({held}) runs on {}: it would start the members again; \
                 stop it first ({stop}), then run local down",
                dir.display()
            )
        }
    };
    let mut rt = LocalRuntime::new(&dir, &name, opts.node_bin.clone(), &cluster.spec)?;
    let stopped = rt.stop_all()?;
    println!("stopped members {stopped:?} of {name}");
    Ok(())
}
