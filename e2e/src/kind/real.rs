//! Scenarios only a real cluster can run: containers restarted in place by
//! the kubelet, and members that find each other through CoreDNS. The shared
//! scenarios (`crate::scenarios`) run here too; these check what the local
//! runtime and the process kubelet cannot show.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::cmd::{blocking, output};
use super::KindTarget;
use crate::kube_target::{operator_selector, Kubectl as _};
use crate::scenarios::{
    check_keys, node_status, wait_settled, write_keys, write_while, Pace, Writes,
};
use crate::{wait_for, Target};

const OPERATION: Duration = Duration::from_secs(120);

impl KindTarget {
    /// Member `id`'s pod UID and IP.
    async fn pod_identity(&self, id: u64) -> anyhow::Result<(String, Option<String>)> {
        let pod = self
            .core
            .pod(id)
            .await?
            .with_context(|| format!("member {id} has no pod"))?;
        Ok((pod.uid, pod.ip))
    }

    /// Scales the operator's Deployment to `replicas` and waits for it.
    async fn scale_operator(&self, replicas: u32) -> anyhow::Result<()> {
        let n = format!("--replicas={replicas}");
        let kube = &self.core.kube;
        kube.call(&["scale", &self.core.operator, &n]).await?;
        let done = "--timeout=120s";
        match replicas {
            0 => {
                let selector = operator_selector();
                let args = ["wait", "--for=delete", "pod", "--selector", &selector, done];
                kube.call(&args).await?;
            }
            _ => {
                kube.call(&["rollout", "status", &self.core.operator, done])
                    .await?;
            }
        }
        Ok(())
    }
}

/// A follower's container killed inside its pod: the kubelet restarts it in
/// place — the same pod (UID), the same IP, the same volume — and it is
/// healthy again with every key. Returns the time to healthy.
pub async fn container_restarts_in_place(
    t: &mut KindTarget,
    keys: &[String],
) -> anyhow::Result<Duration> {
    let s = wait_settled(t, 3).await?;
    let victim = crate::scenarios::follower(&s)?;
    let before = t.pod_identity(victim).await?;
    let incarnation = t.incarnation(victim).await?;
    let killed = Instant::now();
    t.kill_process(victim).await?;
    wait_for("the container restarted, healthy", OPERATION, || async {
        let now = t.incarnation(victim).await?;
        if now.is_none() || now == incarnation {
            return Ok(None);
        }
        let st = node_status(t, victim).await.ok();
        Ok(st.filter(|st| st.leader_id != 0).map(|_| ()))
    })
    .await?;
    let took = killed.elapsed();
    let after = t.pod_identity(victim).await?;
    anyhow::ensure!(
        after == before,
        "member {victim} restarted in a new pod or on a new IP: {before:?} -> {after:?}"
    );
    wait_settled(t, 3).await?;
    check_keys(t, &[victim], keys).await?;
    Ok(took)
}

/// Members reach each other by their stable names through CoreDNS: with the
/// operator stopped (no address is pushed), every member's process is killed
/// in place; each starts again knowing its peers only by DNS name
/// (`<pod>.<cluster>-peers.<ns>.svc`), and they elect a leader, accept writes
/// and hold every key. Every member's own peer table lists the DNS names.
/// The operator is started again at the end. Returns the time from the
/// kills to a leader.
pub async fn members_find_each_other_by_dns(
    t: &mut KindTarget,
    keys: &[String],
) -> anyhow::Result<Duration> {
    wait_settled(t, 3).await?;
    t.scale_operator(0).await?;
    let ids = [1u64, 2, 3];
    let mut before = Vec::new();
    for id in ids {
        before.push(t.incarnation(id).await?);
    }
    let killed = Instant::now();
    for id in ids {
        t.kill_process(id).await?;
    }
    let leader = wait_for(
        "a leader among the restarted members",
        OPERATION,
        || async {
            let mut leaders = std::collections::BTreeSet::new();
            for (i, id) in ids.iter().enumerate() {
                let now = t.incarnation(*id).await?;
                if now.is_none() || now == before[i] {
                    return Ok(None);
                }
                let Ok(st) = node_status(t, *id).await else {
                    return Ok(None);
                };
                if st.leader_id == 0 {
                    return Ok(None);
                }
                leaders.insert(st.leader_id);
            }
            Ok((leaders.len() == 1).then(|| leaders.into_iter().next()))
        },
    )
    .await?
    .context("one leader")?;
    let took = killed.elapsed();
    for id in ids {
        let st = node_status(t, id).await?;
        for p in &st.peers {
            anyhow::ensure!(
                p.address.contains(".svc:"),
                "member {id} reaches {} at {} (not its DNS name): no operator runs",
                p.id,
                p.address
            );
        }
    }
    write_keys(t, "by-dns/", 20).await?;
    for id in ids {
        check_keys(t, &[id], keys).await?;
    }
    eprintln!("checked: with no operator, members restarted in place elected member {leader} through DNS names alone");
    t.scale_operator(1).await?;
    wait_settled(t, 3).await?;
    Ok(took)
}

