//! RaftClusterBackups in the local runtime: the manifest's RaftClusterBackup
//! documents, each taken when due (see [`crate::backup`]) by `raftctl
//! backup` run from the leader as the cluster's admin, into
//! `<state>/<cluster>/backups/<name>-<stamp>.rlb`, the newest `keep` kept
//! (raftctl's `--series <name> --keep N`). A backup runs as a child process
//! while passes go on, as a Job does on Kubernetes; its status is written to
//! `backups/<name>.status.yaml` (the CRD's status schema).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::backup::{self, Auth, BackupFile, RaftClusterBackup, RaftClusterBackupStatus};

/// A backup being taken.
struct Running {
    child: Child,
    file: PathBuf,
    started: String,
}

pub struct LocalBackups {
    dir: PathBuf,
    raftctl: PathBuf,
    running: BTreeMap<String, Running>,
}

/// Summary raftctl writes with `--summary-file`.
#[derive(serde::Deserialize)]
struct Summary {
    size: u64,
    crc32c: u32,
    index: u64,
}

impl LocalBackups {
    /// Backups of the cluster whose state is in `cluster_dir`, taken with the
    /// raftctl binary `raftctl`.
    pub fn new(cluster_dir: &Path, raftctl: PathBuf) -> LocalBackups {
        LocalBackups {
            dir: cluster_dir.join("backups"),
            raftctl,
            running: BTreeMap::new(),
        }
    }

