//! The rules for one cluster's certificates, shared by both runtimes: which
//! certificates exist, how long they live, when each is renewed, and how the
//! CA is rotated. Data in, data out: a runtime reads what it stores (Secrets,
//! files under the state dir) into a [`Stored`], calls [`plan`], and writes
//! back what the returned [`Changes`] hold.
//!
//! CA rotation: the CA is rotated when it is itself due for renewal, or when
//! the RaftCluster's annotation [`ROTATE_CA_ANNOTATION`] holds a value other
//! than the one recorded at the last rotation. It goes in three stages, each
//! held for the runtime's `grace` (how long stored files take to reach every
//! member: a kubelet refreshes Secret volumes a minute or more after the write)
//! so that no member ever meets a certificate it does not trust yet:
//! 1. the new CA is made and every party's trust bundle becomes `new + old`;
//!    certificates stay the old CA's;
//! 2. after `grace`, every certificate is reissued by the new CA;
//! 3. after another `grace`, once every member's certificate is the new CA's,
//!    the old CA leaves the bundle.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use raftlane_tls::issue::{renewal_due, Authority};
use raftlane_tls::Identity;

const DAY: Duration = Duration::from_secs(86_400);
/// How long a cluster CA lives (rotated with a third of it left).
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// How long a member, operator or user certificate lives (renewed with a third left).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// An annotation on the RaftCluster: a new value rotates the CA once.
pub const ROTATE_CA_ANNOTATION: &str = "raftlane.io/rotate-ca";
/// The name of the client certificate issued for users.
pub const CLIENT_NAME: &str = "default";

/// One certificate of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leaf {
    Member(u64),
    /// The operator's own client certificate.
    Operator,
    /// A user's certificate with the operator's rights (`raftctl` for an admin).
    Admin,
    /// A user's certificate for the key-value API (`/client/default`).
    Client,
    /// The backup Jobs' certificate: the Backup call and nothing else that
    /// changes a member (`/backup`).
    Backup,
}

impl Leaf {
    pub fn identity(&self, cluster: &str) -> Identity {
        match self {
            Leaf::Member(id) => Identity::member(cluster, *id),
            Leaf::Operator => Identity::operator(cluster),
            Leaf::Admin => Identity::admin(cluster),
            Leaf::Client => Identity::client(cluster, CLIENT_NAME),
            Leaf::Backup => Identity::backup(cluster),
        }
    }

    /// The file stem (local runtime) and Secret infix (Kubernetes) of this
    /// certificate: `member-<id>`, `operator`, `admin`, `client`, `backup`.
    pub fn stem(&self) -> String {
        match self {
            Leaf::Member(id) => format!("member-{id}"),
            Leaf::Operator => "operator".into(),
            Leaf::Admin => "admin".into(),
            Leaf::Client => "client".into(),
            Leaf::Backup => "backup".into(),
        }
    }

    pub fn member_id(&self) -> Option<u64> {
        match self {
            Leaf::Member(id) => Some(*id),
            _ => None,
        }
    }
}

/// Every certificate a cluster with `members` has: one per member, the
/// operator's, the two users' (admin and client) and the backup Jobs'.
pub fn leaves(members: impl IntoIterator<Item = u64>) -> Vec<Leaf> {
    let mut out: Vec<Leaf> = members.into_iter().map(Leaf::Member).collect();
    out.sort();
    out.dedup();
    out.extend([Leaf::Operator, Leaf::Admin, Leaf::Client, Leaf::Backup]);
    out
}

/// A cluster's CA as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    /// Counts the CAs of this cluster: each rotation makes the next.
    pub generation: u32,
    /// The CA rotated away, still trusted until every member has a
    /// certificate of this one.
    pub previous_pem: Option<String>,
    /// The value of [`ROTATE_CA_ANNOTATION`] when this CA was made.
    pub rotated_for: Option<String>,
    /// While rotating: when the current stage began (the bundle handed out,
    /// or the certificates reissued).
    pub stage_since: Option<SystemTime>,
}

