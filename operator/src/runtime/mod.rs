//! Where members run. The reconciler drives a [`Runtime`]: local processes
//! here, pods on Kubernetes; the planner never knows which.

pub mod local;

use std::collections::{BTreeMap, BTreeSet};

/// A member the runtime runs now, and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub peer_addr: String,
    pub client_addr: String,
    pub admin_addr: String,
}

/// How members are started and stopped.
#[allow(async_fn_in_trait)]
pub trait Runtime {
    /// Members running now (a member that exited is not listed).
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
    /// Members whose data holds state, running or not.
    fn with_data(&self) -> anyhow::Result<BTreeSet<u64>>;
}
