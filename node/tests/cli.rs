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
    let base = flags_on(d);
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
    // Into a pipe nobody reads (`raftctl scan | head -0`): ended by SIGPIPE
    // like any Unix tool, never a panic.
    let mut scan = Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(["--endpoints", &eps, "scan", "scan/"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(scan.stdout.take());
    let out = scan.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
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

/// raft-node's flags for member 2 of cluster `c` on `dir`, any port.
fn member_2_on(dir: &str) -> Vec<&str> {
    [&["--id", "2"][..], &flags_on(dir)].concat()
}

/// raft-node's flags, but the id, for a member of cluster `c` on `dir`, any
/// port, plaintext.
fn flags_on(dir: &str) -> Vec<&str> {
    vec![
        "--cluster-id",
        "c",
        "--data-dir",
        dir,
        "--peer-addr",
        "127.0.0.1:0",
        "--client-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--insecure-plaintext",
    ]
}

#[test]
fn expect_state_on_an_empty_data_dir_exits_with_its_code_naming_flag_and_dir() {
    let tmp = tempfile::tempdir().unwrap();
    // A volume that is gone (no data dir), one wiped in place (raft/ empty),
    // and one wiped and then started once empty before (the lock and an
    // empty log are there, no state).
    let gone = tmp.path().join("gone");
    let wiped = tmp.path().join("wiped");
    std::fs::create_dir_all(wiped.join("raft")).unwrap();
    let started_empty = tmp.path().join("started-empty");
    std::fs::create_dir_all(&started_empty).unwrap();
    drop(raft_node::storage::LogStore::open(&started_empty.join("raft")).unwrap());
    let says_true = tmp.path().join("holds-state");
    std::fs::write(&says_true, "true\n").unwrap();
    let from_file = ["--expect-state-file", says_true.to_str().unwrap()];
    for dir in [&gone, &wiped, &started_empty] {
        let d = dir.to_str().unwrap();
        for flag in [&["--expect-state"][..], &from_file[..]] {
            let (code, err) = raft_node(&[&member_2_on(d)[..], flag].concat());
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
    }
    assert!(!gone.exists(), "a refused start writes nothing");
    // A data dir that cannot be read is a member that cannot start, not a
    // wiped one: an ordinary failure (exit 1), not the data-lost code.
    let broken = tmp.path().join("broken");
    std::fs::write(&broken, "not a directory").unwrap();
    let (code, err) = raft_node(
        &[
            &member_2_on(broken.to_str().unwrap())[..],
            &["--expect-state"],
        ]
        .concat(),
    );
    assert_eq!(code, 1, "{err}");
}

/// The window before the operator has recorded that a member holds state:
/// raft-node's own marker, written as it bootstraps, makes the same start
/// flags (initial voters included) refuse the wiped data dir.
#[test]
fn a_state_marker_written_at_bootstrap_refuses_a_wiped_restart_with_the_same_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let marker = tmp.path().join("scratch").join("holds-state");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    let flags = |d: &str, m: &str| -> Vec<String> {
        [
            &member_2_on(d)[..],
            &["--initial-voters", "2", "--state-marker", m],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = flags(data.to_str().unwrap(), marker.to_str().unwrap());
    let mut first = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no marker within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = raft_node(&args);
    assert_eq!(code, raft_node::config::EXPECT_STATE_EXIT_CODE, "{err}");
    assert!(!data.exists(), "nothing bootstrapped again: {err}");
}

#[test]
fn an_expect_state_file_that_is_missing_or_unclear_refuses_the_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let missing = tmp.path().join("missing");
    let unclear = tmp.path().join("unclear");
    std::fs::write(&unclear, "yes").unwrap();
    for (file, says) in [(&missing, "cannot read"), (&unclear, "\"yes\"")] {
        let f = file.to_str().unwrap();
        let flags = [
            &member_2_on(d.to_str().unwrap())[..],
            &["--expect-state-file", f],
        ]
        .concat();
        let (code, err) = raft_node(&flags);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("--expect-state-file {f}")), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_state_starts_on_raft_state_and_refuses_a_member_that_never_joined() {
    let mut c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    // Member 2 joins and catches up: it holds state from then on.
    c.add_learner_and_wait(1, 2).await;
    // Member 3 starts in join mode and is never added: its data dir holds
    // only what raft-node wrote on opening it, which is no raft state.
    c.add_member(3);
    c.spawn(3, &[]);
    c.wait_status(3, ELECTION * 20, "an answer", |_| true).await;
    c.kill9(3);
    c.kill9(2);
    c.kill9(1);
    // An empty file (the annotation not set yet) expects nothing.
    let empty = c.tls_dir().with_file_name("holds-state-empty");
    std::fs::write(&empty, "").unwrap();
    c.spawn(1, &["--expect-state-file", empty.to_str().unwrap()]);
    assert_eq!(c.wait_leader(ELECTION * 20).await, 1);
    c.spawn(2, &["--expect-state"]);
    c.wait_status(2, ELECTION * 20, "an answer", |_| true).await;
    c.spawn(3, &["--expect-state"]);
    let exited = tokio::time::timeout(ELECTION * 20, async {
        loop {
            if let Some(code) = c.exit_code(3) {
                return code;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let code = exited.await.expect("member 3 exits");
    assert_eq!(code, raft_node::config::EXPECT_STATE_EXIT_CODE);
    // Logs written to a file (a container's log) carry no colour codes.
    for id in [1, 2, 3] {
        let log = std::fs::read(c.log_path(id)).unwrap();
        assert!(log.len() > 100, "member {id} logged");
        assert!(!log.contains(&0x1b), "member {id}'s log has escape codes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_member_with_peers_connected_within_a_second() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION * 20).await;
    write_keys(&c.kv(&[1, 2, 3]), "k", 0..50).await;
    // A follower, then the leader: each has every peer's lane streams open.
    let follower = *c.all_ids().iter().find(|i| **i != leader).unwrap();
    for id in [follower, leader] {
        c.signal(id, "TERM");
        let t0 = std::time::Instant::now();
        let code = loop {
            if let Some(code) = c.exit_code(id) {
                break code;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "member {id} still runs 10 s after SIGTERM"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        let took = t0.elapsed();
        assert_eq!(code, 0, "member {id} exits cleanly: {}", c.logs_tail());
        assert!(
            took < std::time::Duration::from_secs(1),
            "member {id} took {took:?} to exit after SIGTERM"
        );
    }
}