impl Ca {
    /// A new CA of generation `generation` for `cluster`.
    pub fn generate(cluster: &str, generation: u32) -> anyhow::Result<Ca> {
        let a = Authority::generate(cluster, generation, CA_VALIDITY)?;
        Ok(Ca {
            cert_pem: a.cert_pem().to_string(),
            key_pem: a.key_pem().to_string(),
            generation,
            previous_pem: None,
            rotated_for: None,
            stage_since: None,
        })
    }

    /// True while rotating and the current stage has not been held for `grace`.
    fn holding(&self, grace: Duration, now: SystemTime) -> bool {
        self.previous_pem.is_some() && self.stage_since.is_some_and(|t| now < t + grace)
    }

    pub fn authority(&self) -> anyhow::Result<Authority> {
        Ok(Authority::from_pem(&self.cert_pem, &self.key_pem)?)
    }

    /// What every party trusts: this CA, and the previous one while rotating.
    pub fn trust_bundle(&self) -> String {
        let mut out = self.cert_pem.clone();
        if let Some(p) = &self.previous_pem {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(p);
        }
        out
    }
}

/// A certificate as stored, with what it was stored with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLeaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The generation of the CA that issued it.
    pub generation: u32,
    /// The trust bundle stored beside it (a member's `ca.crt`).
    pub trust_pem: String,
}

/// What a runtime has stored for one cluster.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub ca: Option<Ca>,
    pub leaves: BTreeMap<Leaf, StoredLeaf>,
}

/// Why the CA is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaChange {
    /// There was none.
    Created,
    /// It has a third of its lifetime left.
    Expiring,
    /// The rotate annotation has a new value.
    Requested(String),
    /// The certificates were reissued by the new CA (the old one still trusted).
    LeavesReissued,
    /// The rotation is confirmed: the old CA leaves the trust bundle.
    RotationDone,
}

/// What to write back.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// The CA to store, when it changed.
    pub ca: Option<(Ca, CaChange)>,
    /// Certificates to store (new, renewed, or only a new trust bundle).
    pub leaves: BTreeMap<Leaf, StoredLeaf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.leaves.is_empty()
    }
}

/// Whether the CA must be rotated now, and why.
pub fn rotation_due(ca: &Ca, annotation: Option<&str>, now: SystemTime) -> Option<CaChange> {
    if let Some(a) = annotation.filter(|a| ca.rotated_for.as_deref() != Some(*a)) {
        return Some(CaChange::Requested(a.to_string()));
    }
    renewal_due(&ca.cert_pem, now).then_some(CaChange::Expiring)
}

/// Whether a stored leaf must be issued again under `ca`: it is missing, due
/// for renewal, or issued by another CA.
pub fn reissue_due(leaf: Option<&StoredLeaf>, ca: &Ca, now: SystemTime) -> bool {
    match leaf {
        None => true,
        Some(l) => l.generation != ca.generation || renewal_due(&l.cert_pem, now),
    }
}

/// The next CA of a rotation from `old`: it trusts `old` until confirmed.
pub fn rotate(
    old: &Ca,
    cluster: &str,
    annotation: Option<&str>,
    now: SystemTime,
) -> anyhow::Result<Ca> {
    let mut next = Ca::generate(cluster, old.generation + 1)?;
    next.previous_pem = Some(old.cert_pem.clone());
    next.rotated_for = annotation.map(str::to_string).or(old.rotated_for.clone());
    next.stage_since = Some(now);
    Ok(next)
}

