//! Runs a schedule against real `raft-node` processes: kill -9 and restart,
//! SIGSTOP/SIGCONT, partitions through the proxy mesh, restarts on a new
//! address followed by UpsertPeers on every other member, and membership
//! changes through the leader's admin API. A change the node refuses is a
//! normal outcome, counted. The leader is removed only as a probe, which the
//! node must refuse (transfer first) or carry out without losing writability.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raftlane_proto::admin::{MemberRequest, StatusResponse, UpsertPeersRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use crate::common::{Cluster, ELECTION};
use crate::history::History;
use crate::mesh::Mesh;
use crate::schedule::{Fault, Planned, Shape, Step, Target};
use crate::workload::{put_until_acknowledged, Endpoints};

/// Bound on any one admin call the nemesis makes.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(6);
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Voters the membership steps grow to before they remove one.
const MAX_VOTERS: usize = 4;
/// The harness can move a member to at most this many fresh addresses.
const MAX_READDRESSES: u32 = 14;
/// Client numbers of writability probes start here, clear of the workload's.
const PROBE_CLIENTS: usize = 1_000;

#[derive(Debug, Default, Clone)]
pub struct ChangeCounts {
    pub applied: usize,
    pub refused: usize,
    /// No answer, or not the leader any more: the change may or may not apply.
    pub failed: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub faults: BTreeMap<&'static str, usize>,
    /// By kind: add, readd, promote, remove, remove-leader.
    pub changes: BTreeMap<&'static str, ChangeCounts>,
    /// Distinct refusal messages, as the node worded them.
    pub refusals: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Add(u64),
    Readd(u64),
    Promote(u64),
    Remove(u64),
    /// A probe the node should refuse (transfer leadership first) or carry out
    /// as transfer-then-remove; either way the cluster must stay writable.
    RemoveLeader(u64),
}

impl Change {
    fn member(&self) -> u64 {
        match *self {
            Change::Add(id)
            | Change::Readd(id)
            | Change::Promote(id)
            | Change::Remove(id)
            | Change::RemoveLeader(id) => id,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Change::Add(_) => "add",
            Change::Readd(_) => "readd",
            Change::Promote(_) => "promote",
            Change::Remove(_) => "remove",
            Change::RemoveLeader(_) => "remove-leader",
        }
    }
}

/// A fault in force, and what undoes it.
enum Held {
    Killed(u64),
    Paused(u64),
    Partitioned,
    Nothing,
}

pub struct Nemesis {
    pub c: Cluster,
    mesh: Mesh,
    pub endpoints: Endpoints,
    rng: StdRng,
    /// The arguments each member was first started with (join mode: none).
    launch: BTreeMap<u64, Vec<String>>,
    paused: BTreeSet<u64>,
    /// Removed from the configuration and stopped; may be added back, wiped.
    removed: BTreeSet<u64>,
    /// Started to be added; not yet seen in the configuration.
    joining: BTreeSet<u64>,
    /// The configuration the acknowledged changes give: what every member's
    /// view is judged against, never taken from a member's own view.
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
    /// Members whose last change got no answer: it may or may not apply. Settled
    /// from the agreed leader's view once it has no change pending.
    uncertain: BTreeSet<u64>,
    history: Arc<History>,
    /// Broken promises seen during the run (the run fails on any).
    pub violations: Vec<String>,
    readdresses: BTreeMap<u64, u32>,
    /// Writability probes made so far (each writes as a client of its own).
    probes: usize,
    next_id: u64,
    pub counts: Counts,
}

