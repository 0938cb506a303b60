//! A RaftCluster's certificates on Kubernetes, by the rules of
//! [`crate::certs`]: the CA and every certificate in Secrets owned by the
//! cluster (collected with it), issued on creation and renewed in place on
//! later passes; or, with `spec.tls.issuerRef`, cert-manager Certificates
//! that fill the same Secrets. The operator's own client certificate is
//! issued in memory from the CA (or read from cert-manager's Secret) and
//! gives the pass its [`Dialer`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, Client, ResourceExt};
use raftlane_tls::files::Material;
use raftlane_tls::{Dialer, TlsSource};

use crate::certs::{self, Ca, CaChange, Leaf, Stored, StoredLeaf};
use crate::crd::{IssuerRef, RaftCluster};
use crate::k8s::resources::{
    ca_from_secret, ca_secret, ca_secret_name, certificate, certificate_resource, leaf_from_secret,
    leaf_secret, leaf_secret_name, member_names, secret_text, selector, CERTIFICATE_LABEL,
};

/// How long a written Secret may take to reach the pods that mount it: the
/// kubelet refreshes Secret volumes on its sync period (a minute by default)
/// plus its cache's lifetime. Each CA rotation stage is held this long.
pub const SECRET_PROPAGATION: std::time::Duration = std::time::Duration::from_secs(180);

/// What the operator keeps per cluster between passes: its own certificate
/// (never stored: issued again after a restart).
#[derive(Clone, Debug, Default)]
pub struct OperatorCert {
    pub leaf: Option<StoredLeaf>,
}

/// The outcome of one pass over a cluster's certificates.
pub struct Synced {
    /// How the pass dials the members.
    pub dialer: Dialer,
    /// Changed since the last pass: admin channels must be dialled again.
    pub dialer_changed: bool,
    /// What was written, for events: e.g. "issued member-1, admin".
    pub written: Vec<String>,
    /// The CA change of this pass, if any.
    pub ca_change: Option<CaChange>,
}

fn dialer_of(leaf: &StoredLeaf) -> anyhow::Result<Dialer> {
    let m = Material::from_pem(
        Some(leaf.cert_pem.as_bytes()),
        Some(leaf.key_pem.as_bytes()),
        leaf.trust_pem.as_bytes(),
    )?;
    Ok(Dialer::Tls(TlsSource::fixed(m)))
}

