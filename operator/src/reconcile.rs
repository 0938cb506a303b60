//! One reconcile pass, the same for every runtime: observe the members and ask
//! each for its raft `Status`, plan, act, then save the status. Waiting is
//! never done here: a step that must wait is simply planned again on the next
//! pass. A runtime plugs in its members ([`Runtime`]) and its [`Host`]: where
//! status is saved, where steps, waits and failures are reported, and whether
//! this process may act.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{MemberRequest, StatusRequest, UpsertPeersRequest};
use raftlane_tls::{Dialer, Expect};
use tonic::transport::Channel;

use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::plan::{plan, Action, Member, MemberReport, Observed, Plan};
use crate::runtime::Runtime;
use crate::{revision, status};

/// Admin calls to members are bounded: an unresponsive member is unhealthy,
/// not a reason to stall the pass.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Admin clients by member id and address, connected lazily, and kept only
/// for addresses members listen on now: every restart on a new address (a
/// rescheduled pod) would otherwise leave a channel behind for the
/// operator's lifetime. Every channel is dialled with the runtime's
/// [`Dialer`]: TLS with the operator's certificate, verifying that the
/// member answering is the one meant (plaintext only for a cluster whose
/// spec turns TLS off).
pub struct AdminClients {
    dialer: Dialer,
    by_addr: HashMap<(u64, String), NodeAdminClient<Channel>>,
}

impl AdminClients {
    pub fn new(dialer: Dialer) -> AdminClients {
        AdminClients {
            dialer,
            by_addr: HashMap::new(),
        }
    }

    /// Dials with `dialer` from now on (a renewed operator certificate, a
    /// rotated CA): the channels of the previous one are dropped.
    pub fn set_dialer(&mut self, dialer: Dialer) {
        self.dialer = dialer;
        self.by_addr.clear();
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Drops the clients of (member, address) pairs no member in `running`
    /// is at now.
    fn keep_only(&mut self, running: &BTreeMap<u64, Member>) {
        let current: HashSet<(u64, &str)> = running
            .values()
            .filter_map(|m| Some((m.id, m.addrs.as_ref()?.admin.as_str())))
            .collect();
        self.by_addr
            .retain(|(id, addr), _| current.contains(&(*id, addr.as_str())));
    }

    /// The client of member `id` at `addr`; with TLS it verifies that the
    /// member answering there is `id`.
    fn get(&mut self, id: u64, addr: &str) -> anyhow::Result<NodeAdminClient<Channel>> {
        let key = (id, addr.to_string());
        if let Some(c) = self.by_addr.get(&key) {
            return Ok(c.clone());
        }
        let endpoint = self
            .dialer
            .endpoint(addr)?
            .connect_timeout(ADMIN_TIMEOUT)
            .timeout(ADMIN_TIMEOUT);
        let ch = self.dialer.channel(endpoint, Expect::Member(id));
        let c = NodeAdminClient::new(ch);
        self.by_addr.insert(key, c.clone());
        Ok(c)
    }
}

/// What a pass needs from the process it runs in.
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Saves `status`; `seen` is the observation it was made from.
    async fn save_status(
        &mut self,
        status: &RaftClusterStatus,
        seen: &Observed,
    ) -> anyhow::Result<()>;
    /// Reports a step carried out; `done` says what was done.
    async fn step_done(&mut self, step: &Action, done: &str);
    /// Reports a step that failed (the pass stops there).
    async fn step_failed(&mut self, step: &Action, error: &anyhow::Error);
    /// Reports a new wait; `blocked` when a safety guard refuses a step.
    async fn waiting(&mut self, why: &str, blocked: bool);
    /// False once this process may no longer act (another may lead): no
    /// step is taken and no status saved from then on.
    fn may_act(&self) -> bool;
}

/// Why a pass stopped early; every cause is retried by the next pass.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// Members could not be listed or their status not read.
    #[error("{0:#}")]
    Observe(anyhow::Error),
    /// A step failed; the host has reported it.
    #[error("{0:#}")]
    Step(anyhow::Error),
    /// The runtime's own store (the API server, the state dir) failed.
    #[error("{0:#}")]
    Store(anyhow::Error),
    #[error("this process may no longer act")]
    NotLeading,
}

