//! The raft loop: one task owns `RawNode`. It ticks, steps inbound messages,
//! serves requests, and processes each `Ready` in the order raft-rs documents:
//! send messages, install a snapshot, apply committed entries, persist entries and
//! hard state (fsync), send the messages that waited for persistence, advance.

mod handle;
mod membership;

pub use handle::{
    MembershipChange, NodeError, NodeHandle, NodeStatus, Query, QueryResult, Request, WriteOutcome,
};

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot, SnapshotMetadata,
};
use raft::{ProgressState, RawNode, ReadOnlyOption, StateRole, Storage};
use raftlane_proto::kv::LogCommand;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use self::membership::{LeaderView, PeerHealth};
use crate::metrics::{Kind, Metrics};
use crate::state_machine::{Applied, KvStateMachine};
use crate::storage::{member_ids, LogStore, SnapshotStore, StagedSnapshot};
use crate::transport::inbox::InboxReceiver;
use crate::transport::report::Report;
use crate::transport::Transport;

/// Inbound messages stepped per wake-up before other work gets a turn.
const MAX_DRAIN: usize = 256;
/// Client and admin requests served per turn of the loop, whatever woke it, so
/// sustained replication traffic cannot starve them.
const MAX_REQUESTS_PER_TURN: usize = 64;
/// A ReadIndex with no answer after this many ticks is issued again: the leader
/// it went to may have lost leadership, or dropped it before its first commit.
const READ_RETRY_TICKS: u64 = 5;
/// Largest total size of entries in one append message.
const MAX_SIZE_PER_MSG: u64 = 1 << 20;

/// Settings of the raft loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_entries: u64,
    pub max_inflight_msgs: usize,
    /// A learner is promoted only when it matched within this many entries of
    /// the leader's last index.
    pub max_promote_lag: u64,
    /// Fixed election timeout range `[min, max)` in ticks, for deterministic tests;
    /// `None` uses raft-rs's `[election, 2 × election)`.
    pub election_range: Option<(usize, usize)>,
}

