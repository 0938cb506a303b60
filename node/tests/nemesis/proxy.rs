//! A loopback TCP proxy for one direction of one pair of members. Cutting it
//! drops every open connection and closes each new one as soon as it is
//! accepted, as a network partition does to a member that keeps redialling.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Proxy {
    /// Where the proxy listens: the address the source member dials.
    pub addr: String,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of `ip` and forwards every connection to `target`.
    pub async fn start(ip: &str, target: String) -> Proxy {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, target, cut_rx));
        Proxy { addr, cut, task }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    /// Aborting the accept loop drops its connection set, which aborts every pump.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: String, cut: watch::Receiver<bool>) {
    let mut pumps = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                if *cut.borrow() {
                    drop(inbound);
                    continue;
                }
                pumps.spawn(pump(inbound, target.clone(), cut.clone()));
            }
            Some(_) = pumps.join_next(), if !pumps.is_empty() => {}
        }
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn pump(mut inbound: TcpStream, target: String, mut cut: watch::Receiver<bool>) {
    let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&target));
    let Ok(Ok(mut outbound)) = connect.await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    tokio::select! {
        biased; // a cut wins over bytes waiting to be copied
        _ = cut.wait_for(|c| *c) => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on loopback; returns its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Sends `ping` and reads the answer; `None` if the connection closed.
    async fn ping(s: &mut TcpStream) -> Option<[u8; 4]> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf));
        read.await.expect("no answer within 5 s").ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn a_cut_proxy_drops_open_connections_and_closes_new_ones_until_healed() {
        let p = Proxy::start("127.0.0.1", echo().await).await;
        let mut open = TcpStream::connect(&p.addr).await.unwrap();
        assert_eq!(ping(&mut open).await, Some(*b"ping"));

        p.cut();
        assert_eq!(
            ping(&mut open).await,
            None,
            "the open connection was dropped"
        );
        let mut fresh = TcpStream::connect(&p.addr).await.unwrap();
        assert_eq!(ping(&mut fresh).await, None, "a new connection is closed");

        p.heal();
        let mut healed = TcpStream::connect(&p.addr).await.unwrap();
        assert_eq!(ping(&mut healed).await, Some(*b"ping"));
    }
}