/// A node stopped, drained or cut off: up to this for the cluster to
/// replace or take back a member (a failure replacement after 10 s, a new
/// pod, a fresh volume, a learner caught up and promoted).
const NODE_OPERATION: Duration = Duration::from_secs(240);
/// `kubectl drain`'s own timeout: three members replaced one at a time.
const DRAIN_TIMEOUT: &str = "--timeout=540s";
/// How long a worker stays cut off its network.
const CUT_FOR: Duration = Duration::from_secs(20);
/// The node scenarios' writers: for up to `within`, tens of writes a
/// second (few enough to read every one back through each member), each
/// attempt given up after 2 s (a member on a node cut off never answers).
const fn pace(within: Duration) -> Pace {
    Pace {
        within,
        pause: Duration::from_millis(25),
        request: Duration::from_secs(2),
    }
}

/// A docker command, bounded in time.
async fn docker(args: &[&str], within: Duration) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new("docker");
    cmd.args(args);
    blocking(move || output(&mut cmd, within)).await
}

/// A kind node's addresses on the `kind` network (IPv4, IPv6), so it can be
/// connected again with the same ones: its kubelet's `--node-ip` and the
/// other nodes' pod routes name them.
async fn node_addresses(node: &str) -> anyhow::Result<(String, String)> {
    let f = "{{with index .NetworkSettings.Networks \"kind\"}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}";
    let out = docker(&["inspect", "--format", f, node], Duration::from_secs(30)).await?;
    let mut it = out.split_whitespace();
    let v4 = it.next().context("node has no IPv4 address on kind")?;
    Ok((v4.to_string(), it.next().unwrap_or_default().to_string()))
}

/// Connects `node` to the `kind` network again with its old addresses.
async fn reconnect(node: &str, (v4, v6): &(String, String)) -> anyhow::Result<()> {
    let mut args = vec!["network", "connect", "--ip", v4.as_str()];
    if !v6.is_empty() {
        args.extend(["--ip6", v6.as_str()]);
    }
    args.extend(["kind", node]);
    docker(&args, Duration::from_secs(60)).await.map(|_| ())
}

/// Moves the operator's pod to the control-plane node (a node selector
/// and a toleration of its taint on the Deployment) and waits for the
/// rollout: the worker scenarios then take down members only, never the
/// operator that has to act on it.
pub async fn operator_on_control_plane(t: &KindTarget) -> anyhow::Result<()> {
    let role = "node-role.kubernetes.io/control-plane";
    let patch = serde_json::json!({"spec": {"template": {"spec": {
        "nodeSelector": {role: ""},
        "tolerations": [{"key": role, "operator": "Exists", "effect": "NoSchedule"}],
    }}}});
    let kube = &t.core.kube;
    let patch = patch.to_string();
    kube.call(&["patch", &t.core.operator, "--patch", &patch])
        .await?;
    kube.call(&["rollout", "status", &t.core.operator, "--timeout=120s"])
        .await?;
    Ok(())
}

impl KindTarget {
    /// The kind cluster's name, from the kube context kind made for it.
    fn cluster(&self) -> String {
        let ctx = &self.core.kube.context;
        ctx.strip_prefix("kind-").unwrap_or(ctx).to_string()
    }