/// How a pass ended.
pub struct Outcome {
    /// The status as last saved (or as found, when nothing changed).
    pub status: RaftClusterStatus,
    /// Steps were taken or are waiting: the next pass should come soon.
    pub busy: bool,
    /// The admin address of the member leading, as observed (backups are
    /// taken from it).
    pub leader_admin: Option<String>,
}

/// One pass over `cluster`, whose members carry `cluster_id`, from the
/// status `previous` the last pass saved. While `spec.paused` holds, the pass
/// observes and saves the status, and writes nothing else.
pub async fn pass<R: Runtime, H: Host>(
    rt: &mut R,
    host: &mut H,
    admins: &mut AdminClients,
    cluster: &RaftCluster,
    cluster_id: &str,
    previous: RaftClusterStatus,
) -> Result<Outcome, PassError> {
    let paused = cluster.spec.paused;
    // Repairs during observation write (a pod deleted, a volume retired): only
    // a process that may act makes them.
    let mut seen = observe(rt, admins, cluster_id, &previous, !paused && host.may_act())
        .await
        .map_err(PassError::Observe)?;
    let now = jiff::Timestamp::now();
    seen.failed = failed(cluster, &previous, now);
    seen.update_revision = Some(revision::of(&cluster.spec));
    seen.current_revision = previous.current_revision.clone();
    seen.stalled = stalled(cluster, &seen, &previous, now);
    let mut p = plan(u64::from(cluster.spec.replicas), &seen);
    if paused {
        return finish(host, cluster, &seen, &p.pause(), previous).await;
    }
    if !host.may_act() {
        return Err(PassError::NotLeading);
    }
    let holding = seen.reports.values().filter(|r| r.holds_state());
    rt.record_state(&holding.map(|r| r.id).collect())
        .await
        .map_err(PassError::Store)?;
    let mut current = previous;
    // Formed: from now on no member is ever started with initial voters, and
    // that is saved before any step, so a later pass cannot read it forming.
    if current.bootstrap_voters.is_some() && seen.leader().is_some() {
        current.bootstrap_voters = None;
        save(host, &current, &seen).await?;
    }
    // The voters a new cluster forms with are recorded before its first
    // member starts, so a pass after a crash gives the rest the same set.
    if let Some(Action::Create {
        initial_voters: Some(v),
        ..
    }) = p.actions.first()
    {
        if current.bootstrap_voters.is_none() {
            current.bootstrap_voters = Some(v.iter().copied().collect());
            save(host, &current, &seen).await?;
        }
    }
    // The wait in flight is the status's operation: each is reported once.
    if let Some(why) = p
        .waiting
        .as_deref()
        .filter(|w| current.operation.as_deref() != Some(*w))
    {
        host.waiting(why, p.blocked).await;
    }
    let mut refused = None;
    for step in &p.actions {
        if !host.may_act() {
            return Err(PassError::NotLeading);
        }
        match act(rt, admins, &seen, step).await {
            Ok(done) => {
                host.step_done(step, &done).await;
                crash_point(step);
            }
            Err(e) => match not_yet(&e) {
                Some(why) => {
                    refused = Some(why);
                    break;
                }
                None => {
                    host.step_failed(step, &e).await;
                    return Err(PassError::Step(e));
                }
            },
        }
    }
    // A step a member refused for now (a learner still catching up) is
    // waited for, as the planner's own waits are: no failure, no back-off.
    // Its figures (a learner's lag) change every pass: an event only when
    // the reason itself changes.
    if let Some(why) = refused {
        let words = |s: &str| s.replace(|c: char| c.is_ascii_digit(), "");
        if current.operation.as_deref().map(words) != Some(words(&why)) {
            host.waiting(&why, false).await;
        }
        p.wait(why);
    }
    finish(host, cluster, &seen, &p, current).await
}

/// The member's reason when `e` is a refusal for now (the admin API's
/// `ABORTED`: nothing is wrong, ask again later).
fn not_yet(e: &anyhow::Error) -> Option<String> {
    let status = e.downcast_ref::<tonic::Status>()?;
    (status.code() == tonic::Code::Aborted).then(|| status.message().to_string())
}

/// Members unhealthy (per `previous`) for longer than the cluster's
/// `spec.failureReplacement.after`; none when replacement is off.
fn failed(
    cluster: &RaftCluster,
    previous: &RaftClusterStatus,
    now: jiff::Timestamp,
) -> BTreeSet<u64> {
    let after = cluster
        .spec
        .failure_replacement
        .as_ref()
        .and_then(|f| f.after());
    unhealthy_for(previous, after, now)
}