impl Nemesis {
    /// `voters` initial voters, every peer link through a proxy.
    pub async fn start(seed: u64, voters: u64, extra: &[&str], history: Arc<History>) -> Nemesis {
        let c = Cluster::prepare(voters, extra);
        let mut n = Nemesis {
            c,
            mesh: Mesh::default(),
            endpoints: Arc::new(RwLock::new(BTreeMap::new())),
            rng: StdRng::seed_from_u64(seed.rotate_left(17)),
            launch: BTreeMap::new(),
            paused: BTreeSet::new(),
            removed: BTreeSet::new(),
            joining: BTreeSet::new(),
            voters: (1..=voters).collect(),
            learners: BTreeSet::new(),
            uncertain: BTreeSet::new(),
            history,
            violations: Vec::new(),
            readdresses: BTreeMap::new(),
            probes: 0,
            next_id: voters + 1,
            counts: Counts::default(),
        };
        let all: Vec<String> = (1..=voters).map(|i| i.to_string()).collect();
        for id in 1..=voters {
            n.mesh.connect(id, &n.peer_addrs()).await;
            let args = vec!["--initial-voters".to_string(), all.join(",")];
            n.launch(id, args);
        }
        n
    }

    fn launch(&mut self, id: u64, args: Vec<String>) {
        self.launch.insert(id, args);
        self.restart(id);
    }

    /// Starts `id` with its first arguments, its data and its current address.
    fn restart(&mut self, id: u64) {
        let args = self.launch[&id].clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.c.spawn_reaching(id, self.mesh.reach_of(id), &args);
        let client = self.c.members[&id].client.clone();
        self.endpoints
            .write()
            .expect("endpoints poisoned")
            .insert(id, client);
    }

    /// Peer addresses of every member not removed.
    fn peer_addrs(&self) -> BTreeMap<u64, String> {
        self.c
            .members
            .values()
            .filter(|m| !self.removed.contains(&m.id))
            .map(|m| (m.id, m.peer.clone()))
            .collect()
    }

    fn reachable(&self) -> Vec<u64> {
        self.c
            .running_ids()
            .into_iter()
            .filter(|id| !self.paused.contains(id))
            .collect()
    }

    pub async fn statuses(&self) -> BTreeMap<u64, StatusResponse> {
        let ids = self.reachable();
        let polls = ids
            .iter()
            .map(|id| self.c.status_within(*id, STATUS_TIMEOUT));
        let answers = futures::future::join_all(polls).await;
        ids.into_iter()
            .zip(answers)
            .filter_map(|(id, s)| Some((id, s?)))
            .collect()
    }

    /// The leader a majority of the acknowledged voters name, if it says it
    /// leads: a member that wrongly believes it is alone may lead itself too.
    pub async fn leader(&self) -> Option<(u64, StatusResponse)> {
        let mut all = self.statuses().await;
        let mut named: BTreeMap<u64, usize> = BTreeMap::new();
        for v in &self.voters {
            if let Some(s) = all.get(v).filter(|s| s.leader_id != 0) {
                *named.entry(s.leader_id).or_default() += 1;
            }
        }
        let quorum = self.voters.len() / 2 + 1;
        let (leader, _) = named.into_iter().find(|(_, n)| *n >= quorum)?;
        let s = all.remove(&leader)?;
        (s.role == "leader").then_some((leader, s))
    }

    pub async fn wait_leader(&self, within: Duration) -> Option<(u64, StatusResponse)> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Resolves a schedule target among the running members of the configuration.
    async fn resolve(&self, t: Target) -> Option<u64> {
        let leader = self.leader().await;
        let members: Vec<u64> = self
            .reachable()
            .into_iter()
            .filter(|id| !self.joining.contains(id))
            .collect();
        match (t, &leader) {
            (Target::Leader, Some((l, _))) => Some(*l),
            (Target::Leader, None) | (Target::Follower(_), _) => {
                let l = leader.as_ref().map(|(l, _)| *l);
                let followers: Vec<u64> = members.into_iter().filter(|m| Some(*m) != l).collect();
                let pick = match t {
                    Target::Follower(n) => n,
                    Target::Leader => 0,
                };
                (!followers.is_empty()).then(|| followers[(pick % followers.len() as u64) as usize])
            }
        }
    }