/// One pass over one cluster's certificates: `wanted` are the certificates
/// that must exist (see [`leaves`]), `names` gives a member's DNS names and
/// addresses, `annotation` is the RaftCluster's [`ROTATE_CA_ANNOTATION`],
/// `grace` how long each rotation stage is held (see the module docs).
/// Stored certificates not in `wanted` are left alone.
pub fn plan(
    cluster: &str,
    stored: &Stored,
    wanted: &[Leaf],
    names: impl Fn(&Leaf) -> Vec<String>,
    annotation: Option<&str>,
    grace: Duration,
    now: SystemTime,
) -> anyhow::Result<Changes> {
    let mut changes = Changes::default();
    let ca = match &stored.ca {
        None => {
            let mut ca = Ca::generate(cluster, 1)?;
            // The annotation as found is the baseline: only a later change rotates.
            ca.rotated_for = annotation.map(str::to_string);
            changes.ca = Some((ca.clone(), CaChange::Created));
            ca
        }
        // A rotation in progress finishes before another starts.
        Some(ca) => match rotation_due(ca, annotation, now).filter(|_| ca.previous_pem.is_none()) {
            Some(why) => {
                let next = rotate(ca, cluster, annotation, now)?;
                changes.ca = Some((next.clone(), why));
                next
            }
            None => {
                // Rotating: confirmed once every member's stored certificate
                // is this CA's and has had `grace` to reach the members.
                let members_done = stored
                    .leaves
                    .iter()
                    .filter(|(l, _)| l.member_id().is_some())
                    .all(|(_, s)| s.generation == ca.generation);
                if ca.previous_pem.is_some() && members_done && !ca.holding(grace, now) {
                    let mut done = ca.clone();
                    done.previous_pem = None;
                    changes.ca = Some((done.clone(), CaChange::RotationDone));
                    done
                } else {
                    ca.clone()
                }
            }
        },
    };
    let trust = ca.trust_bundle();
    // Stage 1 of a rotation: the bundle goes out, certificates wait.
    let hold = changes
        .ca
        .as_ref()
        .is_some_and(|(_, w)| *w != CaChange::RotationDone && ca.previous_pem.is_some())
        || ca.holding(grace, now);
    let mut authority = None;
    let mut reissued = false;
    for leaf in wanted {
        let current = stored.leaves.get(leaf);
        let waits = hold
            && current
                .is_some_and(|c| c.generation != ca.generation && !renewal_due(&c.cert_pem, now));
        if !waits && reissue_due(current, &ca, now) {
            reissued |= current.is_some_and(|c| c.generation != ca.generation);
            if authority.is_none() {
                authority = Some(ca.authority()?);
            }
            let issued = authority.as_ref().expect("set above").issue(
                &leaf.identity(cluster),
                &names(leaf),
                LEAF_VALIDITY,
            )?;
            changes.leaves.insert(
                leaf.clone(),
                StoredLeaf {
                    cert_pem: issued.cert_pem,
                    key_pem: issued.key_pem,
                    generation: ca.generation,
                    trust_pem: trust.clone(),
                },
            );
        } else if let Some(c) = current.filter(|c| c.trust_pem != trust) {
            changes.leaves.insert(
                leaf.clone(),
                StoredLeaf {
                    trust_pem: trust.clone(),
                    ..c.clone()
                },
            );
        }
    }
    // Stage 2 done: the old CA is dropped only `grace` after this.
    if reissued && ca.previous_pem.is_some() && changes.ca.is_none() {
        let mut next = ca.clone();
        next.stage_since = Some(now);
        changes.ca = Some((next, CaChange::LeavesReissued));
    }
    Ok(changes)
}

/// `stored` with `changes` written: what the next pass reads.
pub fn applied(stored: &Stored, changes: &Changes) -> Stored {
    let mut next = stored.clone();
    if let Some((ca, _)) = &changes.ca {
        next.ca = Some(ca.clone());
    }
    for (l, s) in &changes.leaves {
        next.leaves.insert(l.clone(), s.clone());
    }
    next
}

/// The CA's lifetime in days, for messages.
pub fn days(d: Duration) -> u64 {
    d.as_secs() / DAY.as_secs()
}

#[cfg(test)]
mod tests {
    use raftlane_tls::issue::validity;

    use super::*;

