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
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}
