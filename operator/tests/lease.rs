//! Leader election against the fake API server: the first replica creates the
//! Lease, a second stands by while it is renewed, takes it once it expires,
//! and of two replicas replacing the same version only one wins.

// Only the fake API server of the shared support is used here.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use raft_operator::k8s::lease::LeaseLock;
use serde_json::json;
use support::fake_api::{FakeApi, NS};

fn leases_path() -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases")
}

/// Short, so a test can wait one out.
const LEASE: Duration = Duration::from_secs(1);

fn lock(client: &kube::Client, who: &str) -> LeaseLock {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    LeaseLock::new(api, "raft-operator", who, LEASE)
}

fn holder(api: &FakeApi) -> String {
    let lease = api.get(&leases_path(), "raft-operator").unwrap();
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over_only_after_expiry() {
    let (api, client) = FakeApi::start();
    let (a, b) = (lock(&client, "a"), lock(&client, "b"));

    assert!(
        a.try_acquire().await.unwrap(),
        "the first replica creates the Lease"
    );
    assert!(
        !b.try_acquire().await.unwrap(),
        "a fresh Lease is not taken"
    );
    assert!(a.try_acquire().await.unwrap(), "the holder renews");
    assert_eq!(holder(&api), "a");
    let writes: Vec<String> = api
        .take_calls()
        .iter()
        .filter(|c| c.is_write())
        .map(|c| c.line())
        .collect();
    assert_eq!(
        writes,
        [
            format!("POST {}", leases_path()),
            format!("PUT {}/raft-operator", leases_path())
        ],
        "standing by writes nothing"
    );

    // The holder stops renewing: the standby sees the same record for a whole
    // lease duration on its own clock, however old its timestamps look.
    api.update(&leases_path(), "raft-operator", |l| {
        l["spec"]["renewTime"] = json!("2001-01-01T00:00:00.000000Z");
    });
    assert!(
        !b.try_acquire().await.unwrap(),
        "an old timestamp alone is not expiry"
    );
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    assert!(b.try_acquire().await.unwrap(), "an expired Lease is taken");
    let lease = api.get(&leases_path(), "raft-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(
        !a.try_acquire().await.unwrap(),
        "the old holder has lost it"
    );

    // Released on shutdown: the standby takes it without waiting.
    b.release().await.unwrap();
    assert!(a.try_acquire().await.unwrap());
    assert_eq!(holder(&api), "a");
}

#[tokio::test]
async fn of_two_replicas_replacing_the_same_version_one_wins() {
    let (api, client) = FakeApi::start();
    assert!(lock(&client, "a").try_acquire().await.unwrap());
    let (b, c) = (lock(&client, "b"), lock(&client, "c"));
    assert!(!b.try_acquire().await.unwrap() && !c.try_acquire().await.unwrap());
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    api.take_calls();
    let (rb, rc) = tokio::join!(b.try_acquire(), c.try_acquire());
    assert_eq!([rb.unwrap(), rc.unwrap()].iter().filter(|w| **w).count(), 1);
    assert!(["b", "c"].contains(&holder(&api).as_str()));
    // One replace succeeded; a second one, if the loser read the same version
    // before the winner wrote, was refused.
    let puts: Vec<u16> = api
        .take_calls()
        .iter()
        .filter(|c| c.method == "PUT")
        .map(|c| c.status)
        .collect();
    assert!(puts == [200] || puts == [200, 409], "{puts:?}");
}