    pub async fn run_step(&mut self, p: Planned) {
        tokio::time::sleep(p.gap).await;
        self.note_exits();
        match p.step {
            Step::Fault(f) => {
                let (held, hold) = self.begin(f).await;
                tokio::time::sleep(hold).await;
                self.end(held);
            }
            Step::MembershipDuring(f) => {
                let (held, hold) = self.begin(f).await;
                let started = Instant::now();
                tokio::time::sleep(hold / 2).await;
                self.membership().await;
                tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
                self.end(held);
            }
            Step::Membership => self.membership().await,
        }
        self.sync_peers().await;
    }

    /// A member that exited without being killed (a divergence stops a member
    /// loudly) is a violation; it is restarted when everything is healed.
    fn note_exits(&mut self) {
        for m in self.c.members.values_mut() {
            let Some(child) = m.child.as_mut() else {
                continue;
            };
            if let Ok(Some(code)) = child.try_wait() {
                self.violations
                    .push(format!("member {} exited on its own ({code})", m.id));
                m.child = None;
            }
        }
    }

    fn count(&mut self, fault: &'static str) {
        *self.counts.faults.entry(fault).or_default() += 1;
    }

    /// Puts `f` in force; returns how to undo it and for how long to hold it.
    async fn begin(&mut self, f: Fault) -> (Held, Duration) {
        match f {
            Fault::Kill(t, hold) => match self.resolve(t).await {
                Some(id) => {
                    self.count("kill");
                    self.c.kill9(id);
                    (Held::Killed(id), hold)
                }
                None => (Held::Nothing, Duration::ZERO),
            },
            Fault::Pause(t, hold) => match self.resolve(t).await {
                Some(id) => {
                    self.count("pause");
                    self.c.signal(id, "STOP");
                    self.paused.insert(id);
                    (Held::Paused(id), hold)
                }
                None => (Held::Nothing, Duration::ZERO),
            },
            Fault::Partition(shape, hold) => {
                let side: BTreeSet<u64> = match shape {
                    Shape::Isolate(t) => self.resolve(t).await.into_iter().collect(),
                    Shape::SplitLeaderInMinority => {
                        let Some((l, s)) = self.leader().await else {
                            return (Held::Nothing, Duration::ZERO);
                        };
                        // The leader, with as many others as still leaves its side a minority.
                        let others: Vec<u64> =
                            s.voters.iter().copied().filter(|v| *v != l).collect();
                        let minority = (s.voters.len() - 1) / 2;
                        std::iter::once(l)
                            .chain(others.into_iter().take(minority.saturating_sub(1)))
                            .collect()
                    }
                };
                if side.is_empty() {
                    return (Held::Nothing, Duration::ZERO);
                }
                self.count("partition");
                self.mesh.isolate(&side);
                (Held::Partitioned, hold)
            }
            Fault::Readdress(t) => {
                if let Some(id) = self.resolve(t).await {
                    self.readdress(id).await;
                }
                (Held::Nothing, Duration::ZERO)
            }
        }
    }

    fn end(&mut self, held: Held) {
        match held {
            Held::Killed(id) if !self.removed.contains(&id) => self.restart(id),
            Held::Paused(id) if self.paused.remove(&id) => self.c.signal(id, "CONT"),
            Held::Partitioned => self.mesh.heal_all(),
            _ => {}
        }
    }

    /// kill -9, a fresh address, then every other member learns it by UpsertPeers.
    async fn readdress(&mut self, id: u64) {
        let moves = self.readdresses.entry(id).or_default();
        if *moves >= MAX_READDRESSES {
            return;
        }
        *moves += 1;
        self.count("readdress");
        self.c.kill9(id);
        self.c.readdress(id);
        self.mesh.drop_inbound(id);
        self.mesh.connect(id, &self.peer_addrs()).await;
        self.restart(id);
        self.upsert_everywhere(id).await;
    }

