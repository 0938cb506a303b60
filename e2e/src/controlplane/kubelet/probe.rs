//! Container probes against the pod's own IP: `httpGet` (HTTP/1.1, a
//! 200-399 status passes), `tcpSocket` and `grpc` (a connection passes).
//! `exec` probes are not run by the process kubelet and always pass.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A probe of one container and its counters.
pub struct ProbeState {
    pub probe: Probe,
    /// Resolved port (a named port is looked up in the container's ports).
    port: Option<u16>,
    next: Instant,
    pub successes: i32,
    pub failures: i32,
}

impl ProbeState {
    pub fn new(probe: &Probe, container: &Container, started: Instant) -> ProbeState {
        let port = probe_port(probe, container);
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        ProbeState {
            probe: probe.clone(),
            port,
            next: started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }

    pub fn success_threshold(&self) -> i32 {
        self.probe.success_threshold.unwrap_or(1).max(1)
    }

    pub fn failure_threshold(&self) -> i32 {
        self.probe.failure_threshold.unwrap_or(3).max(1)
    }

    /// Records one result; the next run is a period later.
    pub fn record(&mut self, ok: bool, now: Instant) {
        self.next = now + self.period();
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
    }

    /// Runs the probe once against `ip`.
    pub async fn run(&self, ip: Ipv4Addr) -> bool {
        let timeout = Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        let p = &self.probe;
        let Some(port) = self.port else {
            // exec: not run here.
            return p.exec.is_some();
        };
        let addr = (ip, port);
        let attempt = async {
            if let Some(h) = &p.http_get {
                let path = h.path.as_deref().unwrap_or("/");
                http_ok(addr, path).await
            } else {
                TcpStream::connect(addr).await.is_ok()
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(false)
    }
}

fn named_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn probe_port(p: &Probe, container: &Container) -> Option<u16> {
    if let Some(h) = &p.http_get {
        named_port(container, &h.port)
    } else if let Some(t) = &p.tcp_socket {
        named_port(container, &t.port)
    } else if let Some(g) = &p.grpc {
        u16::try_from(g.port).ok()
    } else {
        None
    }
}

async fn http_ok(addr: (Ipv4Addr, u16), path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: kube-probe/raftlane-e2e\r\nConnection: close\r\n\r\n",
        addr.0, addr.1
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.1 200 ..."
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|code| (200..400).contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_probe_reads_the_status_code() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let resp = format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        assert!(http_ok((Ipv4Addr::LOCALHOST, port), "/healthz").await);
        assert!(!http_ok((Ipv4Addr::LOCALHOST, port), "/readyz").await);
    }
}