/// Entry and ReadIndex contexts carry (member, incarnation, request id), so the
/// member that proposed can answer when it applies. The incarnation is random per
/// process start: request ids restart at 1, and an entry proposed before a restart
/// must never answer a request made after it.
fn context(member: u64, incarnation: u64, req: u64) -> Vec<u8> {
    [member, incarnation, req]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn parse_context(c: &[u8]) -> Option<(u64, u64, u64)> {
    let word = |i: usize| {
        Some(u64::from_le_bytes(
            c.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    Some((word(0)?, word(1)?, word(2)?))
}

fn storage_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

type ReadReply = oneshot::Sender<Result<QueryResult, NodeError>>;

struct PendingWrite {
    reply: oneshot::Sender<Result<WriteOutcome, NodeError>>,
    started: Instant,
}

struct PendingRead {
    query: Query,
    reply: ReadReply,
    ctx: Vec<u8>,
    /// The tick it was last issued at; `None` while deferred.
    issued: Option<u64>,
}

struct Transfer {
    to: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), NodeError>>,
}

pub struct RaftLoop {
    cfg: LoopConfig,
    node: RawNode<LogStore>,
    sm: KvStateMachine,
    snapshots: SnapshotStore,
    transport: Arc<dyn Transport>,
    metrics: Metrics,
    conf_state: ConfState,
    incarnation: u64,
    next_req: u64,
    writes: HashMap<u64, PendingWrite>,
    changes: HashMap<u64, oneshot::Sender<Result<u64, NodeError>>>,
    reads: HashMap<u64, PendingRead>,
    /// Reads held back because this leader has not yet committed an entry of its
    /// term (raft-rs would drop their ReadIndex silently).
    deferred_reads: Vec<u64>,
    /// When each peer was last heard from: a change is checked against it.
    last_heard: HashMap<u64, Instant>,
    /// This leader applied its own removal: it steps down once the Ready is done.
    step_down_after_ready: bool,
    /// Reads whose ReadIndex is known, waiting for apply to reach it.
    ready_reads: Vec<(u64, Query, ReadReply)>,
    transfer: Option<Transfer>,
    ticks: u64,
    /// A snapshot being written by a blocking task, and who waits for it.
    dump: Option<Dump>,
    dump_done: mpsc::Sender<anyhow::Result<SnapshotMetadata>>,
    dump_results: Option<mpsc::Receiver<anyhow::Result<SnapshotMetadata>>>,
    /// The current members (voters, learners, outgoing voters), for the peer
    /// receiver, which only learns addresses of members.
    members: watch::Sender<BTreeSet<u64>>,
    /// State machines the receiver loaded from incoming snapshots.
    staged: StagedSnapshot,
}

/// A snapshot in the making: the state at `meta.index` is being written to disk.
struct Dump {
    waiters: Vec<oneshot::Sender<Result<u64, NodeError>>>,
}

impl RaftLoop {
    /// Builds the loop over opened storage, loading the state machine from the
    /// newest snapshot; raft then replays the committed entries after it.
    pub fn new(
        cfg: LoopConfig,
        store: LogStore,
        snapshots: SnapshotStore,
        transport: Arc<dyn Transport>,
        metrics: Metrics,
    ) -> anyhow::Result<RaftLoop> {
        let meta = store.snapshot_meta().clone();
        let sm = if meta.index > 0 {
            let mut body = snapshots.open_body(meta.term, meta.index)?;
            KvStateMachine::load(&mut body)?
        } else {
            KvStateMachine::default()
        };
        let mut rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: meta.index,
            max_size_per_msg: MAX_SIZE_PER_MSG,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        if let Some((min, max)) = cfg.election_range {
            rc.min_election_tick = min;
            rc.max_election_tick = max;
        }
        rc.validate()?;
        let logger = slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!());
        let conf_state = store.initial_state()?.conf_state;
        let node = RawNode::new(&rc, store, &logger)?;
        let (dump_done, dump_results) = mpsc::channel(1);
        let members = watch::Sender::new(member_ids(&conf_state));
        Ok(RaftLoop {
            cfg,
            node,
            sm,
            snapshots,
            transport,
            metrics,
            conf_state,
            incarnation: rand::random(),
            next_req: 0,
            writes: HashMap::new(),
            changes: HashMap::new(),
            reads: HashMap::new(),
            deferred_reads: Vec::new(),
            last_heard: HashMap::new(),
            step_down_after_ready: false,
            ready_reads: Vec::new(),
            transfer: None,
            ticks: 0,
            dump: None,
            dump_done,
            dump_results: Some(dump_results),
            members,
            staged: StagedSnapshot::default(),
        })
    }

    /// Follows the member set as this member applies configuration changes.
    pub fn members(&self) -> watch::Receiver<BTreeSet<u64>> {
        self.members.subscribe()
    }

    /// Where the peer receiver puts state machines loaded from received snapshots.
    pub fn staged(&self) -> StagedSnapshot {
        self.staged.clone()
    }

    /// Runs until `shutdown`; a storage failure ends the loop with an error, since
    /// continuing could acknowledge what is not durable.
    pub async fn run(
        mut self,
        mut inbox: InboxReceiver,
        mut requests: mpsc::Receiver<Request>,
        mut reports: mpsc::Receiver<Report>,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dump_results = self.dump_results.take().expect("run once");
        ready.store(true, Ordering::Release);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // First: a tick is due at most once per interval, and a steady flow of
                // heartbeat-lane traffic must never hold back heartbeats, check-quorum,
                // read retries or transfer deadlines.
                _ = ticker.tick() => self.on_tick(),
                Some(m) = inbox.priority.recv() => {
                    self.step(m);
                    for _ in 0..MAX_DRAIN {
                        match inbox.priority.try_recv() { Ok(m) => self.step(m), Err(_) => break }
                    }
                }
                Some(done) = dump_results.recv() => self.on_dump_done(done)?,
                Some(r) = reports.recv() => self.on_report(r),
                Some(m) = inbox.bulk.recv() => {
                    self.step(m);
                    for _ in 0..MAX_DRAIN {
                        match inbox.bulk.try_recv() { Ok(m) => self.step(m), Err(_) => break }
                    }
                }
                Some(req) = requests.recv() => self.on_request(req),
            }
            // Requests get a turn whatever woke the loop: the branches above are
            // biased towards raft traffic, which alone could keep the loop busy.
            for _ in 0..MAX_REQUESTS_PER_TURN {
                match requests.try_recv() {
                    Ok(r) => self.on_request(r),
                    Err(_) => break,
                }
            }
            self.on_ready()?;
        }
        ready.store(false, Ordering::Release);
        Ok(())
    }

    fn step(&mut self, m: Message) {
        let (from, t) = (m.from, m.get_msg_type());
        if from != 0 && from != self.cfg.id {
            self.last_heard.insert(from, Instant::now());
        }
        if let Err(e) = self.node.step(m) {
            tracing::debug!(from, msg_type = ?t, error = %e, "raft refused a message");
        }
    }

    fn on_tick(&mut self) {
        self.node.tick();
        self.ticks += 1;
        if let Some(t) = &self.transfer {
            if Instant::now() >= t.deadline {
                let t = self.transfer.take().expect("checked above");
                let _ = t.reply.send(Err(NodeError::TransferFailed(t.to)));
            }
        }
        // Requests whose caller gave up (timed out) are forgotten.
        if self.ticks.is_multiple_of(10) {
            self.writes.retain(|_, w| !w.reply.is_closed());
            self.changes.retain(|_, r| !r.is_closed());
            self.reads.retain(|_, r| !r.reply.is_closed());
            self.ready_reads.retain(|(_, _, reply)| !reply.is_closed());
        }
        if self.ticks.is_multiple_of(READ_RETRY_TICKS) {
            self.retry_reads();
        }
    }

    /// True when this member leads but has not committed an entry of its term:
    /// until then it cannot know its commit index is current, and raft-rs drops
    /// ReadIndex requests.
    fn leader_not_ready_for_reads(&self) -> bool {
        self.node.raft.state == StateRole::Leader && !self.node.raft.commit_to_current_term()
    }

    /// Sends a read's ReadIndex, or defers it until this leader can serve it
    /// (deferred reads are issued in `on_ready` once it can, or once it no longer
    /// leads and the read goes to the new leader).
    fn issue_read(&mut self, id: u64) {
        let defer = self.leader_not_ready_for_reads();
        let Some(read) = self.reads.get_mut(&id) else {
            return;
        };
        if defer {
            read.issued = None;
            self.deferred_reads.push(id);
            return;
        }
        read.issued = Some(self.ticks);
        let ctx = read.ctx.clone();
        self.node.read_index(ctx);
    }

    /// Issues again the reads that got no answer in time.
    fn retry_reads(&mut self) {
        let ticks = self.ticks;
        let stale: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.issued.is_some_and(|t| ticks - t >= READ_RETRY_TICKS))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.issue_read(id);
        }
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::Unreachable(id) => self.node.report_unreachable(id),
            Report::Snapshot { to, finished } => self
                .node
                .report_snapshot(to, Report::snapshot_status(finished)),
        }
    }

    fn new_context(&mut self) -> (u64, Vec<u8>) {
        self.next_req += 1;
        (
            self.next_req,
            context(self.cfg.id, self.incarnation, self.next_req),
        )
    }

    fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    fn require_leader(&self) -> Result<(), NodeError> {
        match (self.node.raft.state, self.leader_id()) {
            (StateRole::Leader, _) => Ok(()),
            (_, 0) => Err(NodeError::NoLeader),
            (_, leader_id) => Err(NodeError::NotLeader { leader_id }),
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Write(cmd, reply) => {
                // Only the leader proposes (so raft never forwards a proposal
                // through the small "other" lane); followers' Kv services
                // forward client writes to the leader's.
                if let Err(e) = self.require_leader() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let (id, ctx) = self.new_context();
                match self.node.propose(ctx, cmd.encode_to_vec()) {
                    Ok(()) => {
                        self.writes.insert(
                            id,
                            PendingWrite {
                                reply,
                                started: Instant::now(),
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NodeError::Dropped(e.to_string())));
                    }
                }
            }
            Request::Read(query, reply) => {
                if self.leader_id() == 0 {
                    let _ = reply.send(Err(NodeError::NoLeader));
                    return;
                }
                let (id, ctx) = self.new_context();
                let read = PendingRead {
                    query,
                    reply,
                    ctx,
                    issued: None,
                };
                self.reads.insert(id, read);
                self.issue_read(id);
            }
            Request::Membership(change, reply) => {
                let result = self.propose_change(change);
                match result {
                    Ok(id) => {
                        self.changes.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::TransferLeader(to, reply) => {
                if let Err(e) = self.require_leader() {
                    let _ = reply.send(Err(e));
                } else if to == self.cfg.id {
                    let _ = reply.send(Ok(()));
                } else if !self.conf_state.voters.contains(&to) {
                    let _ = reply.send(Err(NodeError::InvalidChange(format!(
                        "member {to} is not a voter"
                    ))));
                } else {
                    self.node.transfer_leader(to);
                    let timeout = self.cfg.tick * (2 * self.cfg.election_ticks) as u32;
                    self.transfer = Some(Transfer {
                        to,
                        deadline: Instant::now() + timeout,
                        reply,
                    });
                }
            }
            Request::Snapshot(reply) => self.start_snapshot(Some(reply)),
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn propose_change(&mut self, change: MembershipChange) -> Result<u64, NodeError> {
        self.require_leader()?;
        if self.node.raft.has_pending_conf() {
            return Err(NodeError::ChangeInProgress);
        }
        let window = self.cfg.tick * self.cfg.election_ticks as u32;
        let peers = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.cfg.id)
            .map(|(id, pr)| {
                let active = self
                    .last_heard
                    .get(id)
                    .is_some_and(|t| t.elapsed() < window);
                (
                    *id,
                    PeerHealth {
                        matched: pr.matched,
                        active,
                        snapshot_pending: pr.state == ProgressState::Snapshot,
                    },
                )
            })
            .collect();
        let view = LeaderView {
            leader: self.cfg.id,
            last_index: self.node.raft.raft_log.last_index(),
            max_promote_lag: self.cfg.max_promote_lag,
            peers: &peers,
        };
        let cc = membership::to_conf_change(change, &self.conf_state, &view)?;
        let (id, ctx) = self.new_context();
        self.node
            .propose_conf_change(ctx, cc)
            .map_err(|e| NodeError::Dropped(e.to_string()))?;
        tracing::info!(?change, "membership change proposed");
        Ok(id)
    }

    fn status(&self) -> NodeStatus {
        let r = &self.node.raft;
        let id = self.cfg.id;
        let cs = &self.conf_state;
        // The raft role comes first: a member that leads is reported as the
        // leader even if the configuration no longer names it.
        let role = match r.state {
            StateRole::Leader => "leader",
            _ if cs.learners.contains(&id) => "learner",
            _ if !cs.voters.contains(&id) => "non-member",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        let store = self.node.store();
        let sorted = |ids: &[u64]| {
            let mut v = ids.to_vec();
            v.sort_unstable();
            v
        };
        NodeStatus {
            id,
            role,
            term: r.term,
            leader_id: r.leader_id,
            commit_index: r.raft_log.committed,
            applied_index: r.raft_log.applied,
            voters: sorted(&cs.voters),
            learners: sorted(&cs.learners),
            snapshot_index: store.snapshot_meta().index,
            first_log_index: store.first_index().unwrap_or_default(),
            last_log_index: r.raft_log.last_index(),
            conf_change_pending: r.has_pending_conf(),
        }
    }

    fn on_ready(&mut self) -> anyhow::Result<()> {
        if let Some(t) = &self.transfer {
            if self.leader_id() == t.to {
                let t = self.transfer.take().expect("checked above");
                let _ = t.reply.send(Ok(()));
            }
        }
        // raft asked for a snapshot the stored one cannot serve (a follower added
        // after it was taken): write a fresh one; raft asks again and sends it.
        if self.node.store().take_snapshot_request() && self.dump.is_none() {
            self.start_snapshot(None);
        }
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        for rs in rd.take_read_states() {
            if let Some((member, inc, req)) = parse_context(&rs.request_ctx) {
                if (member, inc) == (self.cfg.id, self.incarnation) {
                    if let Some(r) = self.reads.remove(&req) {
                        self.ready_reads.push((rs.index, r.query, r.reply));
                    }
                }
            }
        }
        self.apply(rd.take_committed_entries())?;
        let hs = rd.hs().cloned();
        self.node
            .mut_store()
            .append(rd.entries(), hs.as_ref(), rd.must_sync())?;
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        if std::mem::take(&mut self.step_down_after_ready) {
            self.step_down();
        }
        if !self.deferred_reads.is_empty() && !self.leader_not_ready_for_reads() {
            for id in std::mem::take(&mut self.deferred_reads) {
                self.issue_read(id);
            }
        }
        self.serve_reads();
        let since = self.node.raft.raft_log.applied - self.node.store().snapshot_meta().index;
        if since >= self.cfg.snapshot_entries && self.dump.is_none() {
            self.start_snapshot(None);
        }
        self.update_gauges();
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> anyhow::Result<()> {
        let meta = snap.get_metadata();
        self.sm = match self.staged.take(meta.term, meta.index) {
            Some(sm) => sm,
            None => {
                let mut body = self.snapshots.open_body(meta.term, meta.index)?;
                KvStateMachine::load(&mut body)?
            }
        };
        self.node.mut_store().apply_snapshot(meta)?;
        self.set_conf_state(meta.get_conf_state().clone());
        self.snapshots.prune((meta.term, meta.index))?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            keys = self.sm.len(),
            "snapshot installed"
        );
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        for e in entries {
            let ours = parse_context(&e.context)
                .filter(|(m, inc, _)| (*m, *inc) == (self.cfg.id, self.incarnation))
                .map(|(_, _, r)| r);
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_command(&e, ours),
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)?;
                    let result = self.node.apply_conf_change(&cc);
                    self.finish_conf_change(result, e.index, ours)?;
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)?;
                    let result = self.node.apply_conf_change(&cc);
                    self.finish_conf_change(result, e.index, ours)?;
                }
            }
        }
        Ok(())
    }

    fn apply_command(&mut self, e: &Entry, ours: Option<u64>) {
        // A leader's empty entry at the start of its term carries no command.
        if e.data.is_empty() {
            return;
        }
        let applied = match LogCommand::decode(e.data.as_ref()) {
            Ok(cmd) => self.sm.apply(cmd),
            Err(err) => {
                // Every member skips the same entry, so replicas stay identical.
                tracing::error!(index = e.index, error = %err, "undecodable command in the log; skipped");
                Applied::Noop
            }
        };
        if let Some(w) = ours.and_then(|r| self.writes.remove(&r)) {
            self.metrics
                .proposal_seconds
                .observe(w.started.elapsed().as_secs_f64());
            self.metrics
                .proposals
                .get_or_create(&Kind { kind: "ok" })
                .inc();
            let _ = w.reply.send(Ok(WriteOutcome {
                index: e.index,
                applied,
            }));
        }
    }

    /// Records an applied configuration. A committed change that cannot be
    /// applied means this member's view of the configuration differs from the
    /// cluster's: it stops (the loop ends with the error) rather than go on with a
    /// configuration nobody else has.
    fn finish_conf_change(
        &mut self,
        applied: raft::Result<ConfState>,
        index: u64,
        ours: Option<u64>,
    ) -> anyhow::Result<()> {
        let reply = ours.and_then(|r| self.changes.remove(&r));
        let cs = match applied {
            Ok(cs) => cs,
            Err(e) => {
                let why = format!(
                    "the committed membership change at index {index} cannot be applied to \
                     this member's configuration (voters {:?}, learners {:?}): {e}",
                    self.conf_state.voters, self.conf_state.learners
                );
                tracing::error!(index, error = %e, "configuration diverged; stopping");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(NodeError::InvalidChange(why.clone())));
                }
                anyhow::bail!("configuration diverged: {why}; this member stops so it never acts on a configuration the cluster does not have");
            }
        };
        tracing::info!(index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        let removed_leader =
            self.node.raft.state == StateRole::Leader && !cs.voters.contains(&self.cfg.id);
        self.set_conf_state(cs);
        // raft-rs forbids a role change between a Ready and its advance.
        self.step_down_after_ready |= removed_leader;
        if let Some(reply) = reply {
            let _ = reply.send(Ok(index));
        }
        Ok(())
    }

    /// A leader that applied its own removal hands leadership to the voter with
    /// the most of its log and becomes a follower; raft-rs would keep it leading
    /// a configuration it is not part of, where every proposal is dropped.
    fn step_down(&mut self) {
        let r = &mut self.node.raft;
        let best = r
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.cfg.id && self.conf_state.voters.contains(id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id);
        if let Some(to) = best {
            r.send_timeout_now(to);
        }
        let term = r.term;
        r.become_follower(term, raft::INVALID_ID);
        tracing::warn!(to = ?best, "removed from the voters while leading: stepped down");
    }

    fn set_conf_state(&mut self, cs: ConfState) {
        let members = member_ids(&cs);
        // A removed id forgets its liveness: re-added, it must be heard anew.
        self.last_heard.retain(|id, _| members.contains(id));
        self.members.send_replace(members);
        self.conf_state = cs;
    }

    fn serve_reads(&mut self) {
        let applied = self.node.raft.raft_log.applied;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(i, _, _)| *i <= applied);
        self.ready_reads = later;
        for (_, q, reply) in now {
            let result = match q {
                Query::Get(k) => QueryResult::Get(self.sm.get(&k).map(<[u8]>::to_vec)),
                Query::Scan(range) => QueryResult::Scan(self.sm.scan(&range)),
            };
            let _ = reply.send(Ok(result));
        }
    }

    /// Starts writing the state at the applied index to a snapshot file on a
    /// blocking task, so ticks and messages keep flowing meanwhile; the log is
    /// compacted when it is done. `reply` (an admin request) learns the index.
    fn start_snapshot(&mut self, reply: Option<oneshot::Sender<Result<u64, NodeError>>>) {
        if let Some(d) = &mut self.dump {
            d.waiters.extend(reply);
            return;
        }
        let index = self.node.raft.raft_log.applied;
        if index == 0 || index == self.node.store().snapshot_meta().index {
            if let Some(r) = reply {
                let _ = r.send(Ok(index));
            }
            return;
        }
        let term = match self.node.raft.raft_log.term(index) {
            Ok(t) => t,
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(storage_err(e)));
                }
                return;
            }
        };
        let meta = SnapshotMetadata {
            index,
            term,
            conf_state: Some(self.conf_state.clone()).into(),
            ..Default::default()
        };
        // O(1): the map is persistent, so the dump reads this view off the loop.
        let state = self.sm.clone();
        let (snapshots, done) = (self.snapshots.clone(), self.dump_done.clone());
        tokio::task::spawn_blocking(move || {
            let written = (|| {
                let mut w = snapshots.create(term, index)?;
                state.dump(&mut w)?;
                w.finish()?;
                Ok(meta)
            })();
            let _ = done.blocking_send(written);
        });
        self.dump = Some(Dump {
            waiters: reply.into_iter().collect(),
        });
    }

    /// Records a written snapshot and compacts the log, keeping a margin of
    /// entries so slightly lagging followers need no snapshot.
    fn on_dump_done(&mut self, done: anyhow::Result<SnapshotMetadata>) -> anyhow::Result<()> {
        let waiters = self.dump.take().map(|d| d.waiters).unwrap_or_default();
        let result = done.and_then(|meta| {
            // A snapshot installed from the leader meanwhile may be newer.
            if meta.index > self.node.store().snapshot_meta().index {
                let keep = (self.cfg.snapshot_entries / 2).min(5000);
                self.node.mut_store().compact(&meta, keep)?;
                self.metrics.snapshots_taken.inc();
                tracing::info!(
                    index = meta.index,
                    term = meta.term,
                    "snapshot taken, log compacted"
                );
            }
            let current = self.node.store().snapshot_meta();
            self.snapshots.prune((current.term, current.index))?;
            Ok(meta.index)
        });
        for w in waiters {
            let _ = w.send(result.as_ref().copied().map_err(storage_err));
        }
        // Losing the ability to write snapshots or compact is a storage failure.
        result.map(|_| ())
    }

    fn update_gauges(&self) {
        let r = &self.node.raft;
        self.metrics.term.set(r.term as i64);
        self.metrics.commit_index.set(r.raft_log.committed as i64);
        self.metrics.applied_index.set(r.raft_log.applied as i64);
        self.metrics.leader_id.set(r.leader_id as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_of_another_incarnation_do_not_match() {
        let c = context(3, 77, 1);
        assert_eq!(parse_context(&c), Some((3, 77, 1)));
        assert_ne!(parse_context(&context(3, 78, 1)), parse_context(&c));
        assert_eq!(parse_context(&c[..16]), None);
        assert_eq!(parse_context(b""), None);
    }

    /// A log whose committed change cannot apply to the configuration (here: the
    /// only voter removed) is a divergence: the loop ends with the reason.
    #[tokio::test]
    async fn a_committed_change_that_cannot_apply_stops_the_member() {
        use crate::storage::{BOOTSTRAP_INDEX, BOOTSTRAP_TERM};
        use crate::transport::{inbox::Inbox, memory::MemoryNetwork, report::ReportSender};
        use raft::prelude::{ConfChangeSingle, ConfChangeType, HardState};

        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(&dir.path().join("raft")).unwrap();
        let snapshots = SnapshotStore::open(&dir.path().join("snapshots")).unwrap();
        store.bootstrap(&[1], &snapshots).unwrap();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::RemoveNode);
        single.node_id = 1;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let mut e = Entry {
            index: BOOTSTRAP_INDEX + 1,
            term: BOOTSTRAP_TERM,
            data: cc.write_to_bytes().unwrap().into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChangeV2);
        let hs = HardState {
            term: BOOTSTRAP_TERM,
            commit: BOOTSTRAP_INDEX + 1,
            ..Default::default()
        };
        store.append(&[e], Some(&hs), true).unwrap();

        let (reports_tx, reports_rx) = ReportSender::channel(8, Default::default());
        let net = MemoryNetwork::new(1);
        let transport = Arc::new(net.transport(1, reports_tx, snapshots.clone()));
        let cfg = LoopConfig {
            id: 1,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 10_000,
            max_inflight_msgs: 256,
            max_promote_lag: 1000,
            election_range: None,
        };
        let raft_loop = RaftLoop::new(cfg, store, snapshots, transport, Metrics::new()).unwrap();
        let (_inbox, inbox_rx) = Inbox::new();
        let (_requests, requests_rx) = mpsc::channel(1);
        let run = raft_loop.run(
            inbox_rx,
            requests_rx,
            reports_rx,
            Arc::new(AtomicBool::new(false)),
            CancellationToken::new(),
        );
        let err = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the loop stops by itself")
            .expect_err("divergence is an error");
        let msg = format!("{err:#}");
        assert!(msg.contains("configuration diverged"), "{msg}");
        assert!(msg.contains("index 6 cannot be applied"), "{msg}");
        assert!(msg.contains("voters [1]"), "{msg}");
    }
}
