//! Volume growth: a larger `spec.storage.size` expands every member's PVC
//! whose StorageClass allows it (`allowVolumeExpansion: true`); nothing is
//! ever shrunk. Expansion restarts nothing (the CSI driver resizes the volume
//! and, online, its file system), so every PVC due is patched in the same
//! pass. Only a Bound claim is patched: the API server refuses to resize an
//! unbound one, which is left for a later pass.
//!
//! What cannot be done is said once, in the `VolumeExpansion` condition and a
//! Warning event: the event is written when its sentence is new to the
//! condition, so a pass that finds the same refusal writes nothing.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::crd::Condition;

/// Type of the status condition that tells how volume growth stands.
pub const CONDITION: &str = "VolumeExpansion";
/// Annotation of the default StorageClass (and its beta predecessor).
pub const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

/// A Kubernetes quantity in bytes, rounded up as `Quantity.Value()` does:
/// plain numbers, decimal fractions, the binary suffixes Ki Mi Gi Ti Pi Ei,
/// the decimal ones n u m k M G T P E and exponents (`1e9`). None when it is
/// no quantity (or too large to count).
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let ten = |n: u32| 10u128.checked_pow(n);
    // The value is digits × mul / div.
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "n" => (1, ten(9)?),
        "u" => (1, ten(6)?),
        "m" => (1, ten(3)?),
        "k" => (ten(3)?, 1),
        "M" => (ten(6)?, 1),
        "G" => (ten(9)?, 1),
        "T" => (ten(12)?, 1),
        "P" => (ten(15)?, 1),
        "E" => (ten(18)?, 1),
        exp => {
            let exp = exp.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u32 = digits.parse().ok()?;
            match exp.starts_with('-') {
                true => (1, ten(n)?),
                false => (ten(n)?, 1),
            }
        }
    };
    let div = ten(frac.len() as u32)?.checked_mul(div)?;
    Some(digits.checked_mul(mul)?.div_ceil(div))
}

/// Orders two quantities by the bytes they stand for ("1Gi" = "1024Mi").
pub fn compare_quantities(a: &str, b: &str) -> Option<Ordering> {
    Some(quantity_bytes(a)?.cmp(&quantity_bytes(b)?))
}

/// The storage a claim requests (`spec.resources.requests.storage`).
fn requested(c: &PersistentVolumeClaim) -> Option<&str> {
    let q = c
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?;
    Some(q.0.as_str())
}

/// The size of the volume bound to it (`status.capacity.storage`).
fn capacity(c: &PersistentVolumeClaim) -> Option<&str> {
    let q = c.status.as_ref()?.capacity.as_ref()?.get("storage")?;
    Some(q.0.as_str())
}