    fn status_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.status.yaml"))
    }

    fn summary_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{name}.summary.json"))
    }

    /// The status of backup `name`, empty before its first.
    pub fn status(&self, name: &str) -> anyhow::Result<RaftClusterBackupStatus> {
        let path = self.status_path(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_yaml::from_str(&t).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }

    fn save(&self, name: &str, status: &RaftClusterBackupStatus) -> anyhow::Result<()> {
        let body = serde_yaml::to_string(status)?;
        crate::local::write_atomic(&self.status_path(name), body.as_bytes())
    }

    /// One pass over `backups`: finished ones recorded, due ones started
    /// from the member whose admin port is `leader` (none: recorded as a
    /// failure, tried again later). Returns what to print.
    pub fn pass(
        &mut self,
        backups: &[RaftClusterBackup],
        leader: Option<&str>,
        auth: &Auth,
    ) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("{}", self.dir.display()))?;
        let mut out = Vec::new();
        // A backup removed from the manifest: its run is stopped.
        let listed: Vec<String> = backups
            .iter()
            .filter_map(|b| b.metadata.name.clone())
            .collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !listed.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut run) = self.running.remove(&name) {
                let _ = run.child.kill();
                let _ = run.child.wait();
                out.push(format!(
                    "backup {name}: removed from the manifest, its run stopped"
                ));
            }
        }
        let now = jiff::Timestamp::now();
        for b in backups {
            let name = b.metadata.name.clone().unwrap_or_default();
            let mut status = self.status(&name)?;
            let before = status.clone();
            self.finish(&name, b.spec.keep, &mut status, &mut out)?;
            if backup::due(&b.spec, &status, now) {
                status.last_attempt = Some(now.to_string());
                match leader {
                    None => {
                        let why = "no member leads: no backup can be taken".to_string();
                        out.push(format!("backup {name}: {why} (retried)"));
                        backup::record_failure(&mut status, why);
                    }
                    Some(admin) => {
                        let file = self.dir.join(backup::file_name(&name, now));
                        let child = self.start(&name, b.spec.keep, admin, auth, &file)?;
                        out.push(format!(
                            "backup {name}: started from {admin} into {}",
                            file.display()
                        ));
                        status.job = Some(format!("raftctl pid {}", child.id()));
                        let started = now.to_string();
                        self.running.insert(
                            name.clone(),
                            Running {
                                child,
                                file,
                                started,
                            },
                        );
                    }
                }
            }
            backup::set_ready(&mut status, &now.to_string());
            if status != before {
                self.save(&name, &status)?;
            }
        }
        Ok(out)
    }

    /// Records backup `name`'s run if it ended (or was lost with an earlier
    /// operator).
    fn finish(
        &mut self,
        name: &str,
        keep: u32,
        status: &mut RaftClusterBackupStatus,
        out: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let Some(run) = self.running.get_mut(name) else {
            if status.job.is_some() {
                // Started by an operator that stopped: its child went with it.
                backup::record_failure(status, "the operator stopped during the backup".into());
            }
            return Ok(());
        };
        let Some(exit) = run.child.try_wait()? else {
            return Ok(());
        };
        let run = self.running.remove(name).expect("present");
        let log = self.dir.join(format!("{name}.log"));
        if !exit.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text.lines().last().unwrap_or("no output").to_string();
            out.push(format!("backup {name} failed ({exit}): {last}"));
            backup::record_failure(status, format!("raftctl backup {exit}: {last}"));
            return Ok(());
        }
        let summary_path = self.summary_path(name);
        let summary = std::fs::read(&summary_path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<Summary>(&b)?));
        let summary = match summary {
            Ok(s) => s,
            Err(e) => {
                let why = format!("{}: {e}", summary_path.display());
                out.push(format!("backup {name} failed: {why}"));
                backup::record_failure(status, why);
                return Ok(());
            }
        };
        out.push(format!(
            "backup {name}: {} ({} bytes, crc32c {:#010x}, index {})",
            run.file.display(),
            summary.size,
            summary.crc32c,
            summary.index
        ));
        let file = BackupFile {
            file: run.file.display().to_string(),
            time: run.started,
            size: Some(summary.size),
            crc32c: Some(summary.crc32c),
            index: Some(summary.index),
        };
        backup::record_success(status, file, keep);
        Ok(())
    }

    fn start(
        &self,
        name: &str,
        keep: u32,
        admin: &str,
        auth: &Auth,
        file: &Path,
    ) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let run = backup::Run {
            admin,
            auth,
            out: &file.display().to_string(),
            name,
            keep,
            summary: &self.summary_path(name).display().to_string(),
        };
        let mut cmd = Command::new(&self.raftctl);
        cmd.args(run.raftctl_args());
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.raftctl.display()))
    }

    /// Stops backups still running (Ctrl-C): a backup cut short leaves only
    /// a `.partial` file, and the next operator records it as failed.
    pub fn stop(&mut self) {
        for (_, mut run) in std::mem::take(&mut self.running) {
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(every: Option<&str>) -> RaftClusterBackup {
        let mut spec = serde_json::json!({"cluster": "demo", "keep": 2});
        if let Some(e) = every {
            spec["every"] = serde_json::json!(e);
        }
        crate::backup::parse_backup(&serde_json::json!({
            "apiVersion": "raftlane.io/v1alpha1", "kind": "RaftClusterBackup",
            "metadata": {"name": "nightly"}, "spec": spec,
        }))
        .unwrap()
    }

    /// A raftctl that fails the way a real one reports it: a line, an exit code.
    fn failing_raftctl(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("raftctl");
        std::fs::write(
            &bin,
            "#!/bin/sh\necho 'backup: --admin 127.0.0.1:1: cannot connect' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    #[test]
    fn a_failed_backup_is_recorded_with_raftctls_reason_and_no_leader_is_a_failure_too() {
        let tmp = tempfile::tempdir().unwrap();
        let mut taker = LocalBackups::new(tmp.path(), failing_raftctl(tmp.path()));
        let b = [backup(Some("1h"))];
        let out = taker.pass(&b, None, &Auth::Plaintext).unwrap();
        assert!(out[0].contains("no member leads"), "{out:?}");
        let s = taker.status("nightly").unwrap();
        assert_eq!(s.conditions[0].reason, "BackupFailed");
        assert!(s.job.is_none() && s.backups.is_empty());

        // Retried only after RETRY_AFTER: the next pass starts nothing.
        assert!(taker
            .pass(&b, Some("127.0.0.1:1"), &Auth::Plaintext)
            .unwrap()
            .is_empty());
        let mut s = taker.status("nightly").unwrap();
        s.last_attempt = Some("2020-01-01T00:00:00Z".into());
        taker.save("nightly", &s).unwrap();
        let out = taker
            .pass(&b, Some("127.0.0.1:1"), &Auth::Plaintext)
            .unwrap();
        assert!(out[0].starts_with("backup nightly: started"), "{out:?}");
        assert!(taker.status("nightly").unwrap().job.is_some());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = taker
                .pass(&b, Some("127.0.0.1:1"), &Auth::Plaintext)
                .unwrap();
            if let Some(line) = out.first() {
                assert!(line.contains("cannot connect"), "{line}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "raftctl never ended");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let s = taker.status("nightly").unwrap();
        assert!(s.last_error.unwrap().contains("cannot connect"));
        assert!(s.job.is_none());
    }

    #[test]
    fn a_backup_left_running_by_a_stopped_operator_is_recorded_as_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let taker = LocalBackups::new(tmp.path(), failing_raftctl(tmp.path()));
        std::fs::create_dir_all(tmp.path().join("backups")).unwrap();
        let s = RaftClusterBackupStatus {
            last_attempt: Some(jiff::Timestamp::now().to_string()),
            job: Some("raftctl pid 1".into()),
            ..Default::default()
        };
        taker.save("nightly", &s).unwrap();
        let mut next = LocalBackups::new(tmp.path(), failing_raftctl(tmp.path()));
        next.pass(&[backup(None)], None, &Auth::Plaintext).unwrap();
        let s = next.status("nightly").unwrap();
        assert!(s.job.is_none());
        assert!(s.last_error.unwrap().contains("operator stopped"));
    }
}
