//! Where members run. The reconciler drives a [`Runtime`]: local processes
//! here, pods on Kubernetes; the planner never knows which.

pub mod launch;
pub mod local;

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::Member;

/// raft-node's exit code when it expects state (its own `--state-marker`, or
/// the runtime's mark that the member's storage held state) and finds its
/// data dir empty: the storage was wiped. A runtime
/// that sees it retires that storage, so the planner finds the member without
/// any and treats it as one whose data is lost (removed, then added back).
pub const WIPED_EXIT_CODE: i32 = 66;

/// How members are started and stopped.
#[allow(async_fn_in_trait)]
pub trait Runtime {
    /// Members that exist now (a member that exited is not listed). With
    /// `repair`, what can never run again is cleared on the way (an ended
    /// pod, storage a member refused as wiped); a paused pass lists without.
    async fn list(&mut self, repair: bool) -> anyhow::Result<Vec<Member>>;
    /// Starts member `id` with its data; `peers` are the others' current addresses.
    async fn create(
        &mut self,
        id: u64,
        initial_voters: Option<&BTreeSet<u64>>,
        peers: &BTreeMap<u64, String>,
    ) -> anyhow::Result<Member>;
    /// Stops member `id` (it has left the membership) and retires its data.
    async fn delete(&mut self, id: u64) -> anyhow::Result<()>;
    /// Stops member `id` and starts it again on its data, at the spec's
    /// revision (a rolling update step). A runtime that cannot start it at
    /// once (a pod must be gone before it is created again) returns it
    /// unreachable; the next pass recreates it as a missing member.
    async fn restart(&mut self, id: u64, peers: &BTreeMap<u64, String>) -> anyhow::Result<Member>;
    /// Records, once per member, that the storage of members whose `Status`
    /// shows raft state ([`crate::plan::MemberReport::holds_state`]) holds it,
    /// so that every later start of theirs expects it.
    async fn record_state(&mut self, holding: &BTreeSet<u64>) -> anyhow::Result<()>;
    /// Members whose data holds raft state, running or not (as of the last
    /// `list`), or held it before being wiped: they are never given initial
    /// voters again, and a wiped one refuses to start. It may miss a member
    /// whose state was not recorded yet; raft-node's own state marker covers
    /// that window. It never names one that never held state.
    fn with_data(&self) -> anyhow::Result<BTreeSet<u64>>;
    /// Members whose storage exists (as of the last `list`), with state or not.
    fn with_storage(&self) -> anyhow::Result<BTreeSet<u64>>;
}
