//! Members reach each other only through per-pair proxies (one per direction),
//! so any set of links can be cut while clients still reach every member.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use crate::proxy::Proxy;

#[derive(Default)]
pub struct Mesh {
    /// (from, to) → the proxy `from` dials to reach `to`.
    links: BTreeMap<(u64, u64), Proxy>,
}

impl Mesh {
    /// Proxies between `id` (whose peer port is `addrs[&id]`) and every other
    /// member in `addrs`, in both directions; existing links are kept.
    pub async fn connect(&mut self, id: u64, addrs: &BTreeMap<u64, String>) {
        for (&other, addr) in addrs.iter().filter(|(o, _)| **o != id) {
            if let Entry::Vacant(e) = self.links.entry((other, id)) {
                e.insert(Proxy::start(ip_of(&addrs[&id]), addrs[&id].clone()).await);
            }
            if let Entry::Vacant(e) = self.links.entry((id, other)) {
                e.insert(Proxy::start(ip_of(addr), addr.clone()).await);
            }
        }
    }

    /// Forgets every link into `id` (its address changed or it left).
    pub fn drop_inbound(&mut self, id: u64) {
        self.links.retain(|(_, to), _| *to != id);
    }

    /// Forgets every link of `id`.
    pub fn drop_member(&mut self, id: u64) {
        self.links.retain(|(from, to), _| *from != id && *to != id);
    }

    /// Where `from` reaches each peer: the `--peers` it starts with.
    pub fn reach_of(&self, from: u64) -> BTreeMap<u64, String> {
        self.links
            .iter()
            .filter(|((f, _), _)| *f == from)
            .map(|((_, to), p)| (*to, p.addr.clone()))
            .collect()
    }

    /// Where `to` is reached by each member: what `UpsertPeers` tells them.
    pub fn reached_by(&self, to: u64) -> BTreeMap<u64, String> {
        self.links
            .iter()
            .filter(|((_, t), _)| *t == to)
            .map(|((from, _), p)| (*from, p.addr.clone()))
            .collect()
    }

    /// Cuts both directions of every link between `side` and the rest.
    pub fn isolate(&self, side: &BTreeSet<u64>) {
        for ((from, to), p) in &self.links {
            if side.contains(from) != side.contains(to) {
                p.cut();
            }
        }
    }

    pub fn heal_all(&self) {
        for p in self.links.values() {
            p.heal();
        }
    }
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(addr)
}
