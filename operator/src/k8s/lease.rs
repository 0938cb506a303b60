//! Leader election on a `coordination.k8s.io` Lease, so two operator replicas
//! never reconcile at once. Every write carries the Lease's resourceVersion:
//! of two replicas racing for a free Lease, the API server lets one win. A
//! standby judges expiry by its own clock (the record unchanged for a whole
//! lease duration since it first saw it), never by comparing the holder's
//! timestamps with its clock, so clock skew between nodes cannot make it
//! take over early.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

/// How often the holder of a lease of `duration` renews it: a third of it,
/// well inside the duration. A `const fn`, so the request bound of
/// `raft-operator run` can be derived from it at compile time.
pub const fn renew_interval(duration: Duration) -> Duration {
    match duration.checked_div(3) {
        Some(d) => d,
        None => Duration::ZERO,
    }
}

/// One replica's claim on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The holder's record as last seen (holder, renew time), and when.
    seen: Mutex<Option<(String, Instant)>>,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            seen: Mutex::new(None),
        }
    }

    /// How often the holder renews: [`renew_interval`] of its duration.
    pub fn renew_every(&self) -> Duration {
        renew_interval(self.duration)
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Takes or renews the Lease once; true while this replica holds it.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let current = match self.api.get_opt(&self.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        // Released (no holder) or expired: free to take.
        let free = spec.holder_identity.is_none() || self.expired(&spec);
        if !mine && !free {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time } else { None };
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(self.spec(transitions, acquired)),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Another replica wrote first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True once the holder's record has stayed the same for its whole lease
    /// duration, measured on this replica's clock from when it first saw it.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let record = format!("{:?}/{:?}", spec.holder_identity, spec.renew_time);
        let secs = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
        let mut seen = self.seen.lock().expect("lease lock");
        match seen.as_ref() {
            Some((r, since)) if *r == record => since.elapsed() > Duration::from_secs(secs),
            _ => {
                *seen = Some((record, Instant::now()));
                false
            }
        }
    }

    /// Gives the Lease up on shutdown so a standby takes over at once.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = current.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        self.api
            .replace(&self.name, &PostParams::default(), &current)
            .await?;
        Ok(())
    }
}