    /// Tells every other reachable member where it now reaches `id`.
    async fn upsert_everywhere(&self, id: u64) {
        let via = self.mesh.reached_by(id);
        for other in self.reachable().into_iter().filter(|o| *o != id) {
            if let Some(addr) = via.get(&other) {
                self.upsert(other, BTreeMap::from([(id, addr.clone())]))
                    .await;
            }
        }
    }

    /// Pushes every reachable member's whole proxy table: members paused or down
    /// during an UpsertPeers, or that learned a direct address from peer traffic,
    /// are routed through their proxies again.
    async fn sync_peers(&self) {
        for id in self.reachable() {
            self.upsert(id, self.mesh.reach_of(id)).await;
        }
    }

    async fn upsert(&self, on: u64, peers: BTreeMap<u64, String>) {
        let mut admin = self.c.admin(on).await;
        let call = admin.upsert_peers(UpsertPeersRequest {
            peers: peers.into_iter().collect(),
        });
        // A member that does not answer is pushed again after the next step.
        let _ = tokio::time::timeout(ADMIN_TIMEOUT, call).await;
    }

    /// The next membership change, decided from the acknowledged configuration.
    pub async fn membership(&mut self) {
        let Some((leader, s)) = self.wait_leader(Duration::from_secs(3)).await else {
            self.counts.changes.entry("no leader").or_default().failed += 1;
            return;
        };
        self.settle(&s);
        let change = if let Some(&l) = self.learners.first() {
            Change::Promote(l)
        } else if let Some(&j) = self.joining.first() {
            Change::Add(j)
        } else if self.voters.len() < MAX_VOTERS {
            let movable = |r: &u64| self.readdresses.get(r).copied().unwrap_or(0) < MAX_READDRESSES;
            match self.removed.iter().copied().find(movable) {
                Some(r) if self.rng.gen_bool(0.7) => Change::Readd(r),
                _ => Change::Add(self.next_id),
            }
        } else if self.rng.gen_bool(0.3) {
            Change::RemoveLeader(leader)
        } else {
            let followers: Vec<u64> = self
                .voters
                .iter()
                .copied()
                .filter(|v| *v != leader)
                .collect();
            Change::Remove(followers[self.rng.gen_range(0..followers.len())])
        };
        self.change(leader, change).await;
    }

    /// Takes the agreed leader's view for members whose change got no answer,
    /// once no change is pending (so none is still in flight).
    fn settle(&mut self, leader: &StatusResponse) {
        if leader.conf_change_pending {
            return;
        }
        for id in std::mem::take(&mut self.uncertain) {
            self.voters.remove(&id);
            self.learners.remove(&id);
            if leader.voters.contains(&id) {
                self.voters.insert(id);
                self.joining.remove(&id);
            } else if leader.learners.contains(&id) {
                self.learners.insert(id);
                self.joining.remove(&id);
            } else if !self.joining.contains(&id) {
                // Its removal applied. (A joiner absent here was never added.)
                self.retire(id);
            }
        }
    }

    async fn change(&mut self, leader: u64, change: Change) {
        let (id, kind) = (change.member(), change.kind());
        match change {
            Change::Add(id) if !self.joining.contains(&id) => self.start_joiner(id, false).await,
            Change::Readd(id) => self.start_joiner(id, true).await,
            _ => {}
        }
        let mut admin = self.c.admin(leader).await;
        let req = MemberRequest { id };
        let call = async {
            match change {
                Change::Add(_) | Change::Readd(_) => admin.add_learner(req).await,
                Change::Promote(_) => admin.promote_learner(req).await,
                Change::Remove(_) | Change::RemoveLeader(_) => admin.remove_member(req).await,
            }
        };
        let answer = tokio::time::timeout(ADMIN_TIMEOUT, call).await;
        let (applied, refusal) = match answer {
            Ok(Ok(_)) => (true, None),
            Ok(Err(s)) if refused(s.code(), s.message()) => (false, Some(s.message().to_string())),
            Ok(Err(_)) | Err(_) => (false, None),
        };
        let counts = self.counts.changes.entry(kind).or_default();
        match (applied, refusal) {
            (true, _) => counts.applied += 1,
            (false, Some(why)) => {
                counts.refused += 1;
                self.counts.refusals.insert(format!("{kind} {id}: {why}"));
            }
            (false, None) => {
                counts.failed += 1;
                self.uncertain.insert(id);
            }
        }
        if applied {
            match change {
                Change::RemoveLeader(id) => {
                    self.writable_without(id).await;
                    self.retire(id);
                }
                Change::Remove(id) => self.retire(id),
                Change::Add(id) | Change::Readd(id) => {
                    self.joining.remove(&id);
                    self.learners.insert(id);
                    self.wait_caught_up(leader, id).await;
                }
                Change::Promote(id) => {
                    self.learners.remove(&id);
                    self.voters.insert(id);
                }
            }
        }
    }

