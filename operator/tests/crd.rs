//! The CRD manifest is generated from the Rust types and must be current; the
//! examples must pass its schema and rules, and each bad spec must be refused
//! with its field named.

use raft_operator::crd::{crd_yaml, parse_cluster, ImagePullPolicy, RaftCluster, MAX_REPLICAS};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn checked_in_crds_are_current() {
    for (file, want) in [
        ("raftcluster.yaml", crd_yaml()),
        ("raftclusterbackup.yaml", raft_operator::backup::crd_yaml()),
    ] {
        for dir in ["crds", "charts/raft-operator/crds"] {
            let path = format!("{dir}/{file}");
            let committed = std::fs::read_to_string(repo(&path)).expect(&path);
            assert!(committed == want, "{path} is stale: run `make crds`");
        }
    }
}

#[test]
fn examples_are_valid() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            parse_cluster(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen > 0);
}

fn manifest(spec: &str) -> String {
    format!(
        "apiVersion: raftlane.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: t\nspec:\n{spec}"
    )
}

#[test]
fn bad_specs_are_refused_naming_their_field() {
    let cases = [
        ("  replicas: 0\n", "replicas must be at least 1"),
        ("  replicas: three\n", "spec.replicas"),
        ("  replicas: -1\n", "spec.replicas"),
        (
            "  replicas: 4000000000\n",
            "spec.replicas must be at most 254",
        ),
        ("  image: x\n", "replicas"),
        (
            "  replicas: 3\n  raft:\n    lanes: 3\n",
            "lanes must be 1 or 4",
        ),
        (
            "  replicas: 3\n  failureReplacement:\n    after: 5s\n",
            "spec.failureReplacement.after must be a duration of at least 10s",
        ),
        (
            "  replicas: 3\n  updateStrategy:\n    progressDeadline: 9s\n",
            "spec.updateStrategy.progressDeadline must be a duration of at least 10s",
        ),
        (
            "  replicas: 3\n  raft:\n    tickMs: 0\n",
            "tickMs must be 1 to 10000",
        ),
        (
            "  replicas: 3\n  raft:\n    heartbeatTicks: 10\n    electionTicks: 10\n",
            "heartbeatTicks must be below electionTicks",
        ),
        (
            "  replicas: 3\n  raft:\n    snapshotEntries: 0\n",
            "snapshotEntries must be at least 1",
        ),
        (
            "  replicas: 3\n  imagePullPolicy: Sometimes\n",
            "spec.imagePullPolicy",
        ),
        (
            "  replicas: 3\n  imagePullSecrets: [regcred]\n",
            "spec.imagePullSecrets",
        ),
        (
            "  replicas: 3\n  storage:\n    retentionPolicy:\n      whenScaled: Maybe\n",
            "spec.storage.retentionPolicy.whenScaled",
        ),
        (
            "  replicas: 3\n  tls:\n    issuerRef:\n      name: ca\n      kind: Vault\n",
            "spec.tls.issuerRef.kind must be Issuer or ClusterIssuer",
        ),
        (
            "  replicas: 3\n  tls:\n    enabled: false\n    issuerRef:\n      name: ca\n",
            "spec.tls.issuerRef needs spec.tls.enabled: true",
        ),
    ];
    for (spec, want) in cases {
        let err = parse_cluster(&manifest(spec)).expect_err(spec);
        assert!(
            err.contains(want),
            "spec {spec:?}: error {err:?} does not name {want:?}"
        );
    }
}

#[test]
fn a_name_that_cannot_name_member_pods_is_refused() {
    let named =
        |name: &str| manifest("  replicas: 3\n").replace("name: t", &format!("name: {name}"));
    for bad in ["Demo", "demo.one", "1demo", &"d".repeat(51)] {
        let err = parse_cluster(&named(bad)).expect_err(bad);
        assert!(
            err.contains("metadata.name must be a DNS label"),
            "{bad}: {err}"
        );
    }
    assert!(parse_cluster(&named(&"d".repeat(50))).is_ok());
}

#[test]
fn storage_size_may_grow_but_never_shrink() {
    let old = parse_cluster(&manifest("  replicas: 3\n  storage:\n    size: 2Gi\n")).unwrap();
    let grown = parse_cluster(&manifest("  replicas: 3\n  storage:\n    size: 4Gi\n")).unwrap();
    let shrunk = parse_cluster(&manifest("  replicas: 3\n  storage:\n    size: 1Gi\n")).unwrap();
    assert!(RaftCluster::validate_cel_update(&grown, &old).is_ok());
    let err = RaftCluster::validate_cel_update(&shrunk, &old)
        .unwrap_err()
        .to_string();
    assert!(err.contains("storage size cannot shrink"), "{err}");
}

