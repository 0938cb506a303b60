//! Who a forwarded request is for. A follower forwards a client write to the
//! leader's peer address, but an address can be reused (a rescheduled pod's IP
//! handed to a member of another cluster, or to another member of this one), so
//! the request names the cluster and the member it expects, and the receiver
//! refuses it unless both are its own: a stale peer table never commits a write
//! in the wrong place. The peer port serves only such requests.

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::{LEADER_ID_HEADER, LEADER_PEER_ADDR_HEADER};

/// Cluster id the forwarding member expects the receiver to belong to.
pub const CLUSTER_HEADER: &str = "x-raftlane-cluster-id";
/// Member id the forwarding member expects the receiver to be.
pub const MEMBER_HEADER: &str = "x-raftlane-member-id";

/// This member, as forwarded requests must name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub id: u64,
}

/// Which listener a `Kv` service answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Client,
    Peer,
}

/// Where a request came from, once its identity metadata checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    /// Forwarded by a member: answered here, never forwarded again.
    Member,
}

/// Wraps `msg` for member `to` of `cluster_id`.
pub fn forwarded<T>(msg: T, cluster_id: &str, to: u64) -> Result<Request<T>, Status> {
    let mut r = Request::new(msg);
    let value = cluster_id.parse().map_err(|_| {
        Status::internal(format!(
            "cluster id {cluster_id:?} cannot be sent as {CLUSTER_HEADER} metadata"
        ))
    })?;
    r.metadata_mut().insert(CLUSTER_HEADER, value);
    r.metadata_mut().insert(MEMBER_HEADER, to.into());
    Ok(r)
}

/// Checks the identity metadata of a request received on `listener` by `me`.
pub fn origin(md: &MetadataMap, me: &Identity, listener: Listener) -> Result<Origin, Status> {
    let text = |key: &str| md.get(key).map(|v| v.to_str().unwrap_or("<not ASCII>"));
    let (cluster, member) = match (text(CLUSTER_HEADER), text(MEMBER_HEADER)) {
        (None, None) if listener == Listener::Client => return Ok(Origin::Client),
        (None, None) => {
            return Err(Status::failed_precondition(format!(
                "the peer port serves only requests forwarded by a member, which carry \
                 {CLUSTER_HEADER} and {MEMBER_HEADER}; clients use the client port"
            )))
        }
        (Some(c), Some(m)) => (c, m),
        (Some(_), None) | (None, Some(_)) => {
            return Err(Status::failed_precondition(format!(
                "a forwarded request must carry both {CLUSTER_HEADER} and {MEMBER_HEADER}"
            )))
        }
    };
    if cluster != me.cluster_id {
        return Err(Status::failed_precondition(format!(
            "forwarded request for cluster {cluster:?} reached member {} of cluster {:?}",
            me.id, me.cluster_id
        )));
    }
    let expected: u64 = member.parse().map_err(|_| {
        Status::invalid_argument(format!("{MEMBER_HEADER} {member:?} is not a member id"))
    })?;
    if expected != me.id {
        return Err(Status::failed_precondition(format!(
            "forwarded request for member {expected} reached member {} of cluster {:?}",
            me.id, me.cluster_id
        )));
    }
    Ok(Origin::Member)
}

/// UNAVAILABLE from a member that cannot serve a write, naming the leader in
/// metadata so a client can go there directly.
pub fn not_leader(me: u64, leader: u64, leader_peer: Option<&str>, why: &str) -> Status {
    let at = leader_peer.map_or(String::new(), |a| format!(" at peer address {a}"));
    let mut s = Status::unavailable(format!(
        "member {me} is not the leader and {why}; the leader is member {leader}{at}; retry"
    ));
    s.metadata_mut().insert(LEADER_ID_HEADER, leader.into());
    if let Some(v) = leader_peer.and_then(|a| a.parse().ok()) {
        s.metadata_mut().insert(LEADER_PEER_ADDR_HEADER, v);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            cluster_id: "uid-a".into(),
            id: 2,
        }
    }

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn a_request_forwarded_here_checks_out_on_either_listener() {
        let r = forwarded((), "uid-a", 2).unwrap();
        for l in [Listener::Client, Listener::Peer] {
            assert_eq!(origin(r.metadata(), &me(), l).unwrap(), Origin::Member);
        }
    }

    #[test]
    fn a_plain_request_is_a_client_one_on_the_client_port_and_refused_on_the_peer_port() {
        assert_eq!(
            origin(&md(&[]), &me(), Listener::Client).unwrap(),
            Origin::Client
        );
        let e = origin(&md(&[]), &me(), Listener::Peer).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains(CLUSTER_HEADER), "{}", e.message());
    }

    /// Metadata sent, code expected, words the message must contain.
    type Case = (
        &'static [(&'static str, &'static str)],
        tonic::Code,
        &'static [&'static str],
    );

    #[test]
    fn mismatched_or_partial_identity_is_refused_naming_the_values() {
        let cases: &[Case] = &[
            (
                &[(CLUSTER_HEADER, "uid-b"), (MEMBER_HEADER, "2")],
                tonic::Code::FailedPrecondition,
                &["\"uid-b\"", "\"uid-a\""],
            ),
            (
                &[(CLUSTER_HEADER, "uid-a"), (MEMBER_HEADER, "3")],
                tonic::Code::FailedPrecondition,
                &["member 3", "member 2"],
            ),
            (
                &[(CLUSTER_HEADER, "uid-a")],
                tonic::Code::FailedPrecondition,
                &[MEMBER_HEADER],
            ),
            (
                &[(CLUSTER_HEADER, "uid-a"), (MEMBER_HEADER, "two")],
                tonic::Code::InvalidArgument,
                &[MEMBER_HEADER, "\"two\""],
            ),
        ];
        for (pairs, code, words) in cases {
            for l in [Listener::Client, Listener::Peer] {
                let e = origin(&md(pairs), &me(), l).unwrap_err();
                assert_eq!(e.code(), *code, "{pairs:?}: {}", e.message());
                for w in *words {
                    assert!(e.message().contains(w), "{pairs:?}: {}", e.message());
                }
            }
        }
    }

    #[test]
    fn not_leader_names_the_leader_in_metadata() {
        let s = not_leader(2, 3, Some("127.0.0.3:7000"), "was forwarded to");
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_ID_HEADER).unwrap(), "3");
        assert_eq!(
            s.metadata().get(LEADER_PEER_ADDR_HEADER).unwrap(),
            "127.0.0.3:7000"
        );
        let s = not_leader(2, 3, None, "does not know its address");
        assert!(s.metadata().get(LEADER_PEER_ADDR_HEADER).is_none());
    }
}