    /// Starts member `id` in join mode (no --initial-voters) behind its proxies,
    /// after every other member learned where to reach it.
    async fn start_joiner(&mut self, id: u64, wipe: bool) {
        if wipe {
            *self.readdresses.entry(id).or_default() += 1;
            self.c.readdress(id);
            let dir = self.c.members[&id].dir.clone();
            let _ = std::fs::remove_dir_all(&dir);
            self.removed.remove(&id);
        } else {
            self.c.add_member(id);
            self.next_id = self.next_id.max(id + 1);
        }
        self.mesh.connect(id, &self.peer_addrs()).await;
        self.upsert_everywhere(id).await;
        self.joining.insert(id);
        self.launch(id, Vec::new());
    }

    /// After the leader's own removal applied, the others must take a write
    /// within two election timeouts (plus slack for a loaded machine), while
    /// the removed member still runs.
    async fn writable_without(&mut self, removed: u64) {
        let others: BTreeMap<u64, String> = self
            .endpoints
            .read()
            .expect("endpoints poisoned")
            .iter()
            .filter(|(id, _)| **id != removed)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let within = ELECTION * 2 + Duration::from_secs(3);
        self.probes += 1;
        let writer = PROBE_CLIENTS + self.probes;
        let key = "key-after-leader-removal";
        let endpoints = Arc::new(RwLock::new(others));
        let dialer = self.c.dialer();
        if !put_until_acknowledged(
            writer,
            key,
            endpoints,
            self.history.clone(),
            within,
            &dialer,
        )
        .await
        {
            self.violations.push(format!(
                "no write acknowledged within {within:?} after leader {removed}'s removal applied"
            ));
        }
    }

