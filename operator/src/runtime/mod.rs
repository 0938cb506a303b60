//! Where members run. The reconciler drives a [`Runtime`]: local processes
//! here, pods on Kubernetes; the planner never knows which.

pub mod local;

use std::collections::{BTreeMap, BTreeSet};

/// raft-node's exit code when `--expect-state` (set once a member's storage
/// has held state) finds its data dir empty: the storage was wiped. A runtime
/// that sees it retires that storage, so the planner finds the member without
/// any and treats it as one whose data is lost (removed, then added back).
pub const WIPED_EXIT_CODE: i32 = 66;

/// A member the runtime has now, and where it listens once it has an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// None while it exists without an address (a pod being scheduled or
    /// terminating): it is neither missing nor reachable.
    pub addrs: Option<Addrs>,
}

/// Where one member listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addrs {
    pub peer: String,
    pub client: String,
    pub admin: String,
}

impl Member {
    pub fn at(id: u64, peer: String, client: String, admin: String) -> Member {
        Member {
            id,
            addrs: Some(Addrs {
                peer,
                client,
                admin,
            }),
        }
    }

    pub fn peer_addr(&self) -> Option<&str> {
        self.addrs.as_ref().map(|a| a.peer.as_str())
    }
}

/// How members are started and stopped.
#[allow(async_fn_in_trait)]
pub trait Runtime {
    /// Members that exist now (a member that exited is not listed).
    async fn list(&mut self) -> anyhow::Result<Vec<Member>>;
    /// Starts member `id` with its data; `peers` are the others' current addresses.
    async fn create(
        &mut self,
        id: u64,
        initial_voters: Option<&BTreeSet<u64>>,
        peers: &BTreeMap<u64, String>,
    ) -> anyhow::Result<Member>;
    /// Stops member `id` (it has left the membership) and retires its data.
    async fn delete(&mut self, id: u64) -> anyhow::Result<()>;
    /// Members whose data holds raft state, running or not (as of the last
    /// `list`), or held it before being wiped: members are started on it with
    /// `--expect-state`, so a wiped one refuses to start. It may miss a member
    /// whose state was never confirmed (that only means initial voters it will
    /// ignore); it never names one that never held state.
    fn with_data(&self) -> anyhow::Result<BTreeSet<u64>>;
    /// Members whose storage exists (as of the last `list`), with state or not.
    fn with_storage(&self) -> anyhow::Result<BTreeSet<u64>>;
}
