//! One reconcile pass, the same for every runtime: observe the members and ask
//! each for its raft `Status`, plan, then act. Waiting is never done here: a
//! step that must wait is simply planned again on the next pass.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{MemberRequest, StatusRequest, UpsertPeersRequest};
use tonic::transport::{Channel, Endpoint};

use crate::crd::RaftClusterStatus;
use crate::plan::{Action, MemberReport, Observed, RuntimeMember};
use crate::runtime::{Member, Runtime};

/// Admin calls to members are bounded: an unresponsive member is unhealthy,
/// not a reason to stall the pass.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Admin clients by address, connected lazily.
#[derive(Default)]
pub struct AdminClients {
    by_addr: HashMap<String, NodeAdminClient<Channel>>,
}

impl AdminClients {
    fn get(&mut self, addr: &str) -> anyhow::Result<NodeAdminClient<Channel>> {
        if let Some(c) = self.by_addr.get(addr) {
            return Ok(c.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(ADMIN_TIMEOUT)
            .timeout(ADMIN_TIMEOUT)
            .connect_lazy();
        let c = NodeAdminClient::new(ch);
        self.by_addr.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// What one pass saw: the planner's input plus where each member listens.
pub struct Observation {
    pub observed: Observed,
    pub members: BTreeMap<u64, Member>,
}

/// Lists members and asks each for its status; `history` is the status the
/// last pass wrote (what it says the cluster has been through).
pub async fn observe<R: Runtime>(
    rt: &mut R,
    admins: &mut AdminClients,
    cluster_id: &str,
    history: &RaftClusterStatus,
) -> anyhow::Result<Observation> {
    let members: BTreeMap<u64, Member> = rt.list().await?.into_iter().map(|m| (m.id, m)).collect();
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
    for m in members.values() {
        observed.running.insert(
            m.id,
            RuntimeMember {
                id: m.id,
                peer_addr: m.peer_addr().map(str::to_string),
            },
        );
        let Some(addrs) = &m.addrs else { continue };
        let mut admin = admins.get(&addrs.admin)?;
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
    Ok(Observation { observed, members })
}

/// Carries out one planned action; returns what was done, for progress output.
pub async fn act<R: Runtime>(
    rt: &mut R,
    admins: &mut AdminClients,
    seen: &Observation,
    action: &Action,
) -> anyhow::Result<String> {
    let admin_of = |id: u64| -> anyhow::Result<String> {
        seen.members
            .get(&id)
            .and_then(|m| Some(m.addrs.as_ref()?.admin.clone()))
            .ok_or_else(|| anyhow::anyhow!("member {id} is not reachable"))
    };
    Ok(match action {
        Action::Create { id, initial_voters } => {
            let peers: BTreeMap<u64, String> = seen
                .members
                .values()
                .filter_map(|m| Some((m.id, m.peer_addr()?.to_string())))
                .collect();
            let m = rt.create(*id, initial_voters.as_ref(), &peers).await?;
            match &m.addrs {
                Some(a) => format!("started member {id} (peer {}, client {})", a.peer, a.client),
                None => format!("created member {id}"),
            }
        }
        Action::PushAddresses { on, peers } => {
            let mut a = admins.get(&admin_of(*on)?)?;
            a.upsert_peers(UpsertPeersRequest {
                peers: peers.iter().map(|(k, v)| (*k, v.clone())).collect(),
            })
            .await?;
            let list: Vec<String> = peers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("member {on} now reaches {}", list.join(", "))
        }
        Action::AddLearner { via, id } => {
            admins
                .get(&admin_of(*via)?)?
                .add_learner(MemberRequest { id: *id })
                .await?;
            format!("member {id} added as a learner")
        }
        Action::Promote { via, id } => {
            admins
                .get(&admin_of(*via)?)?
                .promote_learner(MemberRequest { id: *id })
                .await?;
            format!("member {id} promoted to voter")
        }
        Action::TransferLeader { via, to } => {
            admins
                .get(&admin_of(*via)?)?
                .transfer_leader(MemberRequest { id: *to })
                .await?;
            format!("leadership moved from {via} to {to}")
        }
        Action::RemoveMember { via, id } => {
            admins
                .get(&admin_of(*via)?)?
                .remove_member(MemberRequest { id: *id })
                .await?;
            format!("member {id} removed from the membership")
        }
        Action::Delete { id } => {
            rt.delete(*id).await?;
            format!("member {id} stopped (its data retired)")
        }
    })
}