/// The pass's outcome with the operator's certificate `operator`, kept in
/// `cache`; a changed one means re-dialling.
fn synced(
    cache: &mut OperatorCert,
    operator: StoredLeaf,
    written: Vec<String>,
    ca_change: Option<CaChange>,
) -> anyhow::Result<Synced> {
    let dialer_changed = cache.leaf.as_ref() != Some(&operator);
    let dialer = dialer_of(&operator)?;
    cache.leaf = Some(operator);
    Ok(Synced {
        dialer,
        dialer_changed,
        written,
        ca_change,
    })
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Creates `secret`, or replaces the one listed as `existing` (at its
/// resourceVersion: a concurrent change fails the pass, which is retried).
async fn write(
    api: &Api<Secret>,
    mut secret: Secret,
    existing: Option<&Secret>,
) -> kube::Result<()> {
    match existing {
        None => {
            api.create(&PostParams::default(), &secret).await?;
        }
        Some(old) => {
            secret.metadata.resource_version = old.resource_version();
            api.replace(&secret.name_any(), &PostParams::default(), &secret)
                .await?;
        }
    }
    Ok(())
}

/// The member ids whose certificates must exist: those of the spec, and
/// those that still have one (a member being scaled away keeps its own until
/// the runtime deletes it).
fn member_ids(rc: &RaftCluster, secrets: &BTreeMap<String, Secret>) -> BTreeSet<u64> {
    let mut ids: BTreeSet<u64> = (1..=u64::from(rc.spec.replicas)).collect();
    for s in secrets.values() {
        if let Some(id) = s
            .labels()
            .get(CERTIFICATE_LABEL)
            .and_then(|c| c.strip_prefix("member-"))
            .and_then(|id| id.parse().ok())
        {
            ids.insert(id);
        }
    }
    ids
}

/// One pass over `rc`'s certificates; `write` is false on a paused pass,
/// which only reads (and issues the operator's certificate in memory).
pub async fn sync(
    rc: &RaftCluster,
    client: &Client,
    cache: &mut OperatorCert,
    write_allowed: bool,
) -> anyhow::Result<Synced> {
    let ns = rc.namespace().unwrap_or_default();
    let name = rc.name_any();
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secrets: BTreeMap<String, Secret> = secrets_api
        .list(&ListParams::default().labels(&selector(&name)))
        .await?
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
    if let Some(issuer) = &rc.spec.tls.issuer_ref {
        return sync_cert_manager(rc, client, cache, &secrets, issuer, write_allowed).await;
    }
    let uid = rc.uid().unwrap_or_default();
    let mut stored = Stored {
        ca: secrets.get(&ca_secret_name(&name)).and_then(ca_from_secret),
        leaves: BTreeMap::new(),
    };
    let ids = member_ids(rc, &secrets);
    let wanted = certs::leaves(ids.iter().copied());
    for leaf in &wanted {
        if let Some(l) = secrets
            .get(&leaf_secret_name(&name, leaf))
            .and_then(leaf_from_secret)
        {
            stored.leaves.insert(leaf.clone(), l);
        }
    }
    if let Some(l) = &cache.leaf {
        stored.leaves.insert(Leaf::Operator, l.clone());
    }
    let now = SystemTime::now();
    let annotation = rc.annotations().get(certs::ROTATE_CA_ANNOTATION).cloned();
    let names = |l: &Leaf| {
        l.member_id()
            .map(|id| member_names(rc, id))
            .unwrap_or_default()
    };
    let mut written = Vec::new();
    let mut ca_change = None;
    let operator = if write_allowed {
        let changes = certs::plan(
            &uid,
            &stored,
            &wanted,
            names,
            annotation.as_deref(),
            SECRET_PROPAGATION,
            now,
        )?;
        if let Some((ca, why)) = &changes.ca {
            write(
                &secrets_api,
                ca_secret(rc, ca),
                secrets.get(&ca_secret_name(&name)),
            )
            .await?;
            written.push(format!("CA #{} ({why:?})", ca.generation));
            ca_change = Some(why.clone());
        }
        for (leaf, l) in &changes.leaves {
            if *leaf == Leaf::Operator {
                continue;
            }
            let existing = secrets.get(&leaf_secret_name(&name, leaf));
            write(&secrets_api, leaf_secret(rc, leaf, l), existing).await?;
            written.push(leaf.stem());
        }
        certs::applied(&stored, &changes)
            .leaves
            .get(&Leaf::Operator)
            .cloned()
    } else {
        // Paused: nothing is written, the operator's certificate alone is
        // issued in memory (from the stored CA, if there is one yet).
        let ca = match &stored.ca {
            Some(ca) => ca.clone(),
            None => Ca::generate(&uid, 0)?,
        };
        let only = [Leaf::Operator];
        let changes = certs::plan(
            &uid,
            &Stored {
                ca: Some(ca),
                ..stored.clone()
            },
            &only,
            names,
            None,
            SECRET_PROPAGATION,
            now,
        )?;
        changes
            .leaves
            .get(&Leaf::Operator)
            .or(stored.leaves.get(&Leaf::Operator))
            .cloned()
    };
    let operator = operator.ok_or_else(|| anyhow::anyhow!("no operator certificate issued"))?;
    synced(cache, operator, written, ca_change)
}

/// With an issuer: a Certificate per member, for the users and for the
/// operator, created when missing (cert-manager renews them); the operator
/// dials with what cert-manager wrote into `<name>-operator-tls`.
async fn sync_cert_manager(
    rc: &RaftCluster,
    client: &Client,
    cache: &mut OperatorCert,
    secrets: &BTreeMap<String, Secret>,
    issuer: &IssuerRef,
    write_allowed: bool,
) -> anyhow::Result<Synced> {
    // Also a CEL rule of the CRD; checked here for objects stored before it.
    anyhow::ensure!(
        issuer.kind != "ClusterIssuer" || rc.spec.tls.insecure_cluster_issuer,
        "spec.tls.issuerRef names ClusterIssuer {}: whoever may create a Certificate for it \
         in any namespace can mint this cluster's admin identity; use a namespaced Issuer, \
         or set spec.tls.insecureClusterIssuer: true to accept that",
        issuer.name
    );
    let name = rc.name_any();
    let ns = rc.namespace().unwrap_or_default();
    let mut written = Vec::new();
    if write_allowed {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &certificate_resource());
        let ids = member_ids(rc, secrets);
        for leaf in certs::leaves(ids) {
            let cert = certificate(rc, &leaf, issuer);
            match api.get(&cert.name_any()).await {
                Ok(_) => continue,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
            api.create(&PostParams::default(), &cert).await?;
            written.push(format!("Certificate {}", cert.name_any()));
        }
    }
    let secret_name = leaf_secret_name(&name, &Leaf::Operator);
    let operator = secrets
        .get(&secret_name)
        .and_then(|s| {
            Some(StoredLeaf {
                cert_pem: secret_text(s, "tls.crt")?,
                key_pem: secret_text(s, "tls.key")?,
                trust_pem: secret_text(s, "ca.crt")?,
                generation: 0,
            })
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "waiting for cert-manager to issue Secret {secret_name} (the operator's \
                 certificate, from issuer {} {})",
                issuer.kind,
                issuer.name
            )
        })?;
    synced(cache, operator, written, None)
}