    /// Waits (bounded) until `id` applied what the leader had committed.
    async fn wait_caught_up(&self, leader: u64, id: u64) {
        let Some(target) = self.c.status_within(leader, STATUS_TIMEOUT).await else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(s) = self.c.status_within(id, STATUS_TIMEOUT).await {
                if s.applied_index >= target.commit_index {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A member out of the configuration: stopped and unlinked, as the operator
    /// deletes a removed member's pod.
    fn retire(&mut self, id: u64) {
        self.c.kill9(id);
        self.paused.remove(&id);
        self.joining.remove(&id);
        self.uncertain.remove(&id);
        self.voters.remove(&id);
        self.learners.remove(&id);
        self.mesh.drop_member(id);
        self.endpoints
            .write()
            .expect("endpoints poisoned")
            .remove(&id);
        self.removed.insert(id);
    }

    /// Heals every link, resumes every paused member, restarts any member of
    /// the configuration that is down, and stops joiners that never got in.
    pub async fn heal_everything(&mut self) {
        self.note_exits();
        self.mesh.heal_all();
        for id in std::mem::take(&mut self.paused) {
            self.c.signal(id, "CONT");
        }
        let down: Vec<u64> = self
            .launch
            .keys()
            .copied()
            .filter(|id| !self.removed.contains(id) && self.c.members[id].child.is_none())
            .collect();
        for id in down {
            self.restart(id);
        }
        self.sync_peers().await;
    }

    /// Waits until one leader is followed by every member of its configuration,
    /// each member's own Status shows the leader's voters and learners, and each
    /// applied the leader's commit index. Returns every member's view, or what
    /// still disagreed at the deadline.
    pub async fn converge(&mut self, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let last = self.views_agree().await;
            if last.is_ok() || Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn views_agree(&mut self) -> Result<String, String> {
        let Some((leader, ls)) = self.leader().await else {
            return Err(format!(
                "no leader named by a majority of voters {:?}; {}",
                self.voters,
                describe(&self.statuses().await)
            ));
        };
        self.settle(&ls);
        let view = |s: &StatusResponse| {
            let (mut v, mut l) = (s.voters.clone(), s.learners.clone());
            v.sort();
            l.sort();
            (v, l)
        };
        let want = view(&ls);
        // Joiners whose add never applied are not members.
        for id in self.joining.clone() {
            if !want.0.contains(&id) && !want.1.contains(&id) {
                self.retire(id);
            }
        }
        let all = self.statuses().await;
        let mut problems = Vec::new();
        if ls.conf_change_pending {
            problems.push(format!("leader {leader} has a membership change pending"));
        }
        let acknowledged = (
            self.voters.iter().copied().collect::<Vec<_>>(),
            self.learners.iter().copied().collect::<Vec<_>>(),
        );
        if want != acknowledged && self.uncertain.is_empty() {
            problems.push(format!(
                "leader {leader}'s configuration is voters {:?} learners {:?}, the acknowledged changes give voters {:?} learners {:?}",
                want.0, want.1, acknowledged.0, acknowledged.1
            ));
        }
        // Every member still running must hold the leader's view.
        let members: BTreeSet<u64> = self
            .voters
            .iter()
            .chain(&self.learners)
            .copied()
            .chain(self.c.running_ids())
            .collect();
        for id in &members {
            let exited = self
                .c
                .members
                .get_mut(id)
                .and_then(|m| m.child.as_mut()?.try_wait().ok()?);
            if let Some(code) = exited {
                problems.push(format!("member {id} exited ({code})"));
                continue;
            }
            let Some(s) = all.get(id) else {
                problems.push(format!("member {id} does not answer Status"));
                continue;
            };
            if view(s) != want {
                problems.push(format!(
                    "member {id}'s own view is voters {:?} learners {:?}, leader {leader}'s is voters {:?} learners {:?}",
                    s.voters, s.learners, want.0, want.1
                ));
            }
            if s.leader_id != leader {
                problems.push(format!(
                    "member {id} follows {} at term {}, not {leader} at term {}",
                    s.leader_id, s.term, ls.term
                ));
            }
            if s.applied_index < ls.commit_index {
                problems.push(format!(
                    "member {id} applied {} of the leader's commit {}",
                    s.applied_index, ls.commit_index
                ));
            }
        }
        if problems.is_empty() {
            Ok(describe(&all))
        } else {
            Err(format!(
                "{}; views: {}",
                problems.join("; "),
                describe(&all)
            ))
        }
    }
}

/// Per member: role, term, configuration, applied index and first log index
/// (which stays at the start while nothing is compacted).
fn describe(all: &BTreeMap<u64, StatusResponse>) -> String {
    all.iter()
        .map(|(id, s)| {
            format!(
                "member {id}: {} term {} leader {} voters {:?} learners {:?} applied {} log from {}",
                s.role, s.term, s.leader_id, s.voters, s.learners, s.applied_index, s.first_log_index
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The node refused the change as invalid or unsafe (rather than "ask the leader").
fn refused(code: Code, message: &str) -> bool {
    let redirect = message.contains("not the leader") || message.contains("already in progress");
    matches!(code, Code::FailedPrecondition | Code::InvalidArgument) && !redirect
}
