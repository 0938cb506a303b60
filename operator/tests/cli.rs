//! The `raft-operator run` command line: without any Kubernetes configuration
//! it stops at once with an error saying so (it never hangs or panics), and
//! its flags read the environment the Helm chart sets; `validate` names the
//! field of a manifest it refuses; `local down` and a second `local` refuse
//! while an operator runs on the state dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[test]
fn run_without_a_cluster_says_so() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_raft-operator"))
        .arg("run")
        .env_clear()
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("missing"))
        .env("RAFTLANE_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Kubernetes configuration"), "{err}");
}

#[test]
fn run_flags_come_from_the_charts_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_raft-operator"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "RAFTLANE_WATCH_NAMESPACE",
        "RAFTLANE_ALL_NAMESPACES",
        "RAFTLANE_METRICS_ADDR",
        "RAFTLANE_LEADER_ELECTION",
        "RAFTLANE_LEASE_NAME",
        "POD_NAME",
        "POD_NAMESPACE",
    ] {
        assert!(help.contains(var), "`run --help` lacks {var}");
    }
    let chart = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/raft-operator/templates/deployment.yaml"),
    )
    .unwrap();
    for line in chart
        .lines()
        .filter(|l| l.trim_start().starts_with("- name: "))
    {
        let var = line.trim_start().trim_start_matches("- name: ").trim();
        if var.starts_with("RAFTLANE_") || var.starts_with("POD_") {
            assert!(
                help.contains(var),
                "the chart sets {var}, which `run` does not read"
            );
        }
    }
}

#[test]
fn validate_refuses_more_replicas_than_a_runtime_can_run_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.yaml");
    let manifest = "apiVersion: raftlane.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: huge\n\
                    spec:\n  replicas: 4000000000\n";
    std::fs::write(&file, manifest).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_raft-operator"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.replicas must be at most 254"), "{err}");
}

/// Runs `args` of raft-operator to its end, killed after `limit`.
fn operator_bounded(args: &[&Path], out_dir: &Path, limit: Duration) -> Output {
    let (out, err) = (out_dir.join("out"), out_dir.join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_raft-operator"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("raft-operator {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(out).unwrap(),
        stderr: std::fs::read(err).unwrap(),
    }
}

/// Kills the operator, then any member its records name, however the test ends.
struct Cleanup {
    operator: Option<Child>,
    cluster_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut op) = self.operator.take() {
            let _ = op.kill();
            let _ = op.wait();
        }
        for pid in member_pids(&self.cluster_dir) {
            // SAFETY: kill(2) with a pid from the test's own state dir.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// The pids the local runtime recorded for the cluster's members.
fn member_pids(cluster_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(cluster_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?;
            if !(name.starts_with("member-") && name.ends_with(".json")) {
                return None;
            }
            let rec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            Some(rec["pid"].as_u64()? as u32)
        })
        .collect()
}

/// raft-node, which the operator finds beside itself.
fn node_bin_present() {
    let bin = Path::new(env!("CARGO_BIN_EXE_raft-operator")).with_file_name("raft-node");
    assert!(
        bin.exists(),
        "{} missing: build the workspace first",
        bin.display()
    );
}

#[test]
fn local_down_and_a_second_local_refuse_while_an_operator_runs_on_the_state_dir() {
    node_bin_present();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("one.yaml");
    std::fs::write(
        &file,
        "apiVersion: raftlane.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: one\n\
         spec:\n  replicas: 1\n",
    )
    .unwrap();
    let state = tmp.path().join("state");
    let cluster_dir = state.join("one");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let operator = Command::new(env!("CARGO_BIN_EXE_raft-operator"))
        .arg("local")
        .arg("-f")
        .arg(&file)
        .arg("--state-dir")
        .arg(&state)
        // Something is logged to stderr (rustls's handshakes with members).
        .env("RAFTLANE_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join("operator.out")).unwrap())
        .stderr(std::fs::File::create(logs.join("operator.err")).unwrap())
        .spawn()
        .unwrap();
    let op_pid = operator.id();
    let mut cleanup = Cleanup {
        operator: Some(operator),
        cluster_dir: cluster_dir.clone(),
    };
    let operator_log = || {
        let read = |f: &str| std::fs::read_to_string(logs.join(f)).unwrap_or_default();
        format!("{}{}", read("operator.out"), read("operator.err"))
    };

    // Running: its member is up and serves (the endpoints list it).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let endpoints = std::fs::read_to_string(cluster_dir.join("endpoints")).unwrap_or_default();
        if !endpoints.trim().is_empty() {
            break;
        }
        let exited = cleanup.operator.as_mut().unwrap().try_wait().unwrap();
        assert!(exited.is_none(), "the operator exited: {}", operator_log());
        assert!(
            Instant::now() < deadline,
            "member 1 not running within 90 s: {}",
            operator_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let members = member_pids(&cluster_dir);
    assert_eq!(members.len(), 1, "{members:?}");
    // Logs into files carry no colour codes, the operator's nor its member's.
    for log in [logs.join("operator.err"), cluster_dir.join("member-1.log")] {
        let text = std::fs::read(&log).unwrap();
        assert!(!text.is_empty(), "{} is empty", log.display());
        assert!(!text.contains(&0x1b), "escape codes in {}", log.display());
    }

    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let down_args: [&Path; 6] = [
        Path::new("local"),
        Path::new("down"),
        Path::new("-f"),
        &file,
        Path::new("--state-dir"),
        &state,
    ];
    let down = operator_bounded(&down_args, &scratch, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success(), "local down ran: {err}");
    assert!(
        err.contains(&format!("an operator (pid {op_pid}) runs on"))
            && err.contains(&format!(
                "stop it first (Ctrl-C / kill {op_pid}), then run local down"
            )),
        "{err}"
    );
    assert_eq!(member_pids(&cluster_dir), members, "its member untouched");

    let local_args: [&Path; 5] = [
        Path::new("local"),
        Path::new("-f"),
        &file,
        Path::new("--state-dir"),
        &state,
    ];
    let again = operator_bounded(&local_args, &scratch, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second operator ran: {err}");
    assert!(
        err.contains(&format!("an operator (pid {op_pid}) already runs on")),
        "{err}"
    );

    // The operator dies (SIGKILL: no cleanup of its own). Its member is left
    // running, and the lock went with the process: `local down` stops it.
    let mut op = cleanup.operator.take().unwrap();
    op.kill().unwrap();
    op.wait().unwrap();
    let down = operator_bounded(&down_args, &scratch, Duration::from_secs(30));
    let out = String::from_utf8_lossy(&down.stdout);
    assert!(
        down.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(out.contains("stopped members [1] of one"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    // A stopped member is gone from /proc once reaped by init, or a zombie.
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    while !members.iter().all(|&p| gone(p)) {
        assert!(Instant::now() < deadline, "member not stopped in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
