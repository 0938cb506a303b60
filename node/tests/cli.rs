//! The command-line contract: flag errors name the flag; raftctl's exit codes,
//! JSON status and bench output.

mod common;

use std::process::Command;

use common::{write_keys, Cluster, ELECTION};

fn raft_node(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn raftctl(args: &[&str]) -> (i32, String, String) {
    raftctl_env(args, &[])
}

fn raftctl_env(args: &[&str], env: &[(&str, std::path::PathBuf)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_flags_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = [
        "--cluster-id",
        "c",
        "--data-dir",
        d,
        "--peer-addr",
        "127.0.0.1:0",
        "--client-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--insecure-plaintext",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--id", "0"], "--id"),
        (&["--id", "x"], "--id"),
        (&["--id", "1", "--peers", "2=nowhere"], "--peers"),
        (&["--id", "1", "--peers", "two=127.0.0.1:1"], "--peers"),
        (
            &["--id", "1", "--initial-voters", "1,a"],
            "--initial-voters",
        ),
        (
            &["--id", "1", "--heartbeat-ticks", "20"],
            "--heartbeat-ticks",
        ),
        (&["--id", "1", "--peer-addr", "localhost"], "--peer-addr"),
    ];
    for (extra, flag) in cases {
        let mut args: Vec<&str> = base.to_vec();
        // Later flags win, so the bad value replaces the base one.
        args.extend_from_slice(extra);
        let (code, err) = raft_node(&args);
        assert_ne!(code, 0, "{extra:?} accepted");
        assert!(
            err.contains(flag),
            "{extra:?}: stderr does not name {flag}: {err}"
        );
    }
    let (code, err) = raft_node(&["--cluster-id", "c"]);
    assert_ne!(code, 0);
    assert!(err.contains("--id"), "{err}");
    // Secure by default: no TLS files and no --insecure-plaintext is refused.
    let mut args: Vec<&str> = base[..base.len() - 1].to_vec();
    args.extend_from_slice(&["--id", "1"]);
    let (code, err) = raft_node(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("--tls-cert") && err.contains("--insecure-plaintext"),
        "{err}"
    );

    // A port already taken is named with its flag.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let mut args: Vec<&str> = base.to_vec();
    args.extend_from_slice(&["--id", "1", "--client-addr", &port]);
    let (code, err) = raft_node(&args);
    assert_ne!(code, 0);
    assert!(err.contains("--client-addr"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftctl_data_admin_and_bench_commands() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION * 20).await;
    let eps = c.endpoints(&[1, 2, 3]).join(",");
    let admin = c.members[&leader].admin.clone();
    // The admin certificate, through raftctl's environment fallbacks.
    let dir = c.tls_dir();
    let env = [
        ("RAFTCTL_CACERT", dir.join("ca.crt")),
        ("RAFTCTL_CERT", dir.join("admin.crt")),
        ("RAFTCTL_KEY", dir.join("admin.key")),
    ];
    let raftctl = |args: &[&str]| raftctl_env(args, &env);

    let (code, out, _) = raftctl(&["--endpoints", &eps, "put", "greeting", "hello"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = raftctl(&["--endpoints", &eps, "get", "greeting"]);
    assert_eq!((code, out.trim()), (0, "hello"));
    let (code, _, err) = raftctl(&["--endpoints", &eps, "get", "missing"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    write_keys(&c.kv(&[1]), "scan/", 0..5).await;
    let (code, out, _) = raftctl(&["--endpoints", &eps, "scan", "scan/"]);
    assert_eq!((code, out.lines().count()), (0, 5), "{out}");
    // Pages of two are followed to the end, in order; --limit stops early.
    let (code, out, _) = raftctl(&["--endpoints", &eps, "scan", "scan/", "--page-size", "2"]);
    let keys: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        keys,
        (0..5).map(|i| format!("scan/{i:06}")).collect::<Vec<_>>()
    );
    let (code, out, _) = raftctl(&[
        "--endpoints",
        &eps,
        "scan",
        "scan/",
        "--page-size",
        "2",
        "--limit",
        "3",
    ]);
    assert_eq!((code, out.lines().count()), (0, 3), "{out}");
    let (code, _, err) = raftctl(&["--endpoints", &eps, "scan", "--page-size", "10001"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--page-size") && err.contains("10001"),
        "{err}"
    );
    let (code, out, _) = raftctl(&["--endpoints", &eps, "del", "greeting"]);
    assert_eq!((code, out.trim()), (0, "deleted"));

    let (code, out, _) = raftctl(&["--admin", &admin, "status", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    for key in [
        "id",
        "role",
        "term",
        "leader_id",
        "commit_index",
        "applied_index",
        "voters",
        "learners",
        "peers",
    ] {
        assert!(v.get(key).is_some(), "status --json lacks {key}: {out}");
    }
    assert_eq!(v["role"], "leader");
    assert_eq!(v["voters"], serde_json::json!([1, 2, 3]));
    assert!(v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["id"].is_u64() && p["address"].is_string()));

    let (code, out, _) = raftctl(&["--admin", &admin, "members"]);
    assert_eq!((code, out.lines().count()), (0, 3), "{out}");
    let (code, _, err) = raftctl(&["--admin", &admin, "promote", "9"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a learner"), "{err}");
    let (code, _, err) = raftctl(&["--admin", &admin, "upsert-peers", "2=bad"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid peer address"), "{err}");

    let (code, out, err) = raftctl(&[
        "--endpoints",
        &eps,
        "bench",
        "--ops",
        "500",
        "--concurrency",
        "8",
        "--value-size",
        "64",
    ]);
    assert_eq!(code, 0, "{err}");
    for field in ["ops/s=", "p50=", "p99=", "errors=0"] {
        assert!(out.contains(field), "bench output lacks {field}: {out}");
    }
}

/// Without flags raftctl uses the one local-runtime cluster under
/// --state-dir; without any certificate it says what to give; a client
/// certificate may read but not change a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftctl_finds_the_local_state_dirs_certificate_and_a_client_one_may_not_administer() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    let (eps, admin) = (c.endpoints(&[1]).join(","), c.members[&1].admin.clone());
    let state = c.tmp.path().join("state");
    let tls = state.join("demo").join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    for f in ["ca.crt", "admin.crt", "admin.key"] {
        std::fs::copy(c.tls_dir().join(f), tls.join(f)).unwrap();
    }
    let state_flag = state.display().to_string();
    let (code, out, err) = raftctl(&[
        "--state-dir",
        &state_flag,
        "--endpoints",
        &eps,
        "put",
        "k",
        "v",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = raftctl(&[
        "--state-dir",
        "/nonexistent",
        "--endpoints",
        &eps,
        "get",
        "k",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--cacert") && err.contains("--insecure-plaintext"),
        "{err}"
    );

    c.write_cert(
        "alice",
        &raftlane_tls::Identity::client(&c.cluster_id, "alice"),
    );
    let dir = c.tls_dir();
    let env = [
        ("RAFTCTL_CACERT", dir.join("ca.crt")),
        ("RAFTCTL_CERT", dir.join("alice.crt")),
        ("RAFTCTL_KEY", dir.join("alice.key")),
    ];
    let (code, out, _) = raftctl_env(&["--endpoints", &eps, "get", "k"], &env);
    assert_eq!((code, out.trim()), (0, "v"));
    let (code, _, _) = raftctl_env(&["--admin", &admin, "status"], &env);
    assert_eq!(code, 0, "any certificate of the cluster reads the status");
    let (code, _, err) = raftctl_env(&["--admin", &admin, "snapshot"], &env);
    assert_ne!(code, 0);
    assert!(
        err.contains("PermissionDenied") || err.contains("may not change"),
        "{err}"
    );
    assert!(
        err.contains("raftlane://") && err.contains("/client/alice"),
        "{err}"
    );
}

#[test]
fn expect_state_on_an_empty_data_dir_exits_with_its_code_naming_flag_and_dir() {
    let tmp = tempfile::tempdir().unwrap();
    // A volume that is gone (no data dir) and one wiped in place (raft/ empty).
    let gone = tmp.path().join("gone");
    let wiped = tmp.path().join("wiped");
    std::fs::create_dir_all(wiped.join("raft")).unwrap();
    for dir in [&gone, &wiped] {
        let d = dir.to_str().unwrap();
        let (code, err) = raft_node(&[
            "--id",
            "2",
            "--cluster-id",
            "c",
            "--data-dir",
            d,
            "--peer-addr",
            "127.0.0.1:0",
            "--client-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--expect-state",
        ]);
        assert_eq!(code, raft_node::config::EXPECT_STATE_EXIT_CODE, "{err}");
        for part in [
            "--expect-state",
            &format!("--data-dir {d}"),
            "looks wiped",
            "operator will replace this member",
        ] {
            assert!(err.contains(part), "stderr lacks {part:?}: {err}");
        }
    }
    assert!(!gone.exists(), "a refused start writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_state_starts_on_the_data_raft_node_wrote_even_before_joining() {
    let mut c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    // Member 2 starts in join mode and is never added: its data dir holds
    // only what raft-node wrote on opening it.
    c.add_member(2);
    c.spawn(2, &[]);
    c.wait_status(2, ELECTION * 20, "an answer", |_| true).await;
    c.kill9(2);
    c.kill9(1);
    c.spawn(1, &["--expect-state"]);
    assert_eq!(c.wait_leader(ELECTION * 20).await, 1);
    c.spawn(2, &["--expect-state"]);
    c.wait_status(2, ELECTION * 20, "an answer", |_| true).await;
}
