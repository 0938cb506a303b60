//! What one listening port holds at once, whoever connects: open connections,
//! TLS handshakes in progress, and how long a connection may stay silent.
//!
//! Past a limit a new connection is closed at once and counted: a flood of
//! sockets costs a bounded number of descriptors and never starves the
//! connections already served. Each reason of refusal is logged at most
//! [`WARNINGS`] times per [`WARN_EVERY`] (and at most [`REASONS`] reasons),
//! the next line logged saying how many were not. A
//! connection from which nothing was read for the idle timeout is closed
//! (live HTTP/2 peers answer pings and send window updates, so only the
//! silent or the dead go).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Refusals logged per reason per [`WARN_EVERY`]; the rest are only counted.
pub const WARNINGS: u64 = 3;
/// Distinct reasons logged per port per [`WARN_EVERY`].
pub const REASONS: usize = 16;
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits of one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortLimits {
    /// Open connections; more are closed on accept.
    pub max_connections: usize,
    /// TLS handshakes in progress; more are closed on accept.
    pub max_handshakes: usize,
    /// A handshake not done within this is dropped.
    pub handshake_timeout: Duration,
    /// A connection nothing was read from for this long is closed.
    pub idle_timeout: Duration,
}

/// Handshakes in progress per port: 64 × the handshake timeout is what a
/// flood of silent sockets can hold.
pub const DEFAULT_MAX_HANDSHAKES: u32 = 64;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than any ping interval of a live peer (10 s) by far.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The limits of a port nobody configured (tools, tests): 1024 connections.
impl Default for PortLimits {
    fn default() -> Self {
        PortLimits {
            max_connections: 1024,
            max_handshakes: DEFAULT_MAX_HANDSHAKES as usize,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What a port counts, exported by whoever owns the metrics.
#[derive(Clone, Debug, Default)]
pub struct PortCounters {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed on accept: `max_connections` were open.
    pub refused_connections: Counter,
    /// Connections closed on accept: `max_handshakes` were in progress.
    pub refused_handshakes: Counter,
    /// Connections closed after `idle_timeout` of silence.
    pub idle_closed: Counter,
}

/// The admission state of one port: shared by its accept loop and every
/// connection it let in.
pub struct Gate {
    port: &'static str,
    limits: PortLimits,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    counters: PortCounters,
    /// Refusal log lines of the current window.
    warned: Mutex<Warned>,
}

#[derive(Default)]
struct Warned {
    since: Option<Instant>,
    /// Lines logged in this window, by reason.
    logged: HashMap<String, u64>,
    /// Refusals not logged since the last line.
    unlogged: u64,
}

impl Gate {
    pub fn new(port: &'static str, limits: PortLimits, counters: PortCounters) -> Arc<Gate> {
        Arc::new(Gate {
            port,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            limits,
            counters,
            warned: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &PortLimits {
        &self.limits
    }

    /// Lets `io` in when the port has room, else drops it (closing it).
    pub fn admit<IO>(self: &Arc<Self>, io: IO) -> Option<Held<IO>> {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.counters.refused_connections.inc();
            let max = self.limits.max_connections;
            self.refused(
                None,
                &format!("{max} open connections is this port's limit"),
            );
            return None;
        };
        self.counters.open.inc();
        Some(Held {
            io,
            gate: self.clone(),
            _permit: permit,
            idle: Box::pin(tokio::time::sleep(self.limits.idle_timeout)),
        })
    }

    /// The next connection of `listener` this port lets in, with Nagle's
    /// algorithm off (small frames such as a heartbeat must not wait for a
    /// delayed ACK, ~40 ms). Accept errors (out of descriptors and the like)
    /// back off and keep serving.
    pub async fn accept(self: &Arc<Self>, listener: &TcpListener) -> (Held<TcpStream>, SocketAddr) {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(port = self.port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%from, error = %e, "connection closed before set-up");
                continue;
            }
            if let Some(held) = self.admit(tcp) {
                return (held, from);
            }
        }
    }

    /// A slot for one TLS handshake, or none (the caller drops the connection).
    pub fn handshake(&self) -> Option<OwnedSemaphorePermit> {
        match self.handshakes.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.counters.refused_handshakes.inc();
                let max = self.limits.max_handshakes;
                self.refused(
                    None,
                    &format!("{max} TLS handshakes in progress is this port's limit"),
                );
                None
            }
        }
    }

    /// Logs a refused connection, within the port's budget of log lines.
    pub fn refused(&self, from: Option<SocketAddr>, reason: &str) {
        let mut w = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if w.since.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            w.since = Some(Instant::now());
            w.logged.clear();
        }
        let room = w.logged.len() < REASONS || w.logged.contains_key(reason);
        let n = w.logged.get(reason).copied().unwrap_or(0);
        if !room || n >= WARNINGS {
            w.unlogged += 1;
            return;
        }
        w.logged.insert(reason.to_string(), n + 1);
        let unlogged = std::mem::take(&mut w.unlogged);
        let from = from.map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(port = self.port, %from, reason, unlogged, "connection refused");
    }
}

/// A connection let in by a [`Gate`]: holds its slot until dropped, and
/// fails its next read once nothing was read for the idle timeout.
pub struct Held<IO> {
    io: IO,
    gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
}

impl<IO> Held<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO> Drop for Held<IO> {
    fn drop(&mut self) {
        self.gate.counters.open.dec();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Held<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + me.gate.limits.idle_timeout;
                    me.idle.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match me.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    me.gate.counters.idle_closed.inc();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing read for {:?}", me.gate.limits.idle_timeout),
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Held<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max_connections: usize, idle_ms: u64) -> PortLimits {
        PortLimits {
            max_connections,
            max_handshakes: 1,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_millis(idle_ms),
        }
    }

    #[tokio::test]
    async fn past_the_limit_connections_are_refused_until_one_closes() {
        let counters = PortCounters::default();
        let gate = Gate::new("test", limits(2, 60_000), counters.clone());
        let a = gate.admit(()).unwrap();
        let _b = gate.admit(()).unwrap();
        assert!(gate.admit(()).is_none());
        assert_eq!(counters.refused_connections.get(), 1);
        assert_eq!(counters.open.get(), 2);
        drop(a);
        assert_eq!(counters.open.get(), 1);
        assert!(gate.admit(()).is_some());
        let _h = gate.handshake().unwrap();
        assert!(gate.handshake().is_none());
        assert_eq!(counters.refused_handshakes.get(), 1);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_a_talking_one_is_not() {
        let counters = PortCounters::default();
        let gate = Gate::new("test", limits(4, 300), counters.clone());
        let (mut client, server) = tokio::io::duplex(64);
        let mut held = gate.admit(server).unwrap();
        let mut buf = [0u8; 8];
        // Bytes every 100 ms keep it open past the 300 ms timeout.
        let mut last = Instant::now();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(held.read(&mut buf).await.unwrap(), 1);
            last = Instant::now();
        }
        let err = held.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            last.elapsed() >= Duration::from_millis(290),
            "{:?}",
            last.elapsed()
        );
        assert_eq!(counters.idle_closed.get(), 1);
    }
}