/// During a rollout, members not running at an old revision (restarted at
/// the new one, or not running at all) unhealthy for longer than
/// `spec.updateStrategy.progressDeadline`: the new revision does not work.
fn stalled(
    cluster: &RaftCluster,
    seen: &Observed,
    previous: &RaftClusterStatus,
    now: jiff::Timestamp,
) -> BTreeSet<u64> {
    if !seen.rolling() {
        return BTreeSet::new();
    }
    let deadline = cluster.spec.update_strategy.progress_deadline();
    let mut out = unhealthy_for(previous, deadline, now);
    out.retain(|id| !seen.outdated(*id));
    out
}

/// Members unhealthy (per `previous`) for at least `limit`; none without one.
fn unhealthy_for(
    previous: &RaftClusterStatus,
    limit: Option<Duration>,
    now: jiff::Timestamp,
) -> BTreeSet<u64> {
    let Some(limit) = limit else {
        return BTreeSet::new();
    };
    previous
        .unhealthy
        .iter()
        .filter(|u| {
            u.since
                .parse::<jiff::Timestamp>()
                .is_ok_and(|since| now.duration_since(since).as_secs() >= limit.as_secs() as i64)
        })
        .map(|u| u.id)
        .collect()
}

/// The variable that arms [`crash_point`], and the code it exits with.
pub const FAILPOINT_ENV: &str = "RAFTLANE_FAILPOINT";
pub const FAILPOINT_EXIT_CODE: i32 = 3;

/// Test hook, in both runtimes: `RAFTLANE_FAILPOINT=after-add-learner` ends the
/// operator right after a learner was added, before it is promoted, as a crash
/// there would; members keep running. End-to-end tests use it to prove the next
/// operator resumes the operation.
fn crash_point(done: &Action) {
    if matches!(done, Action::AddLearner { .. })
        && std::env::var(FAILPOINT_ENV).is_ok_and(|f| f == "after-add-learner")
    {
        println!("failpoint after-add-learner: exiting");
        std::process::exit(FAILPOINT_EXIT_CODE);
    }
}

/// Computes the status from what the pass saw and planned, and saves it when
/// it changed from `current`, the one saved.
async fn finish<H: Host>(
    host: &mut H,
    cluster: &RaftCluster,
    seen: &Observed,
    p: &Plan,
    current: RaftClusterStatus,
) -> Result<Outcome, PassError> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now().to_string();
    let mut next = status::compute(&name, seen, p, &current, &now);
    next.observed_generation = cluster.metadata.generation;
    let busy = p.held.is_none() && (!p.actions.is_empty() || p.waiting.is_some());
    let leader_admin = seen
        .leader()
        .and_then(|l| seen.running.get(&l.id)?.addrs.as_ref())
        .map(|a| a.admin.clone());
    if !status::changed(&current, &next) {
        return Ok(Outcome {
            status: current,
            busy,
            leader_admin,
        });
    }
    save(host, &next, seen).await?;
    Ok(Outcome {
        status: next,
        busy,
        leader_admin,
    })
}

/// Saves the status, unless this process may no longer act: a status from a
/// replica that lost the Lease could overwrite its successor's.
async fn save<H: Host>(
    host: &mut H,
    status: &RaftClusterStatus,
    seen: &Observed,
) -> Result<(), PassError> {
    if !host.may_act() {
        return Err(PassError::NotLeading);
    }
    host.save_status(status, seen)
        .await
        .map_err(PassError::Store)
}

