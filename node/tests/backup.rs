//! Backup and restore with real processes: `raftctl backup` streams a fresh
//! snapshot of a running cluster to a file; a new cluster whose every initial
//! voter is started with `--restore-from` that file holds every key, as each
//! member's own status and reads show. A corrupt backup, a restore into a
//! formed cluster and a backup by a certificate neither an admin's nor the
//! backup Jobs' are refused; the backup Jobs' may change nothing.
//! Scheduled backups: `--series`/`--keep` leave the newest files of a series
//! and nothing else touched, `--summary-file` records the run, and bad
//! retention flags are refused before any backup is taken.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{assert_keys, write_keys, Cluster, ELECTION};
use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::BackupRequest;
use raftlane_tls::{Expect, Identity};

const KEYS: u64 = 20_000;

/// Waits for member `id`'s process to exit (a refused start) and returns its log.
fn refused_start(c: &mut Cluster, id: u64) -> String {
    let child = c.members.get_mut(&id).unwrap().child.as_mut().unwrap();
    assert!(!child.wait().unwrap().success(), "member {id} started");
    std::fs::read_to_string(c.log_path(id)).unwrap()
}

fn raftctl(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let dir = c.tls_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(args)
        .env("RAFTCTL_CACERT", dir.join("ca.crt"))
        .env("RAFTCTL_CERT", dir.join("admin.crt"))
        .env("RAFTCTL_KEY", dir.join("admin.key"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_a_new_cluster_with_every_key_on_every_member() {
    let c = Cluster::start(3, &["--snapshot-entries", "5000"]);
    let leader = c.wait_leader(ELECTION * 20).await;
    let keys = write_keys(&c.kv(&[1, 2, 3]), "b/", 0..KEYS).await;
    let out = c.tmp.path().join("cluster.backup");
    let admin = c.members[&leader].admin.clone();
    let (code, stdout, err) = raftctl(
        &c,
        &["--admin", &admin, "backup", "--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("crc32c") && stdout.contains("MB/s"),
        "{stdout}"
    );
    eprintln!("measured: {}", stdout.trim());
    // It holds every key: readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backup file mode {mode:o}");
    // Written after the backup: not in it.
    c.kv(&[1]).put(b"after", b"x").await.unwrap();

    // A new cluster (its own id and certificates) from the file.
    let mut r = Cluster::prepare(3, &[]);
    let from = out.display().to_string();
    let voters = "1,2,3";
    for id in r.all_ids() {
        r.spawn(id, &["--initial-voters", voters, "--restore-from", &from]);
    }
    r.wait_leader(ELECTION * 40).await;
    for id in r.all_ids() {
        let s = r
            .wait_status(
                id,
                ELECTION * 40,
                "restored and in the configuration",
                |s| s.voters == [1, 2, 3] && s.applied_index >= 5,
            )
            .await;
        assert_eq!(s.voters, [1, 2, 3], "member {id}'s own view");
        assert_keys(&r.kv(&[id]), &keys[..500]).await;
    }
    let kv = r.kv(&[1, 2, 3]);
    assert_keys(&kv, &keys).await;
    assert_eq!(kv.get(b"after").await.unwrap(), None);
    kv.put(b"restored/write", b"ok").await.unwrap();

    // The same file into a formed cluster: refused at start.
    r.kill9(2);
    r.spawn(2, &["--initial-voters", voters, "--restore-from", &from]);
    let text = refused_start(&mut r, 2);
    assert!(
        text.contains("--restore-from") && text.contains("already holds raft state"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_backup_is_refused_and_only_admins_or_backup_jobs_may_take_one() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    write_keys(&c.kv(&[1]), "k/", 0..100).await;
    let out = c.tmp.path().join("one.backup");
    let admin = c.members[&1].admin.clone();
    let (code, _, err) = raftctl(
        &c,
        &["--admin", &admin, "backup", "--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");

    let mut bytes = std::fs::read(&out).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = c.tmp.path().join("bad.backup");
    std::fs::write(&bad, &bytes).unwrap();
    let mut r = Cluster::prepare(1, &[]);
    r.spawn(
        1,
        &[
            "--initial-voters",
            "1",
            "--restore-from",
            bad.to_str().unwrap(),
        ],
    );
    let text = refused_start(&mut r, 1);
    assert!(
        text.contains("--restore-from") && text.contains("checksum mismatch"),
        "{text}"
    );

    // A member's certificate may not read the whole dataset out.
    let err = admin_as(&c, "member-1", &admin)
        .await
        .backup(BackupRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    // The backup Jobs' certificate may take a backup, and change nothing.
    c.write_cert("backup", &Identity::backup(&c.cluster_id));
    let (code, stdout, err) = raftctl(
        &c,
        &[
            "--cert",
            c.tls_dir().join("backup.crt").to_str().unwrap(),
            "--key",
            c.tls_dir().join("backup.key").to_str().unwrap(),
            "--admin",
            &admin,
            "backup",
            "--out",
            c.tmp.path().join("by-job.backup").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    // Nor the data: the client port refuses it at the handshake.
    let d = c.dialer_as("backup");
    let endpoint = d
        .endpoint(&c.members[&1].client)
        .unwrap()
        .timeout(Duration::from_secs(5));
    if let Ok(ch) = d.connect(endpoint, Expect::AnyMember).await {
        let put = raftlane_proto::kv::kv_client::KvClient::new(ch)
            .put(raftlane_proto::kv::PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })
            .await;
        assert!(put.is_err(), "the backup identity wrote a key");
    }
    let err = admin_as(&c, "backup", &admin)
        .await
        .remove_member(raftlane_proto::admin::MemberRequest { id: 2 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
}

/// The admin API at `addr` as certificate `name`.
async fn admin_as(
    c: &Cluster,
    name: &str,
    addr: &str,
) -> NodeAdminClient<tonic::transport::Channel> {
    let d = c.dialer_as(name);
    let endpoint = d.endpoint(addr).unwrap().timeout(Duration::from_secs(5));
    NodeAdminClient::new(d.connect(endpoint, Expect::AnyMember).await.unwrap())
}

/// The names of the entries of `dir`, sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_keeps_its_newest_backups_and_a_summary_records_each() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    write_keys(&c.kv(&[1]), "s/", 0..100).await;
    let admin = c.members[&1].admin.clone();
    let dir = c.tmp.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    // Not of the series, a leftover partial and a directory named like an old
    // backup: none of them is ever deleted.
    std::fs::write(dir.join("other-20261201T090000Z.rlb"), b"unrelated").unwrap();
    std::fs::write(dir.join("demo-x.partial"), b"partial").unwrap();
    std::fs::create_dir(dir.join("demo-20261101T000000Z.rlb")).unwrap();
    let summary = c.tmp.path().join("summary.json");
    let name = |s: u32| format!("demo-20261201T10000{s}Z.rlb");

    let mut removed_by_run = Vec::new();
    for s in 0..3 {
        let file = dir.join(name(s));
        let args = [
            "--admin",
            &admin,
            "backup",
            "--out",
            file.to_str().unwrap(),
            "--series",
            "demo",
            "--keep",
            "2",
            "--summary-file",
            summary.to_str().unwrap(),
        ];
        let (code, stdout, err) = raftctl(&c, &args);
        assert_eq!(code, 0, "{stdout}{err}");
        assert!(stdout.contains("crc32c"), "{stdout}");
        let kept = match s {
            0 => format!("kept 1 [{}], removed 0 []", name(0)),
            1 => format!("kept 2 [{}, {}], removed 0 []", name(1), name(0)),
            _ => format!("kept 2 [{}, {}], removed 1 [{}]", name(2), name(1), name(0)),
        };
        assert!(err.contains(&kept), "{err}");

        let bytes = std::fs::read(&file).unwrap();
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        assert_eq!(j["file"], file.to_str().unwrap(), "{j}");
        assert_eq!(j["size"], bytes.len() as u64, "{j}");
        let tail = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!(j["crc32c"], tail, "{j}");
        assert!(stdout.contains(&format!("crc32c {tail:#010x}")), "{stdout}");
        assert_eq!(j["member"], 1, "{j}");
        assert_eq!(j["cluster"], c.cluster_id.as_str(), "{j}");
        assert!(j["term"].as_u64().unwrap() >= 1, "{j}");
        assert!(j["index"].as_u64().unwrap() >= 100, "{j}");
        assert!(j["seconds"].as_f64().unwrap() >= 0.0, "{j}");
        removed_by_run.push(j["removed"].clone());
        assert!(!summary.with_extension("json.tmp").exists());
    }
    assert_eq!(
        removed_by_run,
        [
            serde_json::json!([]),
            serde_json::json!([]),
            serde_json::json!([name(0)]),
        ]
    );
    assert_eq!(
        names_in(&dir),
        [
            "demo-20261101T000000Z.rlb",
            &name(1),
            &name(2),
            "demo-x.partial",
            "other-20261201T090000Z.rlb",
        ]
    );

    // A failed backup (no member there) deletes nothing and writes no summary.
    let before = names_in(&dir);
    std::fs::remove_file(&summary).unwrap();
    let dead = format!("{}:1", c.members[&1].ip);
    let file = dir.join(name(3));
    let (code, _, err) = raftctl(
        &c,
        &[
            "--admin",
            &dead,
            "backup",
            "--out",
            file.to_str().unwrap(),
            "--series",
            "demo",
            "--keep",
            "1",
            "--summary-file",
            summary.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(!summary.exists());
    assert!(!file.exists());
    assert_eq!(names_in(&dir), before);
}

#[test]
fn retention_flags_are_refused_before_any_backup() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo-20261201T100000Z.rlb");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_raftctl"))
            .args(["--insecure-plaintext", "--admin", "127.0.0.1:1", "backup"])
            .args(["--out", out.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--series", "demo", "--keep", "0"]);
    assert!(!ok && err.contains("--keep"), "{err}");
    let (ok, err) = run(&["--keep", "2"]);
    assert!(!ok && err.contains("--series"), "{err}");
    let (ok, err) = run(&["--series", "demo"]);
    assert!(!ok && err.contains("--keep"), "{err}");
    // FILE must belong to the series it prunes, or --keep would not count it.
    let (ok, err) = run(&["--series", "other", "--keep", "2"]);
    assert!(!ok && err.contains("--series other"), "{err}");
    assert!(names_in(dir.path()).is_empty());
}