    /// Worker nodes (not the control plane), by name.
    async fn workers(&self) -> anyhow::Result<Vec<String>> {
        let out = self
            .core
            .kube
            .call(&[
                "get",
                "nodes",
                "--selector",
                "!node-role.kubernetes.io/control-plane",
                "--output=jsonpath={.items[*].metadata.name}",
            ])
            .await?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// Members 1..=n by the worker their pod is scheduled on (every worker
    /// listed, with none where it runs none).
    async fn members_by_node(&self, n: u64) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
        let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for w in self.workers().await? {
            by.entry(w).or_default();
        }
        for id in 1..=n {
            let node = self.core.pod(id).await?.and_then(|p| p.node);
            let node = node.with_context(|| format!("member {id}'s pod is not scheduled"))?;
            by.entry(node).or_default().push(id);
        }
        Ok(by)
    }

    /// A worker running exactly one of the 3 members, and that member: taking
    /// that node away leaves a quorum. When the scheduler put all three on
    /// one worker, one follower is moved first (that worker cordoned, the
    /// member's volume and pod deleted: it rejoins empty on another).
    async fn lone_member(&mut self) -> anyhow::Result<(String, u64)> {
        for _ in 0..2 {
            let by = self.members_by_node(3).await?;
            if let Some((node, ids)) = by.iter().find(|(_, ids)| ids.len() == 1) {
                return Ok((node.clone(), ids[0]));
            }
            let (full, _) = by
                .iter()
                .find(|(_, ids)| ids.len() == 3)
                .context("no worker with one member and none with all three")?;
            let full = full.clone();
            let s = wait_settled(self, 3).await?;
            let moved = crate::scenarios::follower(&s)?;
            eprintln!("spread: members {by:?}; member {moved} moved off {full}");
            self.core.kube.call(&["cordon", &full]).await?;
            let before = self.incarnation(moved).await?;
            self.lose_member(moved).await?;
            let back = wait_for("the moved member back", NODE_OPERATION, || async {
                let now = self.incarnation(moved).await?;
                let s = self.status().await?.unwrap_or_default();
                let healthy = three_healthy(&s);
                Ok((now.is_some() && now != before && healthy).then_some(()))
            })
            .await;
            self.core.kube.call(&["uncordon", &full]).await?;
            back?;
        }
        anyhow::bail!("no worker runs exactly one member")
    }

    /// Installs the pod routes and masquerade rule of every node again and
    /// waits for all nodes Ready (`scripts/kind.sh up` on this cluster): a
    /// node that left the network or restarted lost them, and this kind
    /// cluster's routes come from the script, not from a CNI daemon.
    async fn repair_network(&self) -> anyhow::Result<()> {
        let cluster = self.cluster();
        blocking(move || super::env::rerun_up(&cluster)).await
    }

    /// Pod UIDs of every pod in the namespace.
    async fn pod_uids(&self) -> anyhow::Result<BTreeSet<String>> {
        let list = self
            .core
            .kube
            .get_json(&["pods"])
            .await?
            .unwrap_or_default();
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
            .collect())
    }
}

/// What each member says of itself, read through that member alone: voters,
/// leader, term, commit and applied index. Equal for every member once
/// they agree and have applied everything.
async fn own_views(t: &KindTarget, n: u64) -> anyhow::Result<Vec<(u64, String)>> {
    let mut views = Vec::new();
    for id in 1..=n {
        let st = node_status(t, id).await?;
        let mut voters = st.voters.clone();
        voters.sort_unstable();
        let view = format!(
            "voters {voters:?} leader {} term {} commit {} applied {}",
            st.leader_id, st.term, st.commit_index, st.applied_index
        );
        views.push((id, view));
    }
    Ok(views)
}

/// Waits until every member's own view (see [`own_views`]) is the same,
/// with voters 1..=n; returns it.
async fn own_views_equal(t: &KindTarget, n: u64) -> anyhow::Result<String> {
    let last = std::cell::RefCell::new(Vec::new());
    let r = wait_for("every member's own view equal", OPERATION, || async {
        let Ok(views) = own_views(t, n).await else {
            return Ok(None);
        };
        let ids: Vec<u64> = (1..=n).collect();
        let same = views.iter().all(|(_, v)| *v == views[0].1)
            && views[0].1.starts_with(&format!("voters {ids:?} "));
        let view = views[0].1.clone();
        *last.borrow_mut() = views;
        Ok(same.then_some(view))
    })
    .await;
    r.with_context(|| format!("last views: {:?}", last.borrow()))
}

