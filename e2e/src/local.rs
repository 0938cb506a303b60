//! [`Target`] on the local runtime: `raft-operator local` runs as a child
//! process over a manifest in a temporary folder; scaling edits that file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use raft_operator::backup::RaftClusterBackupStatus;
use raft_operator::crd::RaftClusterStatus;
use raftlane_tls::Dialer;

use crate::Target;

const NAME: &str = "e2e";

pub struct LocalTarget {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    operator: Option<Child>,
    /// The cluster's name.
    name: String,
    /// The manifest's spec, as edits leave it.
    spec: serde_json::Value,
    /// RaftClusterBackup documents of the manifest, by name: their specs
    /// (`cluster` aside).
    backups: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Where cargo put this workspace's binaries (next to the test's `deps/`).
pub(crate) fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary outside a cargo target dir")?
        .to_path_buf();
    for bin in ["raft-operator", "raft-node"] {
        anyhow::ensure!(
            dir.join(bin).exists(),
            "{} missing: build the workspace first (cargo build --workspace)",
            dir.join(bin).display()
        );
    }
    Ok(dir)
}

impl LocalTarget {
    /// Writes a manifest of `replicas` members and starts the operator on it.
    pub fn start(replicas: u32) -> anyhow::Result<LocalTarget> {
        LocalTarget::start_named(NAME, replicas, serde_json::json!({}))
    }

    /// Cluster `name` of `replicas` members, `spec` merged into its spec.
    fn start_named(
        name: &str,
        replicas: u32,
        spec: serde_json::Value,
    ) -> anyhow::Result<LocalTarget> {
        let mut t = LocalTarget {
            dir: tempfile::tempdir()?,
            bin_dir: bin_dir()?,
            operator: None,
            name: name.into(),
            spec: serde_json::json!({
                "replicas": replicas,
                "raft": {"tickMs": 50, "electionTicks": 10, "heartbeatTicks": 2},
            }),
            backups: Default::default(),
        };
        crate::manifests::merge(&mut t.spec, spec);
        t.write_manifest()?;
        t.spawn_operator(None)?;
        Ok(t)
    }

