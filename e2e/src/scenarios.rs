//! The scenarios of the operator, runtime-agnostic: each drives a [`Target`]
//! and checks what a user would check (status, data, member identities).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;

use raft_node::client::KvClient;
use raft_operator::crd::{MemberRole, RaftClusterStatus};
use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{SnapshotRequest, StatusRequest, StatusResponse};
use raftlane_tls::Expect;
use tonic::transport::Channel;

use crate::{wait_for, Target};
use raft_operator::naming::conditions::{AVAILABLE, DEGRADED, PROGRESSING, RECONCILIATION_PAUSED};

/// Generous bound for a whole membership operation on a loaded 2-core machine.
const OPERATION: Duration = Duration::from_secs(90);

fn voters(s: &RaftClusterStatus) -> Vec<u64> {
    s.members
        .iter()
        .filter(|m| m.role == MemberRole::Voter)
        .map(|m| m.id)
        .collect()
}

/// Waits for `n` healthy voters (ids 1..=n) and no learner, Available.
pub async fn wait_settled<T: Target>(t: &T, n: u64) -> anyhow::Result<RaftClusterStatus> {
    wait_for(&format!("{n} healthy voters"), OPERATION, || async {
        Ok(t.status().await?.filter(|s| {
            s.is(AVAILABLE)
                && voters(s) == (1..=n).collect::<Vec<_>>()
                && s.members.len() as u64 == n
                && s.members.iter().all(|m| m.healthy)
        }))
    })
    .await
}

async fn kv<T: Target>(t: &T, only: Option<&[u64]>) -> anyhow::Result<KvClient> {
    let all = t.endpoints().await?;
    let eps: Vec<String> = match only {
        None => all,
        Some(ids) => {
            let s = t.status().await?.unwrap_or_default();
            // Endpoints are listed in member id order.
            let ids_running: Vec<u64> = s.members.iter().map(|m| m.id).collect();
            ids.iter()
                .filter_map(|id| {
                    ids_running
                        .iter()
                        .position(|x| x == id)
                        .and_then(|i| all.get(i).cloned())
                })
                .collect()
        }
    };
    KvClient::new(&eps, Duration::from_secs(20), &t.dialer().await?)
}

/// Writes `count` keys `<prefix><i>`; every write must be acknowledged.
pub async fn write_keys<T: Target>(t: &T, prefix: &str, count: u64) -> anyhow::Result<Vec<String>> {
    let client = kv(t, None).await?;
    let mut keys = Vec::new();
    for i in 0..count {
        let k = format!("{prefix}{i:06}");
        client.put(k.as_bytes(), k.as_bytes()).await?;
        keys.push(k);
    }
    Ok(keys)
}

/// Reads every key through the given members only.
pub async fn check_keys<T: Target>(t: &T, ids: &[u64], keys: &[String]) -> anyhow::Result<()> {
    let client = kv(t, Some(ids)).await?;
    for k in keys {
        let v = client.get(k.as_bytes()).await?;
        anyhow::ensure!(
            v.as_deref() == Some(k.as_bytes()),
            "key {k} through members {ids:?}: {v:?}"
        );
    }
    Ok(())
}

/// A follower of settled status `s` (the first member that does not lead).
pub fn follower(s: &RaftClusterStatus) -> anyhow::Result<u64> {
    let leader = s.leader.clone().unwrap_or_default();
    s.members
        .iter()
        .find(|m| m.name != leader)
        .map(|m| m.id)
        .context("a follower")
}

/// Harms member `victim` with `harm`, then waits until it is back as a new
/// member (see [`rejoined`]) among `n` voters.
async fn back_as_a_new_member<T: Target>(
    t: &mut T,
    victim: u64,
    n: u64,
    harm: impl for<'a> FnOnce(&'a mut T) -> futures::future::LocalBoxFuture<'a, anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let before = t.incarnation(victim).await?;
    harm(t).await?;
    rejoined(t, victim, n, before).await
}