/// Every key of `keys` and every acknowledged write, read through each of
/// members 1..=n alone.
async fn every_member_holds(
    t: &KindTarget,
    n: u64,
    keys: &[String],
    acked: &[String],
) -> anyhow::Result<()> {
    for id in 1..=n {
        check_keys(t, &[id], keys).await?;
        check_keys(t, &[id], acked).await?;
    }
    Ok(())
}

/// After a scenario with failure replacement on: every member's own view
/// the same (returned), every key and acknowledged write on every member,
/// and replacement off again.
async fn settled_after(
    t: &mut KindTarget,
    keys: &[String],
    writes: &Writes,
) -> anyhow::Result<String> {
    let view = own_views_equal(t, 3).await?;
    every_member_holds(t, 3, keys, &writes.acked).await?;
    t.patch_spec(serde_json::json!({"failureReplacement": null}))
        .await?;
    Ok(view)
}

/// Three members, all healthy, in status `s`.
fn three_healthy(s: &raft_operator::crd::RaftClusterStatus) -> bool {
    s.members.len() == 3 && s.members.iter().all(|m| m.healthy)
}

/// What [`node_stopped_member_replaced`] measured.
pub struct NodeStopped {
    /// `docker stop` to the member running again on another node, all
    /// three voters healthy.
    pub replaced: Duration,
    /// Writes acknowledged while the member was away, and failed attempts.
    pub writes: Writes,
    /// `docker start` to the node Ready again (routes reinstalled).
    pub node_back: Duration,
}