/// Lists members (repairing on the way, see [`Runtime::list`]) and asks each
/// for its status; `history` is the status the last pass wrote (what it says
/// the cluster has been through).
async fn observe<R: Runtime>(
    rt: &mut R,
    admins: &mut AdminClients,
    cluster_id: &str,
    history: &RaftClusterStatus,
    repair: bool,
) -> anyhow::Result<Observed> {
    let running: BTreeMap<u64, Member> = rt
        .list(repair)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let mut observed = Observed {
        bootstrapped: history
            .bootstrap_voters
            .as_ref()
            .map(|v| v.iter().copied().collect()),
        // The status keeps the newest term ever seen: above 0, elections ran.
        formed: history.term > 0 || history.leader.is_some(),
        with_data: rt.with_data()?,
        with_storage: rt.with_storage()?,
        ..Default::default()
    };
    admins.keep_only(&running);
    for m in running.values() {
        let Some(addrs) = &m.addrs else { continue };
        let mut admin = admins.get(m.id, &addrs.admin)?;
        if let Ok(Ok(s)) = tokio::time::timeout(ADMIN_TIMEOUT, admin.status(StatusRequest {})).await
        {
            let s = s.into_inner();
            // An address now answered by another cluster's member, or another
            // member of this one, says nothing about this member.
            if s.cluster_id != cluster_id || s.id != m.id {
                continue;
            }
            observed.reports.insert(
                m.id,
                MemberReport {
                    id: s.id,
                    term: s.term,
                    leader_id: s.leader_id,
                    is_leader: s.role == "leader",
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                    voters: s.voters.into_iter().collect(),
                    learners: s.learners.into_iter().collect(),
                    conf_change_pending: s.conf_change_pending,
                    peers: s.peers.into_iter().map(|p| (p.id, p.address)).collect(),
                },
            );
        }
    }
    observed.running = running;
    Ok(observed)
}

/// The peer addresses of the members that have one.
fn peers_of(seen: &Observed) -> BTreeMap<u64, String> {
    seen.running
        .values()
        .filter_map(|m| Some((m.id, m.peer_addr()?.to_string())))
        .collect()
}