/// Waits until another member's own status no longer lists `victim` as a
/// voter (it left the membership) and it is back as an incarnation other
/// than `before`, with `n` healthy voters (ids 1..=n).
async fn rejoined<T: Target>(
    t: &T,
    victim: u64,
    n: u64,
    before: Option<String>,
) -> anyhow::Result<()> {
    let watcher = if victim == 1 { 2 } else { 1 };
    let ids: Vec<u64> = (1..=n).collect();
    let started = Instant::now();
    let mut dropped = false;
    // One client to the watcher, polled every 100 ms between the slower
    // checks below (kubectl reads take seconds): the operator may remove and
    // re-add the member within one of those.
    let mut watching = admin_of(t, watcher).await.ok();
    loop {
        for _ in 0..20 {
            if dropped {
                break;
            }
            match watching.as_mut() {
                Some(a) => match a.status(StatusRequest {}).await {
                    Ok(st) => dropped |= !st.into_inner().voters.contains(&victim),
                    Err(_) => watching = admin_of(t, watcher).await.ok(),
                },
                None => watching = admin_of(t, watcher).await.ok(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = t.incarnation(victim).await?;
        let s = t.status().await?.unwrap_or_default();
        let healthy = voters(&s) == ids && s.members.iter().all(|m| m.healthy);
        if dropped && now.is_some() && now != before && healthy {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < OPERATION,
            "member {victim} not back as a new voter (left the membership: {dropped}): {:?} {:?}",
            s.members,
            s.operation
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every member's own view of members 1..=n: the same voters, one leader,
/// one term.
pub async fn views_agree<T: Target>(t: &T, n: u64) -> anyhow::Result<()> {
    let ids: Vec<u64> = (1..=n).collect();
    let mut views = Vec::new();
    for id in &ids {
        let st = node_status(t, *id).await?;
        let mut voters = st.voters.clone();
        voters.sort_unstable();
        views.push((voters, st.leader_id, st.term));
    }
    anyhow::ensure!(
        views
            .iter()
            .all(|v| v.0 == ids && v.1 != 0 && *v == views[0]),
        "members' own views: {views:?}"
    );
    Ok(())
}

/// A wiped volume under a live member: its raft log and snapshots removed and
/// its process killed, the runtime restarts it in place with the settings it
/// had. It must not come back empty under the identity that held state: it
/// refuses to start (the data-lost exit), leaves the membership and joins
/// again as a new learner, while a client keeps writing. Done for an initial
/// member, then for a member added by a scale-up (the cluster grows to 4 and
/// back to 3). Every acknowledged write is on every member afterwards and
/// every member's own view agrees. Returns the time from each wipe to all
/// voters healthy again.
pub async fn wiped_member_is_replaced<T: Target>(
    t: &mut T,
    keys: &[String],
) -> anyhow::Result<[Duration; 2]> {
    let mut took = [Duration::ZERO; 2];
    for (round, n) in [(0, 3u64), (1, 4)] {
        if n > 3 {
            t.scale(n as u32).await?;
        }
        let s = wait_settled(t, n).await?;
        let victim = match n {
            3 => follower(&s)?,
            _ => n,
        };
        let before = t.incarnation(victim).await?;
        let wiped = Instant::now();
        t.wipe_member(victim).await?;
        let t = &*t;
        let done = std::cell::Cell::new(false);
        let back = async {
            let r = rejoined(t, victim, n, before).await;
            done.set(true);
            r
        };
        let prefix = format!("wiped-{victim}/");
        let (back, writes) = futures::join!(back, write_until(t, &prefix, &done));
        back?;
        took[round] = wiped.elapsed();
        let writes = writes?;
        anyhow::ensure!(!writes.acked.is_empty(), "no write acknowledged meanwhile");
        views_agree(t, n).await?;
        for id in 1..=n {
            check_keys(t, &[id], keys).await?;
            check_keys(t, &[id], &writes.acked).await?;
        }
    }
    t.scale(3).await?;
    wait_settled(t, 3).await?;
    Ok(took)
}

/// Member `id`'s admin API as the cluster's admin, each call bounded in time:
/// a forwarded connection (kind) can stall after it was accepted.
async fn admin_of<T: Target>(t: &T, id: u64) -> anyhow::Result<NodeAdminClient<Channel>> {
    let dialer = t.dialer().await?;
    let endpoint = dialer
        .endpoint(&t.admin(id).await?)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    Ok(NodeAdminClient::new(
        dialer.connect(endpoint, Expect::AnyMember).await?,
    ))
}

/// Member `id`'s raft status.
pub async fn node_status<T: Target>(t: &T, id: u64) -> anyhow::Result<StatusResponse> {
    Ok(admin_of(t, id)
        .await?
        .status(StatusRequest {})
        .await?
        .into_inner())
}

/// The cluster is closed to whoever holds no certificate of it: plaintext
/// gets no answer; the client certificate reads and writes data and reads a
/// member's status but may not change a member (PERMISSION_DENIED); the
/// admin certificate may.
pub async fn tls_closes_every_port<T: Target>(t: &T) -> anyhow::Result<()> {
    let eps = t.endpoints().await?;
    let plain = KvClient::new(
        &eps,
        Duration::from_secs(3),
        &raftlane_tls::Dialer::Plaintext,
    )?;
    anyhow::ensure!(
        plain.put(b"tls/plain", b"x").await.is_err(),
        "a plaintext client wrote to a TLS cluster"
    );
    let client = t.dialer_for("client").await?;
    let kv = KvClient::new(&eps, Duration::from_secs(20), &client)?;
    kv.put(b"tls/client", b"v").await?;
    anyhow::ensure!(kv.get(b"tls/client").await?.as_deref() == Some(&b"v"[..]));
    let admin_addr = t.admin(1).await?;
    let endpoint = client
        .endpoint(&admin_addr)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let mut as_client = NodeAdminClient::new(client.connect(endpoint, Expect::AnyMember).await?);
    as_client.status(StatusRequest {}).await?;
    match as_client.snapshot(SnapshotRequest {}).await {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => anyhow::bail!("a client certificate took a snapshot: {other:?}"),
    }
    let mut as_admin = admin_of(t, 1).await?;
    as_admin.snapshot(SnapshotRequest {}).await?;
    Ok(())
}

/// Scenario 1: create 3: Available with a leader; 1000 keys written.
pub async fn create_three<T: Target>(t: &T) -> anyhow::Result<Vec<String>> {
    let s = wait_settled(t, 3).await?;
    anyhow::ensure!(s.leader.is_some(), "no leader in status");
    write_keys(t, "create/", 1000).await
}

/// Scenario 2: scale 3 → 5: learners added one at a time, caught up, promoted; every key
/// readable from the new members. Returns the time from edit to 5 voters.
pub async fn scale_up_to_five<T: Target>(t: &mut T, keys: &[String]) -> anyhow::Result<Duration> {
    let edited = Instant::now();
    t.scale(5).await?;
    // Never two learners at once.
    let watch = wait_for("5 voters, one learner at a time", OPERATION, || async {
        let s = t.status().await?.unwrap_or_default();
        let learners = s
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Learner)
            .count();
        anyhow::ensure!(learners <= 1, "two learners at once: {:?}", s.members);
        Ok(
            (voters(&s) == vec![1, 2, 3, 4, 5] && s.members.iter().all(|m| m.healthy))
                .then_some(()),
        )
    });
    watch.await?;
    let took = edited.elapsed();
    check_keys(t, &[4, 5], keys).await?;
    Ok(took)
}

/// Scenario 3: scale 5 → 3: highest ids removed, their processes stopped only after the
/// removal; writes keep succeeding throughout and none acknowledged is lost.
pub async fn scale_down_to_three<T: Target>(t: &mut T, keys: &[String]) -> anyhow::Result<()> {
    let client = kv(t, Some(&[1, 2, 3])).await?;
    t.scale(3).await?;
    let mut acked = Vec::new();
    let deadline = Instant::now() + OPERATION;
    let mut i = 0;
    loop {
        let k = format!("during-scale-down/{i:06}");
        client.put(k.as_bytes(), k.as_bytes()).await?;
        acked.push(k);
        i += 1;
        let s = t.status().await?.unwrap_or_default();
        // A removed member's process goes only after it left the membership, as
        // raft itself (not the status file, written after each pass) says.
        for id in [4, 5] {
            if t.incarnation(id).await?.is_none() {
                // Unanswered now (a forward being re-opened): asked next round.
                let Ok(live) = node_status(t, 1).await else {
                    continue;
                };
                anyhow::ensure!(
                    !live.voters.contains(&id) && !live.learners.contains(&id),
                    "member {id} stopped while still in the membership"
                );
            }
        }
        let gone = t.incarnation(4).await?.is_none() && t.incarnation(5).await?.is_none();
        if gone && voters(&s) == vec![1, 2, 3] {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "scale down not done: {:?}",
            s.members
        );
    }
    wait_settled(t, 3).await?;
    check_keys(t, &[1, 2, 3], keys).await?;
    check_keys(t, &[1, 2, 3], &acked).await
}

/// Scenarios 4 and 5: `kill -9` a member (a follower, or the leader): it comes back on a new
/// address, every other member got that address in place (not restarted), the
/// leader streams to it again, and it catches up. Returns the time from the kill
/// to that point.
pub async fn kill_member_comes_back<T: Target>(
    t: &mut T,
    leader: bool,
    keys: &[String],
) -> anyhow::Result<Duration> {
    let s = wait_settled(t, 3).await?;
    let lead: u64 = s
        .leader
        .as_deref()
        .and_then(|n| n.rsplit('-').next()?.parse::<u64>().ok())
        .map(|o| o + 1)
        .unwrap_or(1);
    let victim = if leader {
        lead
    } else {
        (1..=3).find(|i| *i != lead).unwrap()
    };
    let old_addr = s
        .members
        .iter()
        .find(|m| m.id == victim)
        .unwrap()
        .address
        .clone();
    let others: Vec<u64> = (1..=3).filter(|i| *i != victim).collect();
    let mut before = BTreeMap::new();
    for id in &others {
        before.insert(*id, t.incarnation(*id).await?);
    }
    let killed = Instant::now();
    t.kill_member(victim).await?;
    let new_addr = wait_for("member back on a new address", OPERATION, || async {
        let s = t.status().await?.unwrap_or_default();
        Ok(s.members
            .iter()
            .find(|m| m.id == victim && m.address != old_addr && m.healthy)
            .map(|m| m.address.clone()))
    })
    .await?;
    // Every other member has the new address in place with streaming allowed; the
    // leader (the only one raft makes send to it) streams to it again.
    wait_for(
        "peers updated, the leader streaming to the new address",
        OPERATION,
        || async {
            for id in &others {
                let Ok(st) = node_status(t, *id).await else {
                    return Ok(None);
                };
                let Some(p) = st.peers.iter().find(|p| p.id == victim) else {
                    return Ok(None);
                };
                let leads = st.role == "leader";
                let streaming = p.lanes.iter().any(|l| l.stream_open);
                if p.address != new_addr || p.no_stream || (leads && !streaming) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    let took = killed.elapsed();
    for id in &others {
        anyhow::ensure!(
            t.incarnation(*id).await? == before[id],
            "member {id} was restarted"
        );
    }
    wait_settled(t, 3).await?;
    check_keys(t, &[victim], keys).await?;
    Ok(took)
}

/// Scenario 7: every member killed at once (`kill -9` each, every pod deleted):
/// all come back under the same ids with their data, every key readable
/// through each of them, and writes accepted again. Returns the time from the
/// first kill to the new instances agreeing on a leader.
pub async fn all_members_killed_recover<T: Target>(
    t: &mut T,
    keys: &[String],
) -> anyhow::Result<Duration> {
    let s = wait_settled(t, 3).await?;
    let ids: Vec<u64> = s.members.iter().map(|m| m.id).collect();
    let mut before = BTreeMap::new();
    for id in &ids {
        before.insert(*id, t.incarnation(*id).await?);
    }
    let killed = Instant::now();
    for id in &ids {
        t.kill_member(*id).await?;
    }
    // The status written before the kills still reads as settled: ask the new
    // instances themselves first.
    wait_for(
        "every member back, agreeing on a leader",
        OPERATION,
        || async {
            let mut leaders = BTreeSet::new();
            for id in &ids {
                let now = t.incarnation(*id).await?;
                if now.is_none() || now == before[id] {
                    return Ok(None);
                }
                // A member still starting does not answer yet.
                let Ok(st) = node_status(t, *id).await else {
                    return Ok(None);
                };
                let mut voters = st.voters.clone();
                voters.sort_unstable();
                if st.leader_id == 0 || voters != ids {
                    return Ok(None);
                }
                leaders.insert(st.leader_id);
            }
            Ok((leaders.len() == 1).then_some(()))
        },
    )
    .await?;
    let took = killed.elapsed();
    let s = wait_settled(t, 3).await?;
    anyhow::ensure!(voters(&s) == ids, "members after recovery: {:?}", s.members);
    for id in &ids {
        check_keys(t, &[*id], keys).await?;
    }
    write_keys(t, "after-all-killed/", 10).await?;
    Ok(took)
}

/// Scenario: a follower's data is destroyed with it (a lost disk). It must not
/// come back empty under its old identity: the leader's membership drops it,
/// then it joins again as a new learner, catches up and is promoted, and
/// every key is readable through it. Returns the time from the loss to three
/// healthy voters.
pub async fn lost_member_rejoins_empty<T: Target>(
    t: &mut T,
    keys: &[String],
) -> anyhow::Result<Duration> {
    let s = wait_settled(t, 3).await?;
    let victim = follower(&s)?;
    let lost = Instant::now();
    back_as_a_new_member(t, victim, 3, |t| Box::pin(t.lose_member(victim))).await?;
    let took = lost.elapsed();
    check_keys(t, &[victim], keys).await?;
    Ok(took)
}

/// Pause: with `spec.paused` the operator keeps writing the status
/// (`ReconciliationPaused`) and takes no step: a killed follower stays down
/// for several passes. Unpaused, it comes back and the cluster settles.
pub async fn paused_cluster_is_left_alone<T: Target>(
    t: &mut T,
    keys: &[String],
) -> anyhow::Result<()> {
    let s = wait_settled(t, 3).await?;
    let victim = follower(&s)?;
    t.set_paused(true).await?;
    let paused = |s: &RaftClusterStatus| s.is(RECONCILIATION_PAUSED);
    wait_for("condition ReconciliationPaused", OPERATION, || async {
        Ok(t.status().await?.filter(|s| paused(s)).map(|_| ()))
    })
    .await?;
    let before = t.incarnation(victim).await?;
    t.kill_member(victim).await?;
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(6) {
        // Gone, or the killed one not yet reaped: never a new incarnation.
        let now = t.incarnation(victim).await?;
        anyhow::ensure!(
            now.is_none() || now == before,
            "member {victim} was restarted while paused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = t.status().await?.unwrap_or_default();
    anyhow::ensure!(
        paused(&s),
        "the status no longer says paused: {:?}",
        s.conditions
    );
    t.set_paused(false).await?;
    wait_for("the member back after unpausing", OPERATION, || async {
        let now = t.incarnation(victim).await?;
        Ok((now.is_some() && now != before).then_some(()))
    })
    .await?;
    wait_settled(t, 3).await?;
    check_keys(t, &[victim], keys).await
}

/// Failed-member replacement: with `failureReplacement.after: 10s`, a
/// follower that cannot start any more is replaced: it leaves the membership
/// (as the other members see it), comes back as a new incarnation on fresh
/// storage, is promoted, and serves every key. Returns the time from the
/// failure to three healthy voters again; replacement is off again after.
pub async fn failed_member_is_replaced<T: Target>(
    t: &mut T,
    keys: &[String],
) -> anyhow::Result<Duration> {
    t.replace_failed_after("10s").await?;
    let s = wait_settled(t, 3).await?;
    let victim = follower(&s)?;
    let failed = Instant::now();
    back_as_a_new_member(t, victim, 3, |t| Box::pin(t.break_member(victim))).await?;
    anyhow::ensure!(
        failed.elapsed() >= Duration::from_secs(10),
        "replaced before spec.failureReplacement.after"
    );
    let took = failed.elapsed();
    check_keys(t, &[victim], keys).await?;
    // Off again: later scenarios take members down on purpose.
    t.patch_spec(serde_json::json!({"failureReplacement": null}))
        .await?;
    Ok(took)
}

/// Scenario 6: the operator dies between "learner added" and "promoted": the next
/// operator finishes the operation, and no second member is added.
pub async fn operator_crash_between_add_and_promote<T: Target>(t: &mut T) -> anyhow::Result<()> {
    wait_settled(t, 3).await?;
    t.restart_operator(Some("after-add-learner")).await?;
    t.scale(4).await?;
    let deadline = Instant::now() + OPERATION;
    while !t.operator_exited().await? {
        anyhow::ensure!(Instant::now() < deadline, "the failpoint never fired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = t.status().await?.unwrap_or_default();
    anyhow::ensure!(
        !voters(&s).contains(&4),
        "promoted before the crash: {:?}",
        s.members
    );
    let learner = t.incarnation(4).await?;
    anyhow::ensure!(learner.is_some(), "member 4 is not running after the crash");
    t.restart_operator(None).await?;
    wait_settled(t, 4).await?;
    anyhow::ensure!(
        t.incarnation(4).await? == learner,
        "member 4 was started again, not resumed"
    );
    anyhow::ensure!(
        t.incarnation(5).await?.is_none(),
        "a second member was added"
    );
    Ok(())
}

/// How [`write_while`] writes: for at most `within`, `pause` between keys
/// (keeps a long run's keys few enough to read back from every member), an
/// attempt given up after `request` (a member cut off never answers, and the
/// writer should move on to the next).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub within: Duration,
    pub pause: Duration,
    pub request: Duration,
}

/// What a writer saw during an operation: keys acknowledged, and attempts
/// that failed and were retried (a member restarting under it).
#[derive(Debug, Default)]
pub struct Writes {
    pub acked: Vec<String>,
    /// When each of `acked` was acknowledged.
    pub acked_at: Vec<Instant>,
    pub retried: u64,
}

impl Writes {
    /// How many writes were acknowledged between `from` and `to`.
    pub fn acked_within(&self, from: Instant, to: Instant) -> usize {
        self.acked_at
            .iter()
            .filter(|at| **at >= from && **at <= to)
            .count()
    }
}

/// [`write_while`] for at most [`OPERATION`].
async fn write_until<T: Target>(
    t: &T,
    prefix: &str,
    done: &std::cell::Cell<bool>,
) -> anyhow::Result<Writes> {
    let pace = Pace {
        within: OPERATION,
        pause: Duration::ZERO,
        request: Duration::from_secs(20),
    };
    write_while(t, prefix, done, pace).await
}

/// Writes keys `<prefix><i>` one after another until `done` is set (bounded
/// by `within` and 200 000 keys), each attempt on its own, round-robin
/// over the members; a failed attempt is retried on the next member, on a
/// new client when the endpoints changed (a restarted member listens
/// elsewhere). A key that fails 50 times fails the writer.
pub async fn write_while<T: Target>(
    t: &T,
    prefix: &str,
    done: &std::cell::Cell<bool>,
    pace: Pace,
) -> anyhow::Result<Writes> {
    let Pace {
        within,
        pause,
        request,
    } = pace;
    let mut w = Writes::default();
    let started = Instant::now();
    let mut endpoints = t.endpoints().await?;
    let mut client = kv(t, None).await?;
    for i in 0..200_000u64 {
        if done.get() || started.elapsed() > within {
            break;
        }
        let k = format!("{prefix}{i:06}");
        let mut attempts = 0;
        loop {
            let put = client.put_once(k.clone().into_bytes(), k.clone().into_bytes());
            match tokio::time::timeout(request, put)
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")))
            {
                Ok(_) => break,
                Err(e) => {
                    attempts += 1;
                    w.retried += 1;
                    anyhow::ensure!(attempts < 50, "key {k} failed 50 times: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = t.endpoints().await.unwrap_or_default();
                    if now != endpoints && !now.is_empty() {
                        if let Ok(c) = kv(t, None).await {
                            (client, endpoints) = (c, now);
                        }
                    }
                }
            }
        }
        w.acked.push(k);
        w.acked_at.push(Instant::now());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(w)
}

/// Members of `ids` that do not answer their admin `Status` now.
async fn unanswered<T: Target>(t: &T, ids: &[u64]) -> BTreeSet<u64> {
    let asks = ids.iter().map(|id| node_status(t, *id));
    let answers = futures::future::join_all(asks).await;
    ids.iter()
        .zip(answers)
        .filter(|(_, a)| a.is_err())
        .map(|(id, _)| *id)
        .collect()
}

/// How long a member must stay unanswering to count as down during a
/// rollout. A Kubernetes target reaches a new pod through a port-forward
/// that takes about a second to open after the pod runs, while the operator
/// reaches it at once: without this slack, a member back and healthy for the
/// operator would be counted down by the test. A restart lasts longer.
const DOWN_AFTER: Duration = Duration::from_millis(1500);

/// Waits until every one of `n` members runs at the status's update
/// revision, healthy, with the rollout complete (current = update); checks
/// all along that no two members are down at once. Returns that status.
async fn rolled<T: Target>(t: &T, n: u64, from: &str) -> anyhow::Result<RaftClusterStatus> {
    let ids: Vec<u64> = (1..=n).collect();
    let deadline = Instant::now() + OPERATION;
    let mut silent_since: BTreeMap<u64, Instant> = BTreeMap::new();
    loop {
        let s = t.status().await?.unwrap_or_default();
        let silent = unanswered(t, &ids).await;
        silent_since.retain(|id, _| silent.contains(id));
        for id in &silent {
            silent_since.entry(*id).or_insert_with(Instant::now);
        }
        let down: Vec<u64> = silent_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= DOWN_AFTER)
            .map(|(id, _)| *id)
            .collect();
        anyhow::ensure!(
            down.len() <= 1,
            "members {down:?} down at once during a rollout: {:?}",
            s.members
        );
        let update = s.update_revision.as_deref().unwrap_or_default();
        let done = update != from
            && s.current_revision.as_deref() == Some(update)
            && s.updated_replicas as u64 == n
            && voters(&s) == ids
            && s.members.iter().all(|m| m.healthy);
        if done {
            return Ok(s);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "rollout from {from} not complete: {:?} {:?}",
            s.operation,
            s.conditions
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition<'a>(
    s: &'a RaftClusterStatus,
    type_: &str,
) -> Option<&'a raft_operator::crd::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// Rolling update: a new image rolls through all `n` members, one at a time,
/// each on its own data and id, while a client keeps writing. Every member is
/// a new incarnation at the end, no two were down at once, and every
/// acknowledged write is on every member. Returns the time from the edit to
/// the rollout complete, and what the writer saw.
pub async fn rolling_update_under_writes<T: Target>(
    t: &mut T,
    n: u64,
    keys: &[String],
) -> anyhow::Result<(Duration, Writes)> {
    let s = wait_settled(t, n).await?;
    let from = s
        .update_revision
        .clone()
        .context("no update revision in status")?;
    anyhow::ensure!(
        s.current_revision.as_deref() == Some(from.as_str()),
        "a rollout in progress before the edit: {:?}",
        s.conditions
    );
    let mut before = BTreeMap::new();
    for id in 1..=n {
        before.insert(id, t.incarnation(id).await?);
    }
    let image = t.rollout_image(true).await?;
    let edited = Instant::now();
    t.patch_spec(serde_json::json!({ "image": image })).await?;
    let done = std::cell::Cell::new(false);
    let rollout = async {
        let r = rolled(t, n, &from).await;
        done.set(true);
        r
    };
    let (rolled_to, writes) = futures::join!(rollout, write_until(t, "rollout/", &done));
    let took = edited.elapsed();
    let (s, writes) = (rolled_to?, writes?);
    // Each restart costs the writer a few failed attempts (100 ms apart)
    // while the member it was writing to is down; far more means writes
    // stalled.
    let bound = 150 * n;
    anyhow::ensure!(
        writes.retried <= bound,
        "{} write attempts failed during the rollout (more than {bound})",
        writes.retried
    );
    for id in 1..=n {
        let now = t.incarnation(id).await?;
        anyhow::ensure!(
            now.is_some() && now != before[&id],
            "member {id} was not restarted by the rollout"
        );
    }
    let progressing = condition(&s, PROGRESSING).context("no Progressing condition")?;
    anyhow::ensure!(progressing.reason != "RollingUpdate", "{progressing:?}");
    views_agree(t, n).await?;
    let ids: Vec<u64> = (1..=n).collect();
    for id in &ids {
        check_keys(t, &[*id], keys).await?;
        check_keys(t, &[*id], &writes.acked).await?;
    }
    Ok((took, writes))
}

/// A failed rollout: an image whose members never become healthy stops the
/// rollout at its first member (the others keep running, untouched, and the
/// cluster stays Available), reported as Degraded, reason RolloutStalled,
/// after `spec.updateStrategy.progressDeadline` (10s here). Reverting the
/// image resumes: the broken member is rolled back and all are healthy.
/// Returns the time from the revert to all healthy again.
pub async fn failed_rollout_stops_and_resumes_after_revert<T: Target>(
    t: &mut T,
    keys: &[String],
) -> anyhow::Result<Duration> {
    t.patch_spec(serde_json::json!({"updateStrategy": {"progressDeadline": "10s"}}))
        .await?;
    let s = wait_settled(t, 3).await?;
    let good = s
        .update_revision
        .clone()
        .context("no update revision in status")?;
    let mut before = BTreeMap::new();
    for id in 1..=3 {
        before.insert(id, t.incarnation(id).await?);
    }
    // The image members run now, to revert to: the last rollout's.
    let working = t.rollout_image(true).await?;
    let broken = t.rollout_image(false).await?;
    t.patch_spec(serde_json::json!({ "image": broken })).await?;
    let stalled = wait_for("the rollout reported stalled", OPERATION, || async {
        let s = t.status().await?.unwrap_or_default();
        let degraded = condition(&s, DEGRADED).filter(|c| c.status == "True");
        Ok(degraded
            .filter(|c| c.reason == "RolloutStalled")
            .map(|c| (c.message.clone(), s.clone())))
    })
    .await?;
    let (message, s) = stalled;
    anyhow::ensure!(message.contains("progressDeadline"), "{message}");
    // Exactly one member was taken to the broken image; the others run on.
    let mut restarted = Vec::new();
    for id in 1..=3 {
        if t.incarnation(id).await? != before[&id] {
            restarted.push(id);
        }
    }
    anyhow::ensure!(
        restarted.len() == 1,
        "a stalled rollout restarted {restarted:?}: {:?}",
        s.members
    );
    anyhow::ensure!(
        s.is(AVAILABLE),
        "the cluster lost its quorum: {:?}",
        s.conditions
    );
    anyhow::ensure!(
        s.current_revision.as_deref() == Some(good.as_str()),
        "current revision moved to a broken one: {s:?}"
    );
    // It stays stopped: a few passes later nobody else was restarted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in (1..=3).filter(|id| !restarted.contains(id)) {
        anyhow::ensure!(
            t.incarnation(id).await? == before[&id],
            "member {id} restarted after the rollout stalled"
        );
    }
    let reverted = Instant::now();
    t.patch_spec(serde_json::json!({ "image": working }))
        .await?;
    wait_for("the rollout resumed and settled", OPERATION, || async {
        let s = t.status().await?.unwrap_or_default();
        let degraded = s.is(DEGRADED);
        let back = s.update_revision.as_deref() == Some(good.as_str())
            && s.current_revision.as_deref() == Some(good.as_str())
            && s.updated_replicas == 3
            && voters(&s) == [1, 2, 3]
            && s.members.iter().all(|m| m.healthy);
        Ok((back && !degraded).then_some(()))
    })
    .await?;
    let took = reverted.elapsed();
    for id in 1..=3 {
        check_keys(t, &[id], keys).await?;
    }
    Ok(took)
}

/// Writes `count` keys `<prefix><i>` (value `v<i>`), 32 at a time; every
/// write must be acknowledged.
pub async fn write_many<T: Target>(t: &T, prefix: &str, count: u64) -> anyhow::Result<()> {
    use futures::StreamExt;
    let client = kv(t, None).await?;
    let writes = futures::stream::iter(0..count).map(|i| {
        let client = &client;
        async move {
            let (k, v) = (format!("{prefix}{i:07}"), format!("v{i}"));
            client.put(k.as_bytes(), v.as_bytes()).await
        }
    });
    let mut writes = writes.buffer_unordered(32);
    while let Some(r) = writes.next().await {
        r?;
    }
    Ok(())
}

/// Checks, through each of members `ids` alone, that the keys under
/// `prefix` are exactly `<prefix><i>` = `v<i>` for i < `count`.
async fn check_many<T: Target>(t: &T, ids: &[u64], prefix: &str, count: u64) -> anyhow::Result<()> {
    for id in ids {
        let client = kv(t, Some(&[*id])).await?;
        let (mut next, mut bad) = (0u64, None);
        client
            .scan(prefix.as_bytes(), 10_000, 0, |kv| {
                let want = (format!("{prefix}{next:07}"), format!("v{next}"));
                if bad.is_none() && (kv.key != want.0.as_bytes() || kv.value != want.1.as_bytes()) {
                    bad = Some(format!(
                        "{:?} = {:?}",
                        String::from_utf8_lossy(&kv.key),
                        String::from_utf8_lossy(&kv.value)
                    ));
                }
                next += 1;
            })
            .await?;
        anyhow::ensure!(
            bad.is_none(),
            "member {id}: unexpected pair {}",
            bad.unwrap_or_default()
        );
        anyhow::ensure!(
            next == count,
            "member {id}: {next} keys under {prefix}, not {count}"
        );
    }
    Ok(())
}

/// What a backup and its restore took; shown as the `measured:` line.
#[derive(Debug)]
pub struct BackupRestore {
    /// From the RaftClusterBackup applied to its status listing the file.
    pub backup: Duration,
    /// From the restored RaftCluster applied to every member healthy.
    pub restore: Duration,
    /// The file's size, when the status has it.
    pub bytes: Option<u64>,
}

impl std::fmt::Display for BackupRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RaftClusterBackup listed in its status {:?} after it was applied ({:?} bytes); \
             restored 3-member cluster to healthy: {:?}",
            self.backup, self.bytes, self.restore
        )
    }
}

/// Backup and restore: `count` keys written; a RaftClusterBackup takes one
/// backup (status: the file, Ready); a new RaftCluster with `spec.restore`
/// from it forms with every key equal on every member, each read through
/// that member alone. Keys written after the backup are not in it.
pub async fn backup_and_restore<T: Target>(t: &mut T, count: u64) -> anyhow::Result<BackupRestore> {
    wait_settled(t, 3).await?;
    write_many(t, "bulk/", count).await?;
    let applied = Instant::now();
    t.apply_backup("snap", serde_json::json!({"keep": 2}))
        .await?;
    let file = wait_for("the backup in the status", OPERATION, || async {
        let s = t.backup_status("snap").await?.unwrap_or_default();
        if let Some(e) = &s.last_error {
            anyhow::bail!("the backup failed: {e}");
        }
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(s.backups.first().filter(|_| ready).cloned())
    })
    .await?;
    let backup = applied.elapsed();
    write_keys(t, "after-backup/", 10).await?;
    let created = Instant::now();
    let restore = serde_json::json!({"restore": {"file": file.file, "backup": "snap"}});
    let mut restored = t.new_cluster("restored", 3, restore).await?;
    wait_settled(&restored, 3).await?;
    let took = created.elapsed();
    // Formed, its members are rolled off their restore settings (locally
    // they are started without them from then on); then a member's process
    // killed in place starts again on its data.
    wait_for("no member at a restoring revision", OPERATION, || async {
        let s = restored.status().await?.unwrap_or_default();
        let done = s.update_revision.is_some()
            && s.current_revision == s.update_revision
            && s.updated_replicas == 3
            && s.members.iter().all(|m| m.healthy);
        Ok(done.then_some(()))
    })
    .await?;
    let before = restored.incarnation(1).await?;
    restored.kill_process(1).await?;
    wait_for(
        "restored member 1 back in place, applying",
        OPERATION,
        || async {
            let now = restored.incarnation(1).await?;
            if now.is_none() || now == before {
                return Ok(None);
            }
            let st = node_status(&restored, 1).await.ok();
            Ok(st
                .filter(|st| st.leader_id != 0 && st.applied_index > 0)
                .map(|_| ()))
        },
    )
    .await?;
    let s = wait_settled(&restored, 3).await?;
    anyhow::ensure!(s.leader.is_some(), "the restored cluster has no leader");
    for id in 1..=3 {
        let st = node_status(&restored, id).await?;
        anyhow::ensure!(
            st.voters == [1, 2, 3] && st.applied_index > 0,
            "restored member {id}'s own view: voters {:?}, applied {}",
            st.voters,
            st.applied_index
        );
    }
    check_many(&restored, &[1, 2, 3], "bulk/", count).await?;
    check_many(&restored, &[1, 2, 3], "after-backup/", 0).await?;
    Ok(BackupRestore {
        backup,
        restore: took,
        bytes: file.size,
    })
}

/// The rollout scenarios of a 3-member cluster, each printing what it
/// measured: a rolling update under writes, then a failed rollout and its
/// revert. `members` names what the members are ("members", "member pods").
pub async fn rollouts<T: Target>(t: &mut T, keys: &[String], members: &str) -> anyhow::Result<()> {
    let (took, writes) = rolling_update_under_writes(t, 3, keys).await?;
    eprintln!(
        "measured: rolling update of 3 {members} under writes: {took:?} ({} writes acknowledged, {} retried)",
        writes.acked.len(),
        writes.retried
    );
    let took = failed_rollout_stops_and_resumes_after_revert(t, keys).await?;
    eprintln!("measured: failed rollout reverted to all {members} healthy again: {took:?}");
    Ok(())
}