/// A worker with one member stopped (`docker stop`), with
/// `failureReplacement.after: 10s`: the cluster keeps taking writes; the
/// member is replaced by a new pod on a fresh volume on another node (its
/// local-path volume went with the node). The node is started again: the
/// old pod does not come back (its UID is gone from the API, no raft-node
/// on that node mounts the old volume), and every member's own view is the
/// same, holding every acknowledged write.
pub async fn node_stopped_member_replaced(
    t: &mut KindTarget,
    keys: &[String],
) -> anyhow::Result<NodeStopped> {
    t.replace_failed_after("10s").await?;
    let (node, victim) = t.lone_member().await?;
    wait_settled(t, 3).await?;
    let old = t.core.pod(victim).await?.context("the member's pod")?;
    let old_dir = t
        .core
        .volume_dir(old.claim.as_deref().unwrap_or_default())
        .await?;
    let addresses = node_addresses(&node).await?;
    eprintln!("node stop: member {victim} on {node} ({addresses:?}), volume {old_dir}");
    let done = std::cell::Cell::new(false);
    let stopped = Instant::now();
    let outage = async {
        let r = async {
            docker(&["stop", &node], Duration::from_secs(120)).await?;
            wait_for(
                "the member replaced on another node",
                NODE_OPERATION,
                || async {
                    let pod = t.core.pod(victim).await?;
                    let moved = pod.is_some_and(|p| {
                        p.uid != old.uid && p.running && p.node.as_deref() != Some(node.as_str())
                    });
                    let s = t.status().await?.unwrap_or_default();
                    let healthy = three_healthy(&s);
                    Ok((moved && healthy).then_some(()))
                },
            )
            .await
        }
        .await;
        done.set(true);
        r
    };
    let (outage, writes) = futures::join!(
        outage,
        write_while(t, "node-stop/", &done, pace(NODE_OPERATION))
    );
    let replaced = stopped.elapsed();
    let writes = writes?;
    if let Err(e) = outage {
        // The node back before failing, for the scenarios and logs after.
        let _ = docker(&["start", &node], Duration::from_secs(60)).await;
        let _ = t.repair_network().await;
        return Err(e);
    }
    let while_down = writes.acked_within(stopped, stopped + replaced);
    anyhow::ensure!(
        while_down > 0,
        "no write acknowledged while {node} was down"
    );
    // The same addresses as before: its kubelet's --node-ip and the other
    // nodes' routes name them.
    docker(
        &["network", "disconnect", "kind", &node],
        Duration::from_secs(60),
    )
    .await?;
    reconnect(&node, &addresses).await?;
    let started = Instant::now();
    docker(&["start", &node], Duration::from_secs(60)).await?;
    t.repair_network().await?;
    let node_back = started.elapsed();
    // The old pod's UID never shows again; no raft-node on the node mounts
    // the old volume (the kubelet found the pod gone from the API).
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(20) {
        anyhow::ensure!(
            !t.pod_uids().await?.contains(&old.uid),
            "member {victim}'s old pod {} is back",
            old.uid
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let name = old_dir.rsplit('/').next().unwrap_or(&old_dir).to_string();
    let script = format!(
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = raft-node ] && \
         grep -q '/{name} ' $p/mountinfo 2>/dev/null && echo ${{p#/proc/}}; done; true"
    );
    let pids = docker(
        &["exec", &node, "sh", "-c", &script],
        Duration::from_secs(30),
    )
    .await?;
    anyhow::ensure!(
        pids.trim().is_empty(),
        "a raft-node on {node} runs on member {victim}'s old volume again: pids {pids}"
    );
    let view = settled_after(t, keys, &writes).await?;
    eprintln!("checked: {node} back, member {victim}'s old pod gone for good; every member's own view: {view}");
    Ok(NodeStopped {
        replaced,
        writes,
        node_back,
    })
}

/// What [`drain_moves_members`] measured.
pub struct Drained {
    pub node: String,
    /// Members that ran on the node.
    pub moved: Vec<u64>,
    /// `kubectl drain` started to its exit.
    pub took: Duration,
    /// `kubectl drain` started to three healthy voters, none on the node.
    pub whole: Duration,
    pub writes: Writes,
    /// The fewest member pods Ready at any time (what the
    /// PodDisruptionBudget counts).
    pub fewest_ready: usize,
}

/// Member pods Ready and not being deleted, as the PodDisruptionBudget
/// counts them.
async fn ready_pods(t: &KindTarget) -> anyhow::Result<usize> {
    let selector = raft_operator::naming::selector(&t.core.name);
    let list = t
        .core
        .kube
        .get_json(&["pods", "--selector", &selector])
        .await?;
    let items = list.as_ref().and_then(|l| l["items"].as_array()).cloned();
    Ok(items
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            let conditions = p["status"]["conditions"].as_array().into_iter().flatten();
            conditions
                .into_iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count())
}

/// `kubectl drain` of the worker running the most members, with
/// `failureReplacement.after: 10s`. An evicted member's pod cannot run
/// elsewhere (its local-path volume is pinned to the drained node): it stays
/// Pending, the PodDisruptionBudget (maxUnavailable 1) holds back the next
/// eviction, and the operator replaces the member on a fresh volume on
/// another node after 10 s; then the next one goes. The drain ends once the
/// last member's pod is evicted; that member is replaced the same way, and
/// only then is the node uncordoned. Writes continue throughout, never
/// fewer than two member pods Ready, no acknowledged write lost.
pub async fn drain_moves_members(t: &mut KindTarget, keys: &[String]) -> anyhow::Result<Drained> {
    t.replace_failed_after("10s").await?;
    wait_settled(t, 3).await?;
    let by = t.members_by_node(3).await?;
    let (node, moved) = by
        .iter()
        .max_by_key(|(_, ids)| ids.len())
        .map(|(n, ids)| (n.clone(), ids.clone()))
        .context("no worker")?;
    eprintln!("drain: {node} runs members {moved:?} (members by node: {by:?})");
    let done = std::cell::Cell::new(false);
    let fewest = std::cell::Cell::new(3usize);
    let started = Instant::now();
    let within = Duration::from_secs(600);
    let drain = async {
        let r = async {
            let mut cmd = t.core.kube.command(&[
                "drain",
                &node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                DRAIN_TIMEOUT,
            ]);
            let out = blocking(move || output(&mut cmd, within))
                .await
                .context("kubectl drain")?;
            let took = started.elapsed();
            eprintln!(
                "drain: {} after {took:?}",
                out.lines().last().unwrap_or_default()
            );
            wait_for(
                "three healthy voters off the drained node",
                NODE_OPERATION,
                || async {
                    let s = t.status().await?.unwrap_or_default();
                    let healthy = three_healthy(&s);
                    let by = t.members_by_node(3).await.ok();
                    let off = by.is_some_and(|b| b.get(&node).is_none_or(Vec::is_empty));
                    Ok((healthy && off).then_some(()))
                },
            )
            .await?;
            anyhow::Ok((took, started.elapsed()))
        }
        .await;
        done.set(true);
        r
    };
    let watch = async {
        while !done.get() {
            if let Ok(n) = ready_pods(t).await {
                fewest.set(fewest.get().min(n));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (drained, writes, ()) =
        futures::join!(drain, write_while(t, "drain/", &done, pace(within)), watch);
    let uncordon = t.core.kube.call(&["uncordon", &node]).await;
    let (took, whole) = drained?;
    uncordon?;
    let writes = writes?;
    anyhow::ensure!(
        fewest.get() >= 2,
        "only {} member pods Ready at one point of the drain",
        fewest.get()
    );
    settled_after(t, keys, &writes).await?;
    Ok(Drained {
        node,
        moved,
        took,
        whole,
        writes,
        fewest_ready: fewest.get(),
    })
}

/// What [`cut_off_worker_rejoins`] measured.
pub struct CutOff {
    pub member: u64,
    /// Disconnect to the status showing the member unhealthy.
    pub seen_down: Duration,
    /// Reconnect (routes reinstalled) to three healthy voters.
    pub back: Duration,
    pub writes: Writes,
    /// Writes acknowledged while the worker was cut off.
    pub acked_while_cut: usize,
    /// Every member's own view afterwards.
    pub view: String,
}

/// A worker with one member cut off its network (`docker network
/// disconnect kind`) for [`CUT_FOR`] while a client writes, then connected
/// again with its old addresses: the other two keep taking writes; after,
/// every member's own view (voters, leader, term, commit and applied index,
/// read through that member alone) is the same and every acknowledged
/// write is on every member. Failure replacement is off: the member is
/// taken back, not replaced.
pub async fn cut_off_worker_rejoins(t: &mut KindTarget, keys: &[String]) -> anyhow::Result<CutOff> {
    let (node, member) = t.lone_member().await?;
    wait_settled(t, 3).await?;
    let addresses = node_addresses(&node).await?;
    eprintln!("cut: member {member} on {node} ({addresses:?})");
    let done = std::cell::Cell::new(false);
    let cut = async {
        let r = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            docker(
                &["network", "disconnect", "kind", &node],
                Duration::from_secs(60),
            )
            .await?;
            let cut_at = Instant::now();
            let seen = wait_for("the cut member unhealthy", OPERATION, || async {
                let s = t.status().await?.unwrap_or_default();
                let down = s.members.iter().any(|m| m.id == member && !m.healthy);
                Ok(down.then(|| cut_at.elapsed()))
            })
            .await;
            tokio::time::sleep(CUT_FOR.saturating_sub(cut_at.elapsed())).await;
            reconnect(&node, &addresses).await?;
            let cut_window = (cut_at, Instant::now());
            let seen_down = seen?;
            let back_at = Instant::now();
            t.repair_network().await?;
            wait_for("the cut member healthy again", NODE_OPERATION, || async {
                let s = t.status().await?.unwrap_or_default();
                let healthy = three_healthy(&s);
                Ok(healthy.then_some(()))
            })
            .await?;
            anyhow::Ok((seen_down, back_at.elapsed(), cut_window))
        }
        .await;
        done.set(true);
        r
    };
    let writer = write_while(t, "cut/", &done, pace(NODE_OPERATION));
    let (cut, writes) = futures::join!(cut, writer);
    let (seen_down, back, (from, to)) = match cut {
        Ok(r) => r,
        Err(e) => {
            let _ = reconnect(&node, &addresses).await;
            let _ = t.repair_network().await;
            return Err(e);
        }
    };
    let writes = writes?;
    let view = own_views_equal(t, 3).await?;
    every_member_holds(t, 3, keys, &writes.acked).await?;
    let acked_while_cut = writes.acked_within(from, to);
    anyhow::ensure!(
        acked_while_cut > 0,
        "no write acknowledged while {node} was cut off"
    );
    Ok(CutOff {
        member,
        seen_down,
        back,
        acked_while_cut,
        writes,
        view,
    })
}

/// The operator's pod whose container's last run ended at the failpoint and
/// runs again, with the time its current run started.
fn restarted_after_failpoint(pods: &serde_json::Value) -> Option<(String, jiff::Timestamp)> {
    let code = serde_json::json!(raft_operator::reconcile::FAILPOINT_EXIT_CODE);
    pods["items"].as_array()?.iter().find_map(|p| {
        let c = p["status"]["containerStatuses"].as_array()?.first()?;
        (c["lastState"]["terminated"]["exitCode"] == code).then_some(())?;
        let started = c["state"]["running"]["startedAt"].as_str()?.parse().ok()?;
        Some((p["metadata"]["name"].as_str()?.to_string(), started))
    })
}

/// When the operator reported `reason` with a note containing `about`,
/// at or after `since` (events.k8s.io Events: the event time, or the last
/// of its series).
fn reported(
    events: &serde_json::Value,
    reason: &str,
    about: &str,
    since: jiff::Timestamp,
) -> Vec<jiff::Timestamp> {
    let items = events["items"].as_array().into_iter().flatten();
    items
        .filter(|e| e["reason"] == reason && e["note"].as_str().is_some_and(|n| n.contains(about)))
        .filter_map(|e| {
            let at = e["series"]["lastObservedTime"]
                .as_str()
                .or(e["eventTime"].as_str())?;
            at.parse::<jiff::Timestamp>().ok()
        })
        .filter(|at| *at >= since)
        .collect()
}

/// The failpoint scenario on kind: the operator exits right after adding
/// member 4 as a learner (the failpoint), and the kubelet restarts its
/// container in the same pod at once, so the order cannot be read from
/// the status (the next run promotes within a second). It is read from
/// what the cluster recorded instead: the container's last run ended with
/// the failpoint's exit code, member 4 was added as a learner once and
/// promoted once, and that promotion was reported after the restarted run
/// started; member 4 runs in the pod it was added in, and no member 5 was
/// made. The failpoint is cleared and the cluster scaled back to 3.
/// Returns the time from the scale to 4 voters.
pub async fn operator_crash_between_add_and_promote(
    t: &mut KindTarget,
) -> anyhow::Result<Duration> {
    wait_settled(t, 3).await?;
    t.restart_operator(Some("after-add-learner")).await?;
    let since = jiff::Timestamp::now();
    let scaled = Instant::now();
    t.scale(4).await?;
    let selector = operator_selector();
    let (pod, restarted) = wait_for(
        "the operator exited at the failpoint",
        OPERATION,
        || async {
            let pods = t
                .core
                .kube
                .get_json(&["pods", "--selector", &selector])
                .await?;
            Ok(pods.as_ref().and_then(restarted_after_failpoint))
        },
    )
    .await?;
    let learner = t.incarnation(4).await?.context("member 4 has no pod")?;
    wait_settled(t, 4).await?;
    let took = scaled.elapsed();
    let events = t
        .core
        .kube
        .get_json(&["events.events.k8s.io"])
        .await?
        .unwrap_or_default();
    let added = reported(&events, "LearnerAdded", "member 4 ", since);
    let promoted = reported(&events, "LearnerPromoted", "member 4 ", since);
    anyhow::ensure!(added.len() == 1, "member 4 added {added:?}");
    anyhow::ensure!(
        promoted.len() == 1 && promoted[0] >= restarted,
        "member 4 promoted at {promoted:?}, not once after the operator's container {pod} \
         restarted at {restarted}"
    );
    anyhow::ensure!(
        t.incarnation(4).await?.as_ref() == Some(&learner),
        "member 4 was started again, not resumed"
    );
    anyhow::ensure!(
        t.incarnation(5).await?.is_none(),
        "a second member was added"
    );
    eprintln!("checked: operator {pod} exited after adding learner 4 ({}), restarted at {restarted}, promoted it at {}", added[0], promoted[0]);
    t.restart_operator(None).await?;
    t.scale(3).await?;
    wait_settled(t, 3).await?;
    Ok(took)
}