    /// Writes the manifest as an edit is saved: whole, then renamed in. The
    /// RaftCluster first, then a document per RaftClusterBackup.
    fn write_manifest(&self) -> anyhow::Result<()> {
        let path = self.dir.path().join("cluster.yaml");
        let tmp = path.with_extension("tmp");
        let cluster = serde_json::json!({
            "apiVersion": "raftlane.io/v1alpha1",
            "kind": "RaftCluster",
            "metadata": {"name": self.name},
            "spec": self.spec,
        });
        let mut text = serde_yaml::to_string(&cluster)?;
        for (name, spec) in &self.backups {
            let backup = crate::manifests::backup(name, &self.name, spec.clone());
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(&backup)?);
        }
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state").join(&self.name)
    }

    fn spawn_operator(&mut self, failpoint: Option<&str>) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("operator.log"))?;
        let mut cmd = Command::new(self.bin_dir.join("raft-operator"));
        cmd.arg("local")
            .arg("-f")
            .arg(self.dir.path().join("cluster.yaml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(f) = failpoint {
            cmd.env(raft_operator::reconcile::FAILPOINT_ENV, f);
        }
        self.operator = Some(cmd.spawn().context("starting raft-operator")?);
        Ok(())
    }

    fn record(&self, id: u64) -> anyhow::Result<Option<serde_yaml::Value>> {
        match fs::read_to_string(self.state().join(format!("member-{id}.json"))) {
            Ok(t) => Ok(Some(serde_yaml::from_str(&t)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The operator's output so far, for failure messages.
    pub fn operator_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default()
    }
}

impl Target for LocalTarget {
    async fn scale(&mut self, replicas: u32) -> anyhow::Result<()> {
        self.patch_spec(serde_json::json!({ "replicas": replicas }))
            .await
    }

    async fn patch_spec(&mut self, spec: serde_json::Value) -> anyhow::Result<()> {
        crate::manifests::merge(&mut self.spec, spec);
        self.write_manifest()
    }

    async fn rollout_image(&mut self, works: bool) -> anyhow::Result<String> {
        use std::os::unix::fs::PermissionsExt;
        let bin = match works {
            true => {
                // Copied once: members may be running it.
                // Named unlike raft-node: members are known by their data
                // dir, not by the binary's name.
                let bin = self.dir.path().join("node-v2");
                if !bin.exists() {
                    fs::copy(self.bin_dir.join("raft-node"), &bin)?;
                }
                bin
            }
            false => {
                let bin = self.dir.path().join("node-broken");
                fs::write(
                    &bin,
                    "#!/bin/sh\necho 'node-broken: this build exits at start' >&2\nexit 1\n",
                )?;
                fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
                bin
            }
        };
        Ok(bin.display().to_string())
    }

    async fn apply_backup(&mut self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.backups.insert(name.into(), spec);
        self.write_manifest()
    }

    async fn backup_status(&self, name: &str) -> anyhow::Result<Option<RaftClusterBackupStatus>> {
        let path = self
            .state()
            .join("backups")
            .join(format!("{name}.status.yaml"));
        match fs::read_to_string(path) {
            Ok(t) => Ok(Some(serde_yaml::from_str(&t)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn new_cluster(
        &mut self,
        name: &str,
        replicas: u32,
        spec: serde_json::Value,
    ) -> anyhow::Result<LocalTarget> {
        LocalTarget::start_named(name, replicas, spec)
    }

    async fn break_member(&mut self, id: u64) -> anyhow::Result<()> {
        let data = self.state().join(format!("member-{id}"));
        fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        fs::write(&data, b"not a directory\n")?;
        self.kill_member(id).await
    }

    async fn status(&self) -> anyhow::Result<Option<RaftClusterStatus>> {
        match fs::read_to_string(self.state().join("status.yaml")) {
            Ok(t) => Ok(Some(serde_yaml::from_str(&t)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        let text = fs::read_to_string(self.state().join("endpoints"))?;
        Ok(text
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    }

    async fn admin(&self, id: u64) -> anyhow::Result<String> {
        let rec = self
            .record(id)?
            .with_context(|| format!("member {id} has no record"))?;
        // Members bind their own ports: the record has them once the
        // operator read what raft-node reported (callers poll until then).
        match rec["admin"].as_str() {
            Some(a) => Ok(a.to_string()),
            None => anyhow::bail!("member {id} has no address yet"),
        }
    }

    async fn dialer_for(&self, user: &str) -> anyhow::Result<Dialer> {
        let tls = self.state().join("tls");
        let read =
            |f: &str| fs::read(tls.join(f)).with_context(|| format!("{}", tls.join(f).display()));
        let ca = read("trust.crt").or_else(|_| read("ca.crt"))?;
        let (cert, key) = (read(&format!("{user}.crt"))?, read(&format!("{user}.key"))?);
        crate::dialer_from_pem(&cert, &key, &ca)
    }

    async fn kill_member(&mut self, id: u64) -> anyhow::Result<()> {
        let pid = self
            .incarnation(id)
            .await?
            .with_context(|| format!("member {id} is not running"))?;
        let ok = Command::new("kill").args(["-9", &pid]).status()?.success();
        anyhow::ensure!(ok, "kill -9 {pid} failed");
        Ok(())
    }

    async fn kill_process(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill_member(id).await
    }

    async fn wipe_member(&mut self, id: u64) -> anyhow::Result<()> {
        let data = self.state().join(format!("member-{id}"));
        for sub in ["raft", "snapshots"] {
            let dir = data.join(sub);
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        self.kill_member(id).await
    }

    async fn lose_member(&mut self, id: u64) -> anyhow::Result<()> {
        // Data first, while the process still runs: the operator must never
        // see it stopped with its data in place.
        let data = self.state().join(format!("member-{id}"));
        fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        self.kill_member(id).await
    }

    async fn incarnation(&self, id: u64) -> anyhow::Result<Option<String>> {
        let Some(rec) = self.record(id)? else {
            return Ok(None);
        };
        // A record is written before its process starts, without a pid.
        let Some(pid) = rec["pid"].as_u64() else {
            return Ok(None);
        };
        Ok(Path::new(&format!("/proc/{pid}"))
            .exists()
            .then(|| pid.to_string()))
    }

    async fn restart_operator(&mut self, failpoint: Option<&str>) -> anyhow::Result<()> {
        if let Some(mut op) = self.operator.take() {
            // SIGKILL the operator alone: its members keep running, as pods do.
            let _ = op.kill();
            let _ = op.wait();
        }
        self.spawn_operator(failpoint)
    }

    async fn operator_exited(&mut self) -> anyhow::Result<bool> {
        Ok(match &mut self.operator {
            Some(op) => op.try_wait()?.is_some(),
            None => true,
        })
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- operator log ---\n{}", self.operator_log());
        }
        if let Some(mut op) = self.operator.take() {
            let _ = op.kill();
            let _ = op.wait();
        }
        let _ = Command::new(self.bin_dir.join("raft-operator"))
            .arg("local")
            .arg("down")
            .arg("-f")
            .arg(self.dir.path().join("cluster.yaml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .stdout(Stdio::null())
            .status();
    }
}
