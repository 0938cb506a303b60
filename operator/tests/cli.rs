//! The `raft-operator run` command line: without any Kubernetes configuration
//! it stops at once with an error saying so (it never hangs or panics), and
//! its flags read the environment the Helm chart sets; `validate` names the
//! field of a manifest it refuses.

use std::process::Command;

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
