//! Child processes the harness starts: each in its own process group, its
//! output in a log file, and stopped (SIGTERM, then SIGKILL after a grace
//! period) when its [`Process`] is dropped — also when a test panics.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A running child process and the file its stdout and stderr go to.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    /// Time it gets between SIGTERM and SIGKILL when dropped.
    pub grace: Duration,
}

/// Sends `signal` to the process group `pgid` (the child's own group).
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group only.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}

impl Process {
    /// Starts `cmd` with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Process> {
        let out = File::options().create(true).append(true).open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            grace: Duration::from_secs(10),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails when the process has exited, naming its log's last lines.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}); its log ({}) ends:\n{}",
                self.name,
                self.log.display(),
                tail_without_flags(&self.log, 30)
            );
        }
        Ok(())
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            signal_group(self.child.id(), libc::SIGKILL);
            return Some(s);
        }
        signal_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                // Anything it left behind in its group goes too.
                signal_group(self.child.id(), libc::SIGKILL);
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// SIGKILL to the group; returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        signal_group(self.child.id(), libc::SIGKILL);
        self.child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(self.grace);
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// [`tail`] without the `FLAG: --x=y` lines Kubernetes servers log at start.
pub fn tail_without_flags(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.contains("] FLAG: --")).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback TCP port nothing listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_process_and_its_group_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // A child of the child: it must go with the group.
        cmd.args(["-c", "sleep 300 & echo started; wait"]);
        let p = Process::spawn("sleeper", cmd, &dir.path().join("log")).unwrap();
        let pgid = p.id();
        let started = Instant::now();
        drop(p);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The killed grandchild is reaped by init, which may take a moment
        // on a loaded machine: the group must be gone within a bound.
        // SAFETY: signal 0 only checks whether the group exists.
        let alive = || unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(), "process group {pgid} survived");
    }
}
