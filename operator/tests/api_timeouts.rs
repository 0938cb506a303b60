//! The bound on API requests: against an API server that accepts connections
//! and never answers, a request through `request_client` fails within its
//! timeout, reads and writes alike, while kube's default client still waits.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Config};
use raft_operator::k8s::request_client;

/// Short, so the test is fast; `run` uses `REQUEST_TIMEOUT`.
const BOUND: Duration = Duration::from_millis(400);
/// Scheduling slack on top of the bound.
const SLACK: Duration = Duration::from_millis(1500);

/// An API server that accepts every connection, reads nothing and never
/// answers; the connections stay open (no reset for the client to see).
async fn silent_server() -> Config {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    let mut config = Config::new(format!("http://{addr}").parse().unwrap());
    config.default_namespace = "raft".into();
    config
}

fn leases(client: Client) -> Api<Lease> {
    Api::namespaced(client, "raft")
}

fn lease() -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("raft-operator".into()),
            ..Default::default()
        },
        spec: None,
    }
}

/// Runs `request`, asserting it fails within the bound; returns the error.
async fn fails_in_time<T: std::fmt::Debug>(
    request: impl std::future::Future<Output = kube::Result<T>>,
) -> kube::Error {
    let started = Instant::now();
    let outcome = tokio::time::timeout(BOUND + SLACK, request).await;
    let elapsed = started.elapsed();
    let err = match outcome {
        Ok(Err(e)) => e,
        Ok(Ok(v)) => panic!("a silent server answered: {v:?}"),
        Err(_) => panic!("still waiting after {elapsed:?}: the request is not bounded"),
    };
    assert!(
        elapsed >= BOUND.mul_f32(0.9),
        "failed after {elapsed:?}, before the bound, so not by it: {err}"
    );
    err
}

/// The error is a timeout: an I/O error of kind `TimedOut` in its chain.
fn timed_out(err: &kube::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

#[tokio::test]
async fn a_read_to_a_silent_api_server_fails_within_the_bound() {
    let config = silent_server().await;
    let client = request_client(config.clone(), BOUND).unwrap();
    let err = fails_in_time(leases(client).get_opt("raft-operator")).await;
    assert!(timed_out(&err), "{err:?}");

    // The same server with kube's defaults (as the watches use): no answer
    // and no error long past the bound, so the bound is the client's own.
    let default = Client::try_from(config).unwrap();
    let waited = tokio::time::timeout(BOUND * 3, leases(default).get_opt("raft-operator")).await;
    assert!(waited.is_err(), "{waited:?}");
}

#[tokio::test]
async fn writes_to_a_silent_api_server_fail_within_the_bound() {
    let config = silent_server().await;
    let api = leases(request_client(config, BOUND).unwrap());
    let created = fails_in_time(api.create(&PostParams::default(), &lease())).await;
    let replaced =
        fails_in_time(api.replace("raft-operator", &PostParams::default(), &lease())).await;
    // A later request on the same client is bounded too.
    let read = fails_in_time(api.get_opt("raft-operator")).await;
    for err in [created, replaced, read] {
        assert!(timed_out(&err), "{err:?}");
    }
}
