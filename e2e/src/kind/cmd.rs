//! External commands with a deadline each: a hung API server, image build or
//! port-forward fails the suite instead of stalling it.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;

/// One kubectl call against a local kind cluster.
const KUBECTL: Duration = Duration::from_secs(30);

/// kind, kubectl and helm as `scripts/kind.sh` printed them (under .tools/);
/// set once by the kind environment before any of them runs.
static TOOL_PATHS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();

/// Records where each tool is (`name=path` lines of `scripts/kind.sh`).
pub fn set_tool_paths(paths: HashMap<String, PathBuf>) {
    let _ = TOOL_PATHS.set(paths);
}

/// A command running `name`: the path recorded for it, else `name` on PATH.
pub fn tool(name: &str) -> Command {
    match TOOL_PATHS.get().and_then(|m| m.get(name)) {
        Some(path) => Command::new(path),
        None => Command::new(name),
    }
}

/// Runs `f` on the blocking pool: the commands here wait on child processes.
pub async fn blocking<T, F>(f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Waits for `child`, killing it once `within` has passed.
pub fn wait_bounded(child: &mut Child, what: &str, within: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{what}: not done within {within:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        text
    })
}

/// Runs `cmd` to completion and returns its stdout; its stderr goes into the
/// error when it fails.
pub fn output(cmd: &mut Command, within: Duration) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_bounded(&mut child, &what, within)?;
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    anyhow::ensure!(status.success(), "{what}: {status}: {}", err.trim());
    Ok(out)
}

/// Runs `cmd` with its output shown as it goes (image builds, cluster creation).
pub fn run_shown(cmd: &mut Command, within: Duration) -> anyhow::Result<()> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let status = wait_bounded(&mut child, &what, within)?;
    anyhow::ensure!(status.success(), "{what}: {status}");
    Ok(())
}

/// kubectl bound to one kube context and namespace.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub context: String,
    pub namespace: String,
}

impl Kubectl {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = tool("kubectl");
        cmd.arg("--context")
            .arg(&self.context)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    /// One kubectl call, bounded by [`KUBECTL`], returning its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        output(&mut self.command(args), KUBECTL)
    }

    /// Restarts a Deployment's pods and waits for the rollout to finish.
    pub fn rollout_restart(&self, deployment: &str) -> anyhow::Result<()> {
        self.run(&["rollout", "restart", deployment])?;
        let status = ["rollout", "status", deployment, "--timeout=180s"];
        output(&mut self.command(&status), Duration::from_secs(200))?;
        Ok(())
    }
}

impl crate::kube_target::Kubectl for Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        Kubectl::command(self, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn output_returns_stdout_and_reports_stderr() {
        let out = output(&mut sh("echo hello"), Duration::from_secs(10)).unwrap();
        assert_eq!(out, "hello\n");
        let err = output(&mut sh("echo nope >&2; exit 3"), Duration::from_secs(10)).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let started = Instant::now();
        let err = output(&mut sh("sleep 30"), Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("not done within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