fn bound(c: &PersistentVolumeClaim) -> bool {
    c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// Why a claim's StorageClass does not let it grow.
enum Refusal {
    /// The class says no (or there is no class to ask).
    NotAllowed(String),
    /// The class could not be read (RBAC, API server).
    Unreadable(String),
}

/// What growing the volumes did and found, for the event and the condition.
#[derive(Debug, Default, PartialEq)]
pub struct Growth {
    /// Claims patched in this pass: (claim, from, class).
    pub expanded: Vec<(String, String, String)>,
    /// Claims whose resize is under way (the request is above the capacity).
    pub resizing: Vec<String>,
    /// Refusals by their StorageClass: sentence → claims.
    pub not_allowed: BTreeMap<String, Vec<String>>,
    /// StorageClasses that could not be read: sentence → claims.
    pub unreadable: BTreeMap<String, Vec<String>>,
    /// Patches the API server refused: (claim, error).
    pub failed: Vec<(String, String)>,
    /// Claims larger than the spec asks (never shrunk): (claim, size).
    pub larger: Vec<(String, String)>,
}

/// One problem of a [`Growth`], in the condition's message and in an event.
#[derive(Debug, PartialEq)]
pub struct Problem {
    /// Condition reason when it is the first problem.
    pub reason: &'static str,
    /// Event reason.
    pub event: &'static str,
    pub sentence: String,
}

impl Growth {
    /// The problems, most serious first; each a sentence of its own.
    pub fn problems(&self, want: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        for (why, claims) in &self.not_allowed {
            out.push(Problem {
                reason: "NotAllowedByStorageClass",
                event: "VolumeExpansionNotAllowed",
                sentence: format!("{why}: {} not expanded to {want}", claims.join(", ")),
            });
        }
        for (why, claims) in &self.unreadable {
            out.push(Problem {
                reason: "StorageClassUnreadable",
                event: "VolumeExpansionNotAllowed",
                sentence: format!("{why}: {} not expanded to {want}", claims.join(", ")),
            });
        }
        for (claim, error) in &self.failed {
            out.push(Problem {
                reason: "ExpansionFailed",
                event: "VolumeExpansionFailed",
                sentence: format!("expanding {claim} to {want} failed: {error}"),
            });
        }
        if !self.larger.is_empty() {
            let claims: Vec<String> = self
                .larger
                .iter()
                .map(|(c, size)| format!("{c} ({size})"))
                .collect();
            out.push(Problem {
                reason: "ShrinkRefused",
                event: "VolumeShrinkRefused",
                sentence: format!(
                    "volumes are never shrunk: {} stay larger than spec.storage.size {want}",
                    claims.join(", ")
                ),
            });
        }
        out
    }

    /// The `VolumeExpansion` condition after this growth, or None while it
    /// has nothing to say (no volume ever had to grow). Its transition time
    /// is kept from `previous` while its status stays.
    pub fn condition(
        &self,
        want: &str,
        previous: Option<&Condition>,
        now: &str,
    ) -> Option<Condition> {
        let problems = self.problems(want);
        let (status, reason, message) = if let Some(first) = problems.first() {
            let sentences: Vec<&str> = problems.iter().map(|p| p.sentence.as_str()).collect();
            ("False", first.reason, sentences.join("; "))
        } else if !self.expanded.is_empty() || !self.resizing.is_empty() {
            let mut claims: Vec<&str> = self.expanded.iter().map(|e| e.0.as_str()).collect();
            claims.extend(self.resizing.iter().map(String::as_str));
            claims.sort_unstable();
            claims.dedup();
            let message = format!("expanding to {want}: {}", claims.join(", "));
            ("True", "Expanding", message)
        } else {
            previous?;
            let message = format!("every volume has the requested size {want}");
            ("True", "Complete", message)
        };
        let since = previous
            .filter(|c| c.status == status)
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
        Some(Condition {
            type_: CONDITION.into(),
            status: status.into(),
            last_transition_time: since,
            reason: reason.into(),
            message,
        })
    }
}

/// StorageClasses read once per pass, by name; `None` is the default class.
struct Classes {
    api: Api<StorageClass>,
    seen: BTreeMap<Option<String>, Result<StorageClass, Refusal>>,
}

impl Classes {
    async fn read(&self, name: Option<&str>) -> kube::Result<Result<StorageClass, Refusal>> {
        let unreadable = |e: &kube::Error| {
            Refusal::Unreadable(format!(
                "StorageClasses cannot be read ({e}; the operator needs get and list on \
                 storage.k8s.io storageclasses)"
            ))
        };
        match name {
            Some("") => Ok(Err(Refusal::NotAllowed(
                "the claim sets no StorageClass (storageClassName \"\"), so nothing can \
                 expand it"
                    .into(),
            ))),
            Some(name) => match self.api.get_opt(name).await {
                Ok(Some(c)) => Ok(Ok(c)),
                Ok(None) => Ok(Err(Refusal::NotAllowed(format!(
                    "StorageClass {name} does not exist"
                )))),
                Err(e @ kube::Error::Api(_)) => Ok(Err(unreadable(&e))),
                Err(e) => Err(e),
            },
            None => match self.api.list(&ListParams::default()).await {
                Ok(list) => Ok(list
                    .items
                    .into_iter()
                    .find(|c| {
                        DEFAULT_CLASS_ANNOTATIONS
                            .iter()
                            .any(|a| c.annotations().get(*a).is_some_and(|v| v == "true"))
                    })
                    .ok_or_else(|| {
                        Refusal::NotAllowed(
                            "the claim names no StorageClass and none is the default".into(),
                        )
                    })),
                Err(e @ kube::Error::Api(_)) => Ok(Err(unreadable(&e))),
                Err(e) => Err(e),
            },
        }
    }

    /// The class's name if it allows expansion, else why not.
    async fn allows(&mut self, name: Option<&str>) -> kube::Result<Result<String, Refusal>> {
        let key = name.map(str::to_string);
        if !self.seen.contains_key(&key) {
            let class = self.read(name).await?;
            self.seen.insert(key.clone(), class);
        }
        Ok(match &self.seen[&key] {
            Ok(c) if c.allow_volume_expansion == Some(true) => Ok(c.name_any()),
            Ok(c) => Err(Refusal::NotAllowed(format!(
                "StorageClass {} does not allow volume expansion (allowVolumeExpansion is \
                 not true)",
                c.name_any()
            ))),
            Err(Refusal::NotAllowed(why)) => Err(Refusal::NotAllowed(why.clone())),
            Err(Refusal::Unreadable(why)) => Err(Refusal::Unreadable(why.clone())),
        })
    }
}

/// Expands every live claim of `claims` that requests less than `want` and
/// whose StorageClass allows it; reads a StorageClass only when some claim
/// must grow. A claim larger than `want` is left as it is.
pub async fn grow(
    client: &Client,
    api: &Api<PersistentVolumeClaim>,
    claims: &[PersistentVolumeClaim],
    want: &str,
) -> kube::Result<Growth> {
    let mut growth = Growth::default();
    let mut classes = Classes {
        api: Api::all(client.clone()),
        seen: BTreeMap::new(),
    };
    for c in claims {
        let name = c.name_any();
        let Some(has) = requested(c) else { continue };
        match compare_quantities(has, want) {
            Some(Ordering::Less) => {}
            Some(Ordering::Greater) => {
                growth.larger.push((name, has.to_string()));
                continue;
            }
            Some(Ordering::Equal) => {
                // Asked for, not there yet: the resize is under way.
                if capacity(c).and_then(|cap| compare_quantities(cap, has)) == Some(Ordering::Less)
                {
                    growth.resizing.push(name);
                }
                continue;
            }
            None => {
                tracing::warn!(claim = name, has, want, "a volume size is no quantity");
                continue;
            }
        }
        if !bound(c) {
            continue;
        }
        let class = c
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref());
        match classes.allows(class).await? {
            Ok(class) => {
                let patch = json!({"spec": {"resources": {"requests": {"storage": want}}}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => growth.expanded.push((name, has.to_string(), class)),
                    Err(kube::Error::Api(s)) => growth.failed.push((name, s.message)),
                    Err(e) => return Err(e),
                }
            }
            Err(Refusal::NotAllowed(why)) => growth.not_allowed.entry(why).or_default().push(name),
            Err(Refusal::Unreadable(why)) => growth.unreadable.entry(why).or_default().push(name),
        }
    }
    Ok(growth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_count_bytes_with_every_suffix() {
        let cases: &[(&str, u128)] = &[
            ("0", 0),
            ("1", 1),
            ("1500", 1500),
            ("1Ki", 1024),
            ("1Mi", 1 << 20),
            ("1Gi", 1 << 30),
            ("2Ti", 2 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("1k", 1000),
            ("5M", 5_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            (".5k", 500),
            ("1e3", 1000),
            ("2E6", 2_000_000),
            ("1e+3", 1000),
            ("1500m", 2),
            ("1m", 1),
            ("1e-3", 1),
        ];
        for (q, bytes) in cases {
            assert_eq!(quantity_bytes(q), Some(*bytes), "{q}");
        }
        for bad in [
            "", "Gi", "1.2.3Gi", "1 Gi", "1Xi", "-1Gi", "1e", "1e+", "1gi", ".",
        ] {
            assert_eq!(quantity_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quantities_compare_by_value_not_by_text() {
        assert_eq!(compare_quantities("1Gi", "1024Mi"), Some(Ordering::Equal));
        assert_eq!(compare_quantities("1Gi", "2Gi"), Some(Ordering::Less));
        assert_eq!(compare_quantities("1G", "1Gi"), Some(Ordering::Less));
        assert_eq!(compare_quantities("2Gi", "1500Mi"), Some(Ordering::Greater));
        assert_eq!(compare_quantities("10Gi", "9Gi"), Some(Ordering::Greater));
        assert_eq!(compare_quantities("1Gi", "junk"), None);
    }

    fn named(claims: &[&str]) -> Vec<String> {
        claims.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn the_condition_says_refusals_first_then_progress_then_done() {
        let mut g = Growth::default();
        assert_eq!(g.condition("2Gi", None, "t1"), None, "nothing to say");

        g.expanded.push(("a".into(), "1Gi".into(), "fast".into()));
        g.resizing.push("b".into());
        let c = g.condition("2Gi", None, "t1").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Expanding")
        );
        assert_eq!(c.message, "expanding to 2Gi: a, b");

        let done = Growth::default().condition("2Gi", Some(&c), "t2").unwrap();
        assert_eq!(
            (done.status.as_str(), done.reason.as_str()),
            ("True", "Complete")
        );
        assert_eq!(done.last_transition_time, "t1", "still True");

        g.not_allowed
            .insert("StorageClass slow says no".into(), named(&["c"]));
        g.larger.push(("d".into(), "3Gi".into()));
        let refused = g.condition("2Gi", Some(&done), "t3").unwrap();
        assert_eq!(
            (refused.status.as_str(), refused.reason.as_str()),
            ("False", "NotAllowedByStorageClass")
        );
        assert_eq!(refused.last_transition_time, "t3");
        assert_eq!(
            refused.message,
            "StorageClass slow says no: c not expanded to 2Gi; volumes are never shrunk: \
             d (3Gi) stay larger than spec.storage.size 2Gi"
        );
        let events: Vec<&str> = g.problems("2Gi").iter().map(|p| p.event).collect();
        assert_eq!(events, ["VolumeExpansionNotAllowed", "VolumeShrinkRefused"]);
    }
}