#[test]
fn tls_settings_cannot_change_on_a_running_cluster() {
    let on = parse_cluster(&manifest("  replicas: 3\n")).unwrap();
    let off = parse_cluster(&manifest("  replicas: 3\n  tls:\n    enabled: false\n")).unwrap();
    let scaled = parse_cluster(&manifest("  replicas: 5\n")).unwrap();
    assert!(RaftCluster::validate_cel_update(&scaled, &on).is_ok());
    let err = RaftCluster::validate_cel_update(&off, &on)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.tls cannot change once the cluster exists"),
        "{err}"
    );
}

#[test]
fn a_restore_is_given_only_when_a_cluster_is_created() {
    let plain = parse_cluster(&manifest("  replicas: 3\n")).unwrap();
    let restored = parse_cluster(&manifest(
        "  replicas: 3\n  restore:\n    file: /b/nightly.rlb\n",
    ))
    .unwrap();
    let other = parse_cluster(&manifest(
        "  replicas: 5\n  restore:\n    file: /b/other.rlb\n",
    ))
    .unwrap();
    let mut scaled = restored.clone();
    scaled.spec.replicas = 5;
    assert!(RaftCluster::validate_cel_update(&scaled, &restored).is_ok());
    for (new, old) in [
        (&restored, &plain),
        (&plain, &restored),
        (&other, &restored),
    ] {
        let err = RaftCluster::validate_cel_update(new, old)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.restore is set only when a cluster is created"),
            "{err}"
        );
    }
    let err = parse_cluster(&manifest("  replicas: 3\n  restore:\n    file: ''\n")).unwrap_err();
    assert!(
        err.contains("spec.restore.file must name a backup file"),
        "{err}"
    );
}

#[test]
fn storage_size_must_be_a_positive_quantity() {
    let sized = |size: &str| {
        parse_cluster(&manifest(&format!(
            "  replicas: 3\n  storage:\n    size: \"{size}\"\n"
        )))
    };
    for bad in ["1GB", "1 Gi", "Gi", "", "-1Gi", "0"] {
        let err = sized(bad).expect_err(bad);
        assert!(
            err.contains("storage.size must be a positive quantity"),
            "{bad:?}: {err}"
        );
    }
    for good in ["1Gi", "500Mi", "2G", "1.5Gi", "1e9"] {
        assert_eq!(sized(good).expect(good).spec.storage.size, good);
    }
    // The schema's pattern (what `make manifests` and the API server check
    // before any CEL) refuses it too.
    let crd = std::fs::read_to_string(repo("crds/raftcluster.yaml")).unwrap();
    let schema: serde_yaml::Value = serde_yaml::from_str(&crd).unwrap();
    let size = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["storage"]["properties"]["size"];
    assert!(
        size["pattern"].as_str().is_some(),
        "no pattern on storage.size"
    );
}

#[test]
fn chart_crd_is_the_generated_one() {
    let generated = std::fs::read(repo("crds/raftcluster.yaml")).expect("crds/raftcluster.yaml");
    let chart = std::fs::read(repo("charts/raft-operator/crds/raftcluster.yaml"))
        .expect("charts/raft-operator/crds/raftcluster.yaml");
    assert!(
        generated == chart,
        "charts/raft-operator/crds/raftcluster.yaml differs from crds/raftcluster.yaml: run `make crds`"
    );
}

#[test]
fn the_crd_allows_exactly_the_replicas_every_runtime_can_run() {
    let replicas = |n: u32| parse_cluster(&manifest(&format!("  replicas: {n}\n")));
    assert_eq!(replicas(MAX_REPLICAS).unwrap().spec.replicas, MAX_REPLICAS);
    let err = replicas(MAX_REPLICAS + 1).unwrap_err();
    assert!(err.contains("spec.replicas must be at most 254"), "{err}");
}

#[test]
fn members_default_to_the_operators_own_version_and_take_pull_settings() {
    let rc = parse_cluster(&manifest("  replicas: 3\n")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        rc.spec.image,
        format!("ghcr.io/raftlane/raft-node:{version}")
    );
    let crd = std::fs::read_to_string(repo("crds/raftcluster.yaml")).unwrap();
    assert!(
        crd.contains(&format!("default: ghcr.io/raftlane/raft-node:{version}")),
        "the CRD's default image is not raft-node {version}"
    );
    let rc = parse_cluster(&manifest(
        "  replicas: 3\n  imagePullPolicy: Never\n  imagePullSecrets:\n  - name: regcred\n",
    ))
    .unwrap();
    assert_eq!(rc.spec.image_pull_policy, Some(ImagePullPolicy::Never));
    assert_eq!(rc.spec.image_pull_secrets[0].name, "regcred");
}
