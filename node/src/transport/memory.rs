//! An in-process network for deterministic tests: members exchange messages
//! through it with partitions, a drop rate and delays drawn from a seeded RNG.
//! Under a paused tokio clock on one thread, the same seed replays the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::prelude::{Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::receiver::{install_received, Receiver};
use super::report::{Report, ReportSender};
use super::Transport;
use crate::state_machine::KvStateMachine;
use crate::storage::SnapshotStore;

/// The shared medium of an in-memory cluster, and its fault controls.
pub struct MemoryNetwork {
    state: Mutex<NetState>,
}

struct NetState {
    rng: StdRng,
    members: BTreeMap<u64, Arc<Receiver>>,
    /// Directed links that lose every message.
    cut: BTreeSet<(u64, u64)>,
    drop_rate: f64,
    delay: (Duration, Duration),
    delivered: u64,
    lost: u64,
}

impl MemoryNetwork {
    pub fn new(seed: u64) -> Arc<MemoryNetwork> {
        Arc::new(MemoryNetwork {
            state: Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed),
                members: BTreeMap::new(),
                cut: BTreeSet::new(),
                drop_rate: 0.0,
                delay: (Duration::from_millis(1), Duration::from_millis(5)),
                delivered: 0,
                lost: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("memory network poisoned")
    }

    /// Makes `receiver` reachable as its member id.
    pub fn attach(&self, receiver: Arc<Receiver>) {
        self.lock().members.insert(receiver.id, receiver);
    }

    /// The transport one member uses to send into this network.
    pub fn transport(
        self: &Arc<Self>,
        id: u64,
        reports: ReportSender,
        snapshots: SnapshotStore,
    ) -> MemoryTransport {
        MemoryTransport {
            id,
            net: self.clone(),
            reports,
            snapshots,
        }
    }

    /// Cuts every link between the two sides, both directions.
    pub fn partition(&self, side_a: &[u64], side_b: &[u64]) {
        let mut st = self.lock();
        for &a in side_a {
            for &b in side_b {
                st.cut.insert((a, b));
                st.cut.insert((b, a));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Fraction of messages lost on links that are not cut.
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().drop_rate = rate;
    }

    pub fn set_delay(&self, min: Duration, max: Duration) {
        self.lock().delay = (min, max);
    }

    /// (delivered, lost) message counts so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.delivered, st.lost)
    }
}

/// One member's handle on a [`MemoryNetwork`].
pub struct MemoryTransport {
    id: u64,
    net: Arc<MemoryNetwork>,
    reports: ReportSender,
    snapshots: SnapshotStore,
}

/// Copies a snapshot file into the receiver's store and loads it, as
/// `SendSnapshot` would (on this thread, so a seed still replays the same run).
fn copy_snapshot(
    from: &SnapshotStore,
    to: &SnapshotStore,
    m: &Message,
) -> io::Result<KvStateMachine> {
    let meta = m.get_snapshot().get_metadata();
    let mut src = std::fs::File::open(from.path(meta.term, meta.index))?;
    let (mut file, tmp) = to.create_incoming(meta.term, meta.index)?;
    if let Err(e) = io::copy(&mut src, &mut file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    install_received(to, file, &tmp, meta.term, meta.index)
}

impl Transport for MemoryTransport {
    fn send(&self, msgs: Vec<Message>) {
        let mut st = self.net.lock();
        for m in msgs {
            if raft::raw_node::is_local_msg(m.get_msg_type()) {
                continue;
            }
            let is_snap = m.get_msg_type() == MessageType::MsgSnapshot;
            let target = st.members.get(&m.to).cloned();
            let rate = st.drop_rate;
            let lose = st.cut.contains(&(self.id, m.to)) || st.rng.gen_bool(rate);
            let (lo, hi) = st.delay;
            let delay = st.rng.gen_range(lo..=hi);
            let Some(target) = target.filter(|_| !lose) else {
                st.lost += 1;
                self.reports.post(if is_snap {
                    Report::Snapshot {
                        to: m.to,
                        finished: false,
                    }
                } else {
                    Report::Unreachable(m.to)
                });
                continue;
            };
            st.delivered += 1;
            let reports = self.reports.clone();
            let source = self.snapshots.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if !is_snap {
                    target.inbox.try_deliver(m);
                    return;
                }
                let to = m.to;
                let loaded = copy_snapshot(&source, &target.snapshots, &m);
                let ok = target.hand_over(m, loaded).await.is_ok();
                reports.post(Report::Snapshot { to, finished: ok });
            });
        }
    }
}
