//! Scenarios only a real cluster can run: containers restarted in place by
//! the kubelet, and members that find each other through CoreDNS. The shared
//! scenarios (`crate::scenarios`) run here too; these check what the local
//! runtime and the process kubelet cannot show.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::KindTarget;
use crate::kube_target::{operator_selector, Kubectl as _};
use crate::scenarios::{check_keys, node_status, wait_settled, write_keys};
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
