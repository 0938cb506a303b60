//! Who a certificate speaks for, written into its URI SAN.

use std::fmt;

use rustls_pki_types::CertificateDer;

const SCHEME: &str = "raftlane://";

/// What a certificate may do within its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A member: serves its ports and dials its peers.
    Member(u64),
    /// The operator that manages the cluster: may change membership.
    Operator,
    /// A person or tool with the operator's rights (`raftctl` for an admin).
    Admin,
    /// A client of the key-value API; may read member status, never change it.
    Client(String),
    /// Backup Jobs: may stream a backup (every key) and read status; may not
    /// change membership or peers.
    Backup,
}

/// One certificate's identity: its cluster (the RaftCluster's UID in
/// Kubernetes, the cluster's name in the local runtime) and its role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the certificate names no raftlane identity (a URI SAN {SCHEME}<cluster>/…)")]
    Missing,
    #[error("the certificate names {0} raftlane identities; exactly one is allowed")]
    Several(usize),
    #[error("{uri:?} is not a raftlane identity: {why}")]
    Malformed { uri: String, why: &'static str },
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
}

impl Identity {
    pub fn member(cluster: &str, id: u64) -> Identity {
        Identity::new(cluster, Role::Member(id))
    }

    pub fn operator(cluster: &str) -> Identity {
        Identity::new(cluster, Role::Operator)
    }

    pub fn admin(cluster: &str) -> Identity {
        Identity::new(cluster, Role::Admin)
    }

    pub fn client(cluster: &str, name: &str) -> Identity {
        Identity::new(cluster, Role::Client(name.to_string()))
    }

    pub fn backup(cluster: &str) -> Identity {
        Identity::new(cluster, Role::Backup)
    }

    fn new(cluster: &str, role: Role) -> Identity {
        Identity {
            cluster: cluster.to_string(),
            role,
        }
    }

    /// The member id, if this is a member.
    pub fn member_id(&self) -> Option<u64> {
        match self.role {
            Role::Member(id) => Some(id),
            _ => None,
        }
    }

    /// True for the identities allowed to change a member (membership, peers).
    pub fn may_administer(&self) -> bool {
        matches!(self.role, Role::Operator | Role::Admin)
    }

    /// True for the identities allowed to stream a backup: the
    /// administrators and the backup identity.
    pub fn may_take_backups(&self) -> bool {
        self.may_administer() || self.role == Role::Backup
    }

    /// The URI SAN form.
    pub fn uri(&self) -> String {
        let c = &self.cluster;
        match &self.role {
            Role::Member(id) => format!("{SCHEME}{c}/member/{id}"),
            Role::Operator => format!("{SCHEME}{c}/operator"),
            Role::Admin => format!("{SCHEME}{c}/admin"),
            Role::Client(name) => format!("{SCHEME}{c}/client/{name}"),
            Role::Backup => format!("{SCHEME}{c}/backup"),
        }
    }

    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let bad = |why| IdentityError::Malformed {
            uri: uri.to_string(),
            why,
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("not raftlane://"))?;
        let (cluster, path) = rest.split_once('/').ok_or_else(|| bad("no role"))?;
        if cluster.is_empty() {
            return Err(bad("empty cluster"));
        }
        let role = match path.split_once('/') {
            None if path == "operator" => Role::Operator,
            None if path == "admin" => Role::Admin,
            None if path == "backup" => Role::Backup,
            Some(("member", id)) => Role::Member(id.parse().map_err(|_| bad("member id"))?),
            Some(("client", name)) if !name.is_empty() && !name.contains('/') => {
                Role::Client(name.to_string())
            }
            _ => return Err(bad("unknown role")),
        };
        Ok(Identity::new(cluster, role))
    }

    /// The one raftlane identity in the URI SANs of `cert` (other URIs ignored).
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
        let ee = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let ours: Vec<&str> = ee
            .valid_uri_names()
            .filter(|u| u.starts_with(SCHEME))
            .collect();
        match ours.as_slice() {
            [] => Err(IdentityError::Missing),
            [one] => Identity::parse(one),
            many => Err(IdentityError::Several(many.len())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_uri() {
        for id in [
            Identity::member("6f1c-uid", 7),
            Identity::operator("demo"),
            Identity::admin("demo"),
            Identity::client("demo", "alice"),
            Identity::backup("demo"),
        ] {
            assert_eq!(Identity::parse(&id.uri()).unwrap(), id, "{id}");
        }
    }

    #[test]
    fn malformed_uris_are_refused_with_the_reason() {
        for (uri, why) in [
            ("spiffe://demo/member/1", "not raftlane://"),
            ("raftlane://demo", "no role"),
            ("raftlane:///member/1", "empty cluster"),
            ("raftlane://demo/member/one", "member id"),
            ("raftlane://demo/member/1/x", "member id"),
            ("raftlane://demo/client/", "unknown role"),
            ("raftlane://demo/root", "unknown role"),
        ] {
            match Identity::parse(uri) {
                Err(IdentityError::Malformed { why: w, .. }) => assert_eq!(w, why, "{uri}"),
                other => panic!("{uri}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_the_operator_and_admins_may_administer() {
        assert!(Identity::operator("c").may_administer());
        assert!(Identity::admin("c").may_administer());
        assert!(!Identity::member("c", 1).may_administer());
        assert!(!Identity::client("c", "x").may_administer());
    }
}
