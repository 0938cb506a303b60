//! `kubectl port-forward` children reaching member pods from the host: pod IPs
//! of a kind cluster are not routable from outside its Docker network.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::cmd::Kubectl;

/// From spawning kubectl to its local port accepting connections.
const READY: Duration = Duration::from_secs(15);

struct Forward {
    /// The pod the forward was opened to; a replaced pod needs a new one.
    uid: String,
    port: u16,
    child: Child,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live forwards by (pod, container port); killed when dropped.
pub struct Forwards {
    kube: Kubectl,
    logs: PathBuf,
    open: HashMap<(String, u16), Forward>,
}

/// A loopback port free right now, for kubectl to listen on.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Forwards {
    /// Forwards whose kubectl output goes to files in `logs`.
    pub fn new(kube: Kubectl, logs: &Path) -> Forwards {
        Forwards {
            kube,
            logs: logs.to_path_buf(),
            open: HashMap::new(),
        }
    }

    /// The loopback port forwarded to `remote` of `pod` (UID `uid`), opened anew
    /// when the pod was replaced or the previous kubectl exited.
    pub fn port(&mut self, pod: &str, uid: &str, remote: u16) -> anyhow::Result<u16> {
        let key = (pod.to_string(), remote);
        if let Some(f) = self.open.get_mut(&key) {
            if f.uid == uid && f.child.try_wait()?.is_none() {
                return Ok(f.port);
            }
        }
        self.open.remove(&key);
        let f = self.spawn(pod, uid, remote)?;
        let port = f.port;
        self.open.insert(key, f);
        Ok(port)
    }

    fn spawn(&self, pod: &str, uid: &str, remote: u16) -> anyhow::Result<Forward> {
        let port = free_port()?;
        let log_path = self.logs.join(format!("port-forward-{pod}-{remote}.log"));
        let log = File::create(&log_path)?;
        let child = self
            .kube
            .command(&[
                "port-forward",
                &format!("pod/{pod}"),
                &format!("{port}:{remote}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kubectl port-forward")?;
        let mut f = Forward {
            uid: uid.to_string(),
            port,
            child,
        };
        let deadline = Instant::now() + READY;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(f);
            }
            if let Some(status) = f.child.try_wait()? {
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                anyhow::bail!(
                    "port-forward to {pod}:{remote} exited ({status}): {}",
                    said.trim()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "port-forward to {pod}:{remote} not listening within {READY:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}