/// Carries out one planned action; returns what was done, for progress output.
async fn act<R: Runtime>(
    rt: &mut R,
    admins: &mut AdminClients,
    seen: &Observed,
    action: &Action,
) -> anyhow::Result<String> {
    let admin_of = |id: u64| -> anyhow::Result<String> {
        seen.running
            .get(&id)
            .and_then(|m| Some(m.addrs.as_ref()?.admin.clone()))
            .ok_or_else(|| anyhow::anyhow!("member {id} is not reachable"))
    };
    Ok(match action {
        Action::Create { id, initial_voters } => {
            let m = rt
                .create(*id, initial_voters.as_ref(), &peers_of(seen))
                .await?;
            match &m.addrs {
                Some(a) => format!("started member {id} (peer {}, client {})", a.peer, a.client),
                None => format!("created member {id}"),
            }
        }
        Action::PushAddresses { on, peers } => {
            let mut a = admins.get(*on, &admin_of(*on)?)?;
            a.upsert_peers(UpsertPeersRequest {
                peers: peers.iter().map(|(k, v)| (*k, v.clone())).collect(),
            })
            .await?;
            let list: Vec<String> = peers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("member {on} now reaches {}", list.join(", "))
        }
        Action::AddLearner { via, id } => {
            admins
                .get(*via, &admin_of(*via)?)?
                .add_learner(MemberRequest { id: *id })
                .await?;
            format!("member {id} added as a learner")
        }
        Action::Promote { via, id } => {
            admins
                .get(*via, &admin_of(*via)?)?
                .promote_learner(MemberRequest { id: *id })
                .await?;
            format!("member {id} promoted to voter")
        }
        Action::TransferLeader { via, to } => {
            admins
                .get(*via, &admin_of(*via)?)?
                .transfer_leader(MemberRequest { id: *to })
                .await?;
            format!("leadership moved from {via} to {to}")
        }
        Action::RemoveMember { via, id } => {
            admins
                .get(*via, &admin_of(*via)?)?
                .remove_member(MemberRequest { id: *id })
                .await?;
            format!("member {id} removed from the membership")
        }
        Action::Delete { id } => {
            rt.delete(*id).await?;
            format!("member {id} stopped (its data retired)")
        }
        Action::Restart { id } => {
            let m = rt.restart(*id, &peers_of(seen)).await?;
            let at = seen.update_revision.as_deref().unwrap_or("?");
            match &m.addrs {
                Some(a) => format!("member {id} restarted at revision {at} (peer {})", a.peer),
                None => format!("member {id} restarting at revision {at}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    use super::*;
    use crate::naming::conditions::RECONCILIATION_PAUSED;

    #[test]
    fn a_members_aborted_refusal_is_a_wait_and_anything_else_a_failure() {
        let catching_up = anyhow::Error::new(tonic::Status::aborted(
            "not yet: learner 5 is still catching up",
        ));
        assert_eq!(
            not_yet(&catching_up).as_deref(),
            Some("not yet: learner 5 is still catching up")
        );
        let wrapped = anyhow::Error::new(tonic::Status::aborted("x")).context("promoting 5");
        assert!(not_yet(&wrapped).is_some(), "seen through context");
        let refused = anyhow::Error::new(tonic::Status::failed_precondition("unsafe"));
        assert_eq!(not_yet(&refused), None);
        assert_eq!(not_yet(&anyhow::anyhow!("connection refused")), None);
    }

    type Log = Rc<RefCell<Vec<String>>>;

    /// Members that never get an address (so no admin call is made), with
    /// every runtime and host call written to one log.
    struct Fake {
        log: Log,
        members: Vec<Member>,
        refuse_create: bool,
        may_act: bool,
        /// The spec's `paused`.
        paused: bool,
    }

    fn fake() -> Fake {
        Fake {
            log: Log::default(),
            members: Vec::new(),
            refuse_create: false,
            may_act: true,
            paused: false,
        }
    }

    impl Fake {
        fn note(&self, line: String) {
            self.log.borrow_mut().push(line);
        }
    }

    impl Runtime for Fake {
        async fn list(&mut self, _: bool) -> anyhow::Result<Vec<Member>> {
            Ok(self.members.clone())
        }
        async fn create(
            &mut self,
            id: u64,
            _: Option<&BTreeSet<u64>>,
            _: &BTreeMap<u64, String>,
        ) -> anyhow::Result<Member> {
            self.note(format!("create {id}"));
            anyhow::ensure!(!self.refuse_create, "no room for member {id}");
            let m = Member::unreachable(id);
            self.members.push(m.clone());
            Ok(m)
        }
        async fn delete(&mut self, id: u64) -> anyhow::Result<()> {
            self.note(format!("delete {id}"));
            Ok(())
        }
        async fn restart(&mut self, id: u64, _: &BTreeMap<u64, String>) -> anyhow::Result<Member> {
            self.note(format!("restart {id}"));
            Ok(Member::unreachable(id))
        }
        async fn record_state(&mut self, _: &BTreeSet<u64>) -> anyhow::Result<()> {
            Ok(())
        }
        fn with_data(&self) -> anyhow::Result<BTreeSet<u64>> {
            Ok(BTreeSet::new())
        }
        fn with_storage(&self) -> anyhow::Result<BTreeSet<u64>> {
            Ok(self.members.iter().map(|m| m.id).collect())
        }
    }

    struct FakeHost {
        log: Log,
        may_act: bool,
    }

    impl Host for FakeHost {
        async fn save_status(&mut self, s: &RaftClusterStatus, _: &Observed) -> anyhow::Result<()> {
            let what = match s.conditions.is_empty() {
                true => "record",
                false if s.is(RECONCILIATION_PAUSED) => "paused status",
                false => "status",
            };
            let line = format!("save {what}, voters {:?}", s.bootstrap_voters);
            self.log.borrow_mut().push(line);
            Ok(())
        }
        async fn step_done(&mut self, _: &Action, done: &str) {
            self.log.borrow_mut().push(format!("done: {done}"));
        }
        async fn step_failed(&mut self, step: &Action, error: &anyhow::Error) {
            self.log
                .borrow_mut()
                .push(format!("failed {step:?}: {error}"));
        }
        async fn waiting(&mut self, why: &str, _: bool) {
            self.log.borrow_mut().push(format!("waiting: {why}"));
        }
        fn may_act(&self) -> bool {
            self.may_act
        }
    }

    fn cluster(replicas: u32, paused: bool) -> RaftCluster {
        crate::crd::parse_cluster(&format!(
            "apiVersion: raftlane.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: demo\n\
             spec:\n  replicas: {replicas}\n  paused: {paused}\n"
        ))
        .unwrap()
    }

    /// Runs one pass from `previous`; returns its result and the log.
    async fn run(
        mut rt: Fake,
        previous: RaftClusterStatus,
    ) -> (Result<Outcome, PassError>, Vec<String>) {
        let mut host = FakeHost {
            log: rt.log.clone(),
            may_act: rt.may_act,
        };
        let mut admins = AdminClients::new(Dialer::Plaintext);
        let c = cluster(2, rt.paused);
        let r = pass(&mut rt, &mut host, &mut admins, &c, "demo", previous).await;
        let log = rt.log.borrow().clone();
        (r, log)
    }

    #[tokio::test]
    async fn a_new_clusters_voters_are_saved_before_its_first_member_is_created() {
        let (r, log) = run(fake(), RaftClusterStatus::default()).await;
        assert!(r.unwrap().busy);
        assert_eq!(
            log,
            [
                "save record, voters Some([1, 2])",
                "create 1",
                "done: created member 1",
                "create 2",
                "done: created member 2",
                "save status, voters Some([1, 2])",
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_step_stops_the_pass_before_the_next_step_and_the_status() {
        let rt = Fake {
            refuse_create: true,
            ..fake()
        };
        let (r, log) = run(rt, RaftClusterStatus::default()).await;
        assert!(matches!(r, Err(PassError::Step(_))));
        assert_eq!(
            log,
            [
                "save record, voters Some([1, 2])",
                "create 1",
                "failed Create { id: 1, initial_voters: Some({1, 2}) }: no room for member 1",
            ]
        );
    }

    #[tokio::test]
    async fn nothing_is_written_once_this_process_may_not_act() {
        for paused in [false, true] {
            let rt = Fake {
                may_act: false,
                paused,
                ..fake()
            };
            let (r, log) = run(rt, RaftClusterStatus::default()).await;
            assert!(matches!(r, Err(PassError::NotLeading)));
            assert!(log.is_empty(), "paused {paused}: {log:?}");
        }
    }

    #[tokio::test]
    async fn a_wait_is_reported_once_while_it_lasts() {
        // Two members forming, neither answering yet.
        let members = vec![Member::unreachable(1), Member::unreachable(2)];
        let rt = Fake {
            members: members.clone(),
            ..fake()
        };
        let previous = RaftClusterStatus {
            bootstrap_voters: Some(vec![1, 2]),
            ..Default::default()
        };
        let (r, log) = run(rt, previous).await;
        assert_eq!(log[0], "waiting: no member answers yet");
        let again = Fake { members, ..fake() };
        let (_, log) = run(again, r.unwrap().status).await;
        assert!(log.is_empty(), "{log:?}");
    }

    #[tokio::test]
    async fn a_paused_pass_takes_no_step_and_saves_only_the_status() {
        let rt = Fake {
            paused: true,
            ..fake()
        };
        let (r, log) = run(rt, RaftClusterStatus::default()).await;
        let outcome = r.unwrap();
        assert!(!outcome.busy, "nothing is underway while paused");
        assert_eq!(log, ["save paused status, voters None"]);
        let paused = outcome.status.conditions.iter();
        let paused = paused
            .filter(|c| c.type_ == RECONCILIATION_PAUSED)
            .map(|c| c.message.as_str())
            .collect::<Vec<_>>();
        assert!(paused[0].contains("steps held back: 2"), "{paused:?}");

        // The same again: nothing changed, nothing is written.
        let again = Fake {
            paused: true,
            ..fake()
        };
        let (r2, log) = run(again, outcome.status.clone()).await;
        assert!(log.is_empty(), "{log:?}");

        // Resumed, the held steps are taken.
        let (_, log) = run(fake(), r2.unwrap().status).await;
        assert!(log.contains(&"create 1".to_string()), "{log:?}");
    }

    #[tokio::test]
    async fn admin_clients_are_kept_only_for_addresses_members_listen_on() {
        let mut admins = AdminClients::new(Dialer::Plaintext);
        for (id, addr) in [
            (1, "127.0.0.1:7002"),
            (2, "127.0.0.2:7002"),
            (2, "127.0.0.2:9999"),
            // Another member's client for an address member 2 listens on now.
            (4, "127.0.0.2:9999"),
        ] {
            admins.get(id, addr).unwrap();
        }
        let at = |id, admin: &str| Member::at(id, String::new(), String::new(), admin.into());
        let running = BTreeMap::from([(2, at(2, "127.0.0.2:9999")), (3, Member::unreachable(3))]);
        admins.keep_only(&running);
        let kept: Vec<&(u64, String)> = admins.by_addr.keys().collect();
        assert_eq!(kept, [&(2, "127.0.0.2:9999".to_string())]);
    }
}
