//! TLS on a listener's connections, for tonic's `serve_with_incoming`.
//!
//! Handshakes run in their own tasks (a slow or silent client never holds up
//! accepting others) and are bounded in time. A refused handshake is logged
//! with the reason rustls gives (an expired certificate says so) and counted.
//! Each request carries the connection's [`Caller`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

use crate::files::TlsSource;
use crate::identity::{Identity, Role};
use crate::limits::{Gate, Held};

/// Connections accepted but not yet taken by the server.
const ACCEPT_QUEUE: usize = 64;

/// Whether a port requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    /// Verified when presented (the client port under
    /// `--insecure-anonymous-clients`).
    Optional,
}

/// Which verified identities a port lets in at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Any identity of this member's cluster.
    Cluster,
    /// Only members of this member's cluster (the peer port).
    Members,
    /// Identities of this cluster that may use the data: all but the
    /// backup Jobs' (the client port).
    Clients,
}

/// TLS for one port of a member.
pub struct ServerTls {
    source: Arc<TlsSource>,
    auth: ClientAuth,
    admit: Admit,
    config: Mutex<Option<(u64, Arc<ServerConfig>)>>,
    /// Connections refused: failed or timed-out handshakes, identities not admitted.
    refused: Counter,
}

/// Who is on the other end of a connection: the request extension services
/// read to authorize a call.
#[derive(Clone, Debug)]
pub struct Caller {
    pub addr: Option<SocketAddr>,
    /// The verified identity; none on plaintext, or when no certificate was
    /// offered where one is optional.
    pub identity: Option<Identity>,
}

impl Caller {
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Caller> {
        req.extensions().get::<Caller>()
    }
}

impl ServerTls {
    /// `refused` counts the connections this port turns away.
    pub fn new(
        source: Arc<TlsSource>,
        auth: ClientAuth,
        admit: Admit,
        refused: Counter,
    ) -> Arc<ServerTls> {
        Arc::new(ServerTls {
            source,
            auth,
            admit,
            config: Mutex::new(None),
            refused,
        })
    }

    /// The config for the current material, rebuilt when it changed.
    fn config(&self) -> io::Result<Arc<ServerConfig>> {
        let generation = *self.source.subscribe().borrow();
        let mut cached = self.config.lock().expect("server tls poisoned");
        if let Some((g, cfg)) = cached.as_ref() {
            if *g == generation {
                return Ok(cfg.clone());
            }
        }
        let m = self.source.current();
        let creds = m.credentials.as_ref().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a server needs a certificate")
        })?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(m.roots.clone(), crate::provider());
        let verifier = match self.auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(io::Error::other)?;
        let mut cfg = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(creds.chain.clone(), creds.key.clone_key())
            .map_err(io::Error::other)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let cfg = Arc::new(cfg);
        *cached = Some((generation, cfg.clone()));
        Ok(cfg)
    }

    /// Checks the verified client identity against this port's admission rule.
    fn admit(&self, presented: Option<Identity>) -> Result<Option<Identity>, String> {
        let ours = self.source.current();
        let Some(ours) = ours.identity() else {
            return Err("this member has no identity".into());
        };
        match presented {
            None if self.auth == ClientAuth::Optional => Ok(None),
            None => Err("no client certificate".into()),
            Some(id) if id.cluster != ours.cluster => Err(format!(
                "{id} belongs to another cluster (this is {})",
                ours.cluster
            )),
            Some(id) if self.admit == Admit::Clients && id.role == Role::Backup => Err(format!(
                "{id} may take backups only; the client port is not for it"
            )),
            Some(id) if self.admit == Admit::Members && !matches!(id.role, Role::Member(_)) => Err(
                format!("{id} is not a member; the peer port serves members only"),
            ),
            Some(id) => Ok(Some(id)),
        }
    }

    async fn handshake(&self, tcp: Held<TcpStream>, within: Duration) -> Result<Conn, String> {
        let cfg = self.config().map_err(|e| e.to_string())?;
        let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp);
        let tls = match tokio::time::timeout(within, accept).await {
            Err(_) => return Err(format!("no handshake within {within:?}")),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(tls)) => tls,
        };
        let (tcp, session) = tls.get_ref();
        let presented = match session.peer_certificates().and_then(|c| c.first()) {
            None => None,
            Some(leaf) => Some(Identity::of_cert(leaf).map_err(|e| e.to_string())?),
        };
        let identity = self.admit(presented)?;
        let caller = Caller {
            addr: tcp.get_ref().peer_addr().ok(),
            identity,
        };
        Ok(Conn::Tls(Box::new(tls), caller))
    }
}

/// An accepted connection, plaintext or TLS, holding its slot of the port.
pub enum Conn {
    Plain(Held<TcpStream>),
    Tls(
        Box<tokio_rustls::server::TlsStream<Held<TcpStream>>>,
        Caller,
    ),
}

impl Connected for Conn {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        match self {
            Conn::Plain(tcp) => Caller {
                addr: tcp.get_ref().peer_addr().ok(),
                identity: None,
            },
            Conn::Tls(_, caller) => caller.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// The listener's connections with Nagle's algorithm off (small gRPC frames
/// such as a heartbeat must not wait for a delayed ACK, ~40 ms), within the
/// port's limits (`gate`), through TLS when `tls` is given. Ends when the
/// server drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    gate: Arc<Gate>,
) -> impl Stream<Item = io::Result<Conn>> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(ACCEPT_QUEUE);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = tokio::select! {
                _ = tx.closed() => return,
                a = gate.accept(&listener) => a,
            };
            let Some(tls) = tls.clone() else {
                if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            let Some(slot) = gate.handshake() else {
                continue;
            };
            let tx = tx.clone();
            let gate = gate.clone();
            let within = gate.limits().handshake_timeout;
            tokio::spawn(async move {
                let shaken = tls.handshake(tcp, within).await;
                drop(slot);
                match shaken {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(why) => {
                        tls.refused.inc();
                        gate.refused(Some(from), &format!("TLS: {why}"));
                    }
                }
            });
        }
    });
    tokio_stream_of(rx)
}

fn tokio_stream_of<T>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