    fn names(l: &Leaf) -> Vec<String> {
        match l {
            Leaf::Member(id) => vec![format!("127.0.0.{id}"), "localhost".into()],
            _ => vec![],
        }
    }

    const GRACE: Duration = Duration::from_secs(120);

    fn pass(stored: &Stored, annotation: Option<&str>, now: SystemTime) -> (Stored, Changes) {
        let c = plan("c", stored, &leaves([1, 2]), names, annotation, GRACE, now).unwrap();
        (applied(stored, &c), c)
    }

    #[test]
    fn a_new_cluster_gets_a_ca_and_every_certificate_then_nothing_changes() {
        let now = SystemTime::now();
        let (stored, c) = pass(&Stored::default(), Some("x"), now);
        assert_eq!(c.ca.as_ref().map(|(_, w)| w), Some(&CaChange::Created));
        let want = [
            Leaf::Member(1),
            Leaf::Member(2),
            Leaf::Operator,
            Leaf::Admin,
            Leaf::Client,
            Leaf::Backup,
        ];
        assert_eq!(c.leaves.keys().cloned().collect::<Vec<_>>(), want);
        let ca = stored.ca.clone().unwrap();
        assert_eq!(ca.rotated_for.as_deref(), Some("x"), "the baseline");
        let (from, until) = validity(&ca.cert_pem).unwrap();
        assert!(until.duration_since(from).unwrap() >= CA_VALIDITY);
        let m = &stored.leaves[&Leaf::Member(1)];
        let (from, until) = validity(&m.cert_pem).unwrap();
        assert!(until.duration_since(from).unwrap() >= LEAF_VALIDITY);
        assert_eq!(m.trust_pem, ca.cert_pem);
        let (_, again) = pass(&stored, Some("x"), now);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn certificates_are_renewed_with_a_third_of_their_lifetime_left() {
        let now = SystemTime::now();
        let (stored, _) = pass(&Stored::default(), None, now);
        let (_, c) = pass(&stored, None, now + 59 * DAY);
        assert!(c.is_empty(), "not yet due at 59 days");
        let (_, c) = pass(&stored, None, now + 61 * DAY);
        assert!(c.ca.is_none(), "the CA is far from due");
        assert_eq!(c.leaves.len(), 6, "every leaf is due at 61 days");
        let renewed = &c.leaves[&Leaf::Member(1)];
        assert_ne!(renewed.cert_pem, stored.leaves[&Leaf::Member(1)].cert_pem);
        assert_eq!(renewed.generation, 1);
    }

    #[test]
    fn a_missing_certificate_alone_is_issued() {
        let now = SystemTime::now();
        let (mut stored, _) = pass(&Stored::default(), None, now);
        stored.leaves.remove(&Leaf::Member(2));
        let (_, c) = pass(&stored, None, now);
        assert_eq!(c.leaves.keys().collect::<Vec<_>>(), [&Leaf::Member(2)]);
    }

    #[test]
    fn a_rotation_hands_out_the_bundle_then_reissues_then_drops_the_old_ca_each_after_the_grace() {
        let t0 = SystemTime::now();
        let (stored, _) = pass(&Stored::default(), Some("a"), t0);
        let old = stored.ca.clone().unwrap();
        let old_member = stored.leaves[&Leaf::Member(1)].cert_pem.clone();

        // Stage 1: a new CA; every bundle trusts both, no certificate reissued.
        let (s1, c) = pass(&stored, Some("b"), t0);
        let (ca, why) = c.ca.clone().unwrap();
        assert_eq!(why, CaChange::Requested("b".into()));
        assert_eq!(ca.generation, 2);
        assert_eq!(ca.previous_pem.as_deref(), Some(old.cert_pem.as_str()));
        assert_eq!(c.leaves.len(), 6);
        for (l, s) in &c.leaves {
            assert_eq!(
                s.generation, 1,
                "{l:?} reissued before the bundle reached everyone"
            );
            assert!(s.trust_pem.contains(&ca.cert_pem) && s.trust_pem.contains(&old.cert_pem));
        }
        // Within the grace, nothing more; a new annotation does not restart it.
        let (_, c) = pass(&s1, Some("c"), t0 + GRACE / 2);
        assert!(c.is_empty(), "{c:?}");

        // Stage 2: every certificate reissued by the new CA, both still trusted.
        let t1 = t0 + GRACE;
        let (s2, c) = pass(&s1, Some("b"), t1);
        assert_eq!(c.ca.as_ref().unwrap().1, CaChange::LeavesReissued);
        assert_eq!(c.leaves.len(), 6);
        for s in c.leaves.values() {
            assert_eq!(s.generation, 2);
            assert!(
                s.trust_pem.contains(&old.cert_pem),
                "the old CA is still trusted"
            );
        }
        assert_ne!(s2.leaves[&Leaf::Member(1)].cert_pem, old_member);
        let (_, c) = pass(&s2, Some("b"), t1 + GRACE / 2);
        assert!(c.is_empty(), "the old CA stays for the grace: {c:?}");

        // Stage 3: the old CA leaves the bundle; no certificate reissued.
        let (done, c) = pass(&s2, Some("b"), t1 + GRACE);
        let (ca3, why) = c.ca.clone().unwrap();
        assert_eq!(why, CaChange::RotationDone);
        assert_eq!((ca3.generation, ca3.previous_pem.as_ref()), (2, None));
        for (l, s) in &c.leaves {
            assert_eq!(s.trust_pem, ca3.cert_pem, "{l:?}");
            assert_eq!(s.cert_pem, s2.leaves[l].cert_pem, "{l:?} not reissued");
        }
        let (_, c) = pass(&done, Some("b"), t1 + GRACE * 3);
        assert!(c.is_empty(), "the same annotation never rotates again");
    }

    #[test]
    fn a_rotation_waits_for_every_member_certificate_before_dropping_the_old_ca() {
        let t0 = SystemTime::now();
        let (stored, _) = pass(&Stored::default(), None, t0);
        let (s1, _) = pass(&stored, Some("r"), t0);
        let (mut s2, _) = pass(&s1, Some("r"), t0 + GRACE);
        // Member 2's write did not happen (a failed Secret update).
        s2.leaves
            .insert(Leaf::Member(2), s1.leaves[&Leaf::Member(2)].clone());
        let t = t0 + GRACE * 3;
        let (after, c) = pass(&s2, Some("r"), t);
        assert_eq!(c.ca.as_ref().unwrap().1, CaChange::LeavesReissued);
        assert_eq!(c.leaves.keys().collect::<Vec<_>>(), [&Leaf::Member(2)]);
        assert!(c.leaves[&Leaf::Member(2)]
            .trust_pem
            .contains(&stored.ca.unwrap().cert_pem));
        let (_, c) = pass(&after, Some("r"), t + GRACE / 2);
        assert!(c.is_empty(), "{c:?}");
        let (_, c) = pass(&after, Some("r"), t + GRACE);
        assert_eq!(c.ca.unwrap().1, CaChange::RotationDone);
    }

    #[test]
    fn an_expiring_ca_is_rotated() {
        let now = SystemTime::now();
        let (stored, _) = pass(&Stored::default(), None, now);
        let (_, c) = pass(&stored, None, now + 2500 * DAY);
        assert_eq!(c.ca.unwrap().1, CaChange::Expiring);
    }

    #[test]
    fn leaves_name_their_identity_and_stem() {
        let l = leaves([3, 1, 3]);
        assert_eq!(l[..2], [Leaf::Member(1), Leaf::Member(3)]);
        assert_eq!(
            Leaf::Client.identity("u").uri(),
            "raftlane://u/client/default"
        );
        assert_eq!(Leaf::Admin.identity("u").uri(), "raftlane://u/admin");
        assert_eq!(Leaf::Member(3).stem(), "member-3");
    }
}
