//! Raft-loop stall under a big scan: a 3-member cluster at production timing
//! (100 ms ticks, heartbeats every 200 ms, 1 s election timeout) holds
//! `RAFTLANE_BENCH_SCAN_KEYS` keys (default 1 M); one client (`raftctl scan`)
//! reads them all from the leader. Prints one line: how regularly the leader kept
//! sending heartbeats to a follower meanwhile (intervals between increments of
//! its heartbeat-lane sent counter, sampled from /metrics every 10 ms, so the
//! resolution is about 10 ms), how long the raft loop took to answer a `Status`
//! request (sent every 10 ms on one admin connection; the loop answers it
//! between its other work, so this is the stall a client or admin request sees),
//! and how many elections (term changes) happened.
//!
//! Then, on the same loaded cluster: `raftctl backup` from the leader (wall time
//! of the whole command, bytes, MB/s), and a new 3-member cluster restored from
//! that file with `--restore-from` (time from the first spawn until a leader is
//! agreed and every member's own status shows it restored and in the
//! configuration, MB/s of the backup's bytes over that time), then a sample of
//! 1000 keys spread over the key range read back through the restored cluster
//! and compared with the loaded values.
//!
//! The program uses only the test harness and the `raftctl` and `raft-node`
//! binaries of the tree it is built in, so the same file measures an older
//! raft-node when built in that tree.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, ELECTION};
use raftlane_proto::admin::StatusRequest;

const TIMING: [&str; 6] = [
    "--tick-ms",
    "100",
    "--heartbeat-ticks",
    "2",
    "--election-ticks",
    "10",
];
/// Kept sampling after the scan ends: an election the stall caused shows up
/// within one election timeout (1 s).
const AFTER_SCAN: Duration = Duration::from_secs(3);

fn scan_keys() -> u64 {
    std::env::var("RAFTLANE_BENCH_SCAN_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// Bound on each stage of the backup and restore section.
const BACKUP_WITHIN: Duration = Duration::from_secs(300);
const RESTORE_WITHIN: Duration = Duration::from_secs(300);
const SAMPLE_WITHIN: Duration = Duration::from_secs(120);
const SAMPLE: u64 = 1000;
/// What `raftctl bench --value-size 16` writes under every key.
const BENCH_VALUE: &[u8] = &[b'v'; 16];

/// `raftctl` dialing the cluster whose certificates are in `tls` as its admin.
fn raftctl_cmd(tls: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftctl"));
    cmd.env_remove("RAFTCTL_INSECURE_PLAINTEXT")
        .env("RAFTCTL_CACERT", tls.join("ca.crt"))
        .env("RAFTCTL_CERT", tls.join("admin.crt"))
        .env("RAFTCTL_KEY", tls.join("admin.key"));
    cmd
}

fn raftctl(c: &Cluster, args: &[&str]) -> std::process::Output {
    raftctl_cmd(&c.tls_dir())
        .args(args)
        .output()
        .expect("run raftctl")
}

/// The key `raftctl bench` writes for op `i`.
fn bench_key(i: u64) -> String {
    format!("bench/{i:012}")
}

async fn max_term(c: &Cluster) -> u64 {
    let mut t = 0;
    for id in c.running_ids() {
        if let Some(s) = c.status(id).await {
            t = t.max(s.term);
        }
    }
    t
}

/// Waits (at most `within`) until every member applied what the leader committed.
async fn caught_up(c: &Cluster, leader: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Some(commit) = c.status(leader).await.map(|s| s.commit_index) else {
            return false;
        };
        let mut all = true;
        for id in c.all_ids() {
            all &= c
                .status(id)
                .await
                .is_some_and(|s| s.applied_index >= commit);
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Intervals between increments of the leader's heartbeat-lane sent counter
/// towards `follower`, sampled until `stop`.
async fn heartbeat_intervals(
    c: &Cluster,
    leader: u64,
    follower: u64,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let label = format!("peer=\"{follower}\",lane=\"heartbeat\"");
    let name = "raftlane_transport_sent_messages_total";
    let (mut last_value, mut last_change) = (c.metric_with(leader, name, &label).await, None);
    let mut gaps = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let v = c.metric_with(leader, name, &label).await;
        if v != last_value {
            let now = Instant::now();
            if let Some(t) = last_change {
                gaps.push(now - t);
            }
            (last_value, last_change) = (v, Some(now));
        }
    }
    gaps
}

/// Round trips of `Status` requests to `leader`'s raft loop, one every 10 ms
/// until `stop`.
async fn loop_latencies(c: &Cluster, leader: u64, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut admin = c.admin(leader).await;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if admin.status(StatusRequest {}).await.is_ok() {
            out.push(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn ms(d: Option<&Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    ms(sorted.get(i))
}

struct ScanRun {
    pairs: u64,
    secs: f64,
    outcome: String,
}

/// `raftctl scan` of every key from `endpoint`, counting the lines it prints.
fn scan_all(tls: &Path, endpoint: &str) -> ScanRun {
    let started = Instant::now();
    let mut child = raftctl_cmd(tls)
        .args([
            "--endpoints",
            endpoint,
            "--timeout-ms",
            "60000",
            "scan",
            "bench/",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run raftctl scan");
    let pairs = BufReader::new(child.stdout.take().unwrap()).lines().count() as u64;
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let status = child.wait().expect("wait for raftctl scan");
    let outcome = if status.success() {
        "ok".to_string()
    } else {
        let first = err.lines().next().unwrap_or("").chars().take(120).collect();
        first
    };
    ScanRun {
        pairs,
        secs: started.elapsed().as_secs_f64(),
        outcome,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let keys = scan_keys();
        println!(
            "== raft loop under a scan: 3 members, 100 ms ticks, 1 s election timeout, {keys} keys of 16-byte values =="
        );
        let c = Cluster::start(3, &TIMING);
        let leader = c.wait_leader(ELECTION * 60).await;
        let follower = *c.all_ids().iter().find(|&&i| i != leader).unwrap();
        let ep = c.members[&leader].client.clone();
        let ops = keys.to_string();
        let load = raftctl(&c, &[
            "--endpoints", &ep, "bench", "--ops", &ops, "--concurrency", "64", "--value-size", "16",
        ]);
        let load = String::from_utf8_lossy(&load.stdout).trim().to_string();
        let synced = caught_up(&c, leader, Duration::from_secs(120)).await;

        let term_before = max_term(&c).await;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            async { heartbeat_intervals(&c, leader, follower, stop).await }
        };
        let status = loop_latencies(&c, leader, stop.clone());
        let tls = c.tls_dir();
        let scan = async {
            let run = tokio::task::spawn_blocking(move || scan_all(&tls, &ep))
                .await
                .unwrap();
            tokio::time::sleep(AFTER_SCAN).await;
            stop.store(true, Ordering::Relaxed);
            run
        };
        let (mut gaps, mut answers, run) = tokio::join!(sampler, status, scan);
        let elections = max_term(&c).await - term_before;
        gaps.sort();
        answers.sort();
        println!(
            "load: {load}{}",
            if synced { "" } else { " (followers not caught up within 120 s)" }
        );
        println!(
            "scan {} of {keys} pairs in {:.1} s ({}): heartbeat interval leader->follower p50 {:.0} ms p99 {:.0} ms max {:.0} ms ({} intervals); leader loop Status p50 {:.1} ms p99 {:.1} ms max {:.1} ms ({} requests); elections {elections}",
            run.pairs,
            run.secs,
            run.outcome,
            pct(&gaps, 0.50),
            pct(&gaps, 0.99),
            ms(gaps.last()),
            gaps.len(),
            pct(&answers, 0.50),
            pct(&answers, 0.99),
            ms(answers.last()),
            answers.len(),
        );

        let count = if keys == 1_000_000 {
            "1 M".to_string()
        } else {
            keys.to_string()
        };
        println!("== backup and restore: 3 members, {count} keys ==");
        if let Err(e) = backup_and_restore(&c, leader, keys).await {
            println!("backup and restore FAILED: {e}");
        }
    });
}

/// Runs `cmd` to completion, killing it after `within`; its exit status, stdout
/// and stderr.
fn run_bounded(mut cmd: Command, within: Duration) -> Result<(bool, String, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start raftctl: {e}"))?;
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "raftctl did not finish within {within:?} (killed); stderr: {}",
                    err.join().unwrap_or_default().trim()
                ));
            }
            Err(e) => return Err(format!("waiting for raftctl: {e}")),
        }
    };
    Ok((
        status.success(),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    ))
}

/// Statuses of every member of `r`, asked at once (each bounded to 5 s, the harness's own timeout; a member
/// still restoring holds the request until it serves, so the answer comes as
/// soon as it does). Whether every member answered, and `Ok` once a leader is
/// agreed and every member restored and sees voters [1, 2, 3], else what is
/// missing.
async fn restored(r: &Cluster) -> (bool, Result<String, String>) {
    let ids = r.all_ids();
    let statuses = futures::future::join_all(
        ids.iter()
            .map(|&id| r.status_within(id, Duration::from_secs(5))),
    )
    .await;
    let mut leaders = Vec::new();
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for (id, s) in ids.iter().zip(statuses) {
        match s {
            None => missing.push(format!("member {id}: no status")),
            Some(s) => {
                if !(s.applied_index >= 5 && s.voters == [1, 2, 3]) {
                    missing.push(format!(
                        "member {id}: applied {} voters {:?}",
                        s.applied_index, s.voters
                    ));
                }
                leaders.push((s.leader_id, s.role == "leader" && s.id == s.leader_id));
                seen.push(format!("{id}: applied {}", s.applied_index));
            }
        }
    }
    let all_answered = leaders.len() == ids.len();
    let first = leaders.first().map_or(0, |l| l.0);
    if !(first != 0
        && leaders.len() == 3
        && leaders.iter().all(|l| l.0 == first)
        && leaders.iter().any(|l| l.1))
    {
        missing.push(format!("no agreed leader ({leaders:?})"));
    }
    let verdict = if missing.is_empty() {
        Ok(format!("leader {first}, {}", seen.join(", ")))
    } else {
        Err(missing.join("; "))
    };
    (all_answered, verdict)
}

/// Reads the sample keys through `kv`, at most `SAMPLE_WITHIN` in all.
async fn read_sample(
    kv: &raft_node::client::KvClient,
    sample: &[String],
) -> Result<Vec<Option<Vec<u8>>>, String> {
    let read = async {
        let mut out = Vec::with_capacity(sample.len());
        for k in sample {
            out.push(
                kv.get(k.as_bytes())
                    .await
                    .map_err(|e| format!("get {k}: {e}"))?,
            );
        }
        Ok(out)
    };
    tokio::time::timeout(SAMPLE_WITHIN, read)
        .await
        .map_err(|_| format!("reading {} keys took over {SAMPLE_WITHIN:?}", sample.len()))?
}

async fn backup_and_restore(c: &Cluster, leader: u64, keys: u64) -> Result<(), String> {
    // 1. Backup from the leader, timed around the whole process.
    let file = c.tmp.path().join("scan.backup");
    let mut cmd = raftctl_cmd(&c.tls_dir());
    cmd.args([
        "--admin",
        &c.members[&leader].admin,
        "--timeout-ms",
        &BACKUP_WITHIN.as_millis().to_string(),
        "backup",
        "--out",
    ])
    .arg(&file);
    let started = Instant::now();
    let (ok, out, err) = run_bounded(cmd, BACKUP_WITHIN)?;
    let backup_secs = started.elapsed().as_secs_f64();
    if !ok {
        return Err(format!(
            "raftctl backup failed after {backup_secs:.1} s: {}{}",
            out.trim(),
            err.trim()
        ));
    }
    let bytes = std::fs::metadata(&file)
        .map_err(|e| format!("backup file {}: {e}", file.display()))?
        .len();
    println!("raftctl: {}", out.trim());
    println!(
        "backup: {bytes} bytes in {backup_secs:.2} s wall ({:.1} MB/s)",
        bytes as f64 / 1e6 / backup_secs
    );

    // 2. A new cluster from the file.
    let mut r = Cluster::prepare(3, &TIMING);
    let from = file.display().to_string();
    let started = Instant::now();
    for id in r.all_ids() {
        r.spawn(id, &["--initial-voters", "1,2,3", "--restore-from", &from]);
    }
    let deadline = started + RESTORE_WITHIN;
    let mut serving = None;
    let seen = loop {
        let (all_answered, verdict) = restored(&r).await;
        if all_answered && serving.is_none() {
            serving = Some(started.elapsed().as_secs_f64());
        }
        match verdict {
            Ok(seen) => break seen,
            Err(missing) if Instant::now() >= deadline => {
                return Err(format!(
                    "restored cluster not ready within {RESTORE_WITHIN:?}: {missing}\n{}",
                    r.logs_tail()
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let restore_secs = started.elapsed().as_secs_f64();
    println!(
        "restore: leader agreed and every member restored with voters [1, 2, 3] in {restore_secs:.2} s from the first spawn ({:.1} MB/s of the backup; every member answering Status after {:.2} s; {seen})",
        bytes as f64 / 1e6 / restore_secs,
        serving.unwrap_or(restore_secs),
    );

    // 3. A sample spread over the key range, compared with what was loaded.
    let n = SAMPLE.min(keys);
    let sample: Vec<String> = (0..n).map(|j| bench_key(j * keys / n)).collect();
    let original = read_sample(&c.kv(&c.all_ids()), &sample).await?;
    let back = read_sample(&r.kv(&r.all_ids()), &sample).await?;
    let not_loaded = original
        .iter()
        .filter(|v| v.as_deref() != Some(BENCH_VALUE))
        .count();
    let differ: Vec<&String> = sample
        .iter()
        .zip(original.iter().zip(&back))
        .filter(|(_, (o, b))| o != b)
        .map(|(k, _)| k)
        .collect();
    let equal = differ.is_empty() && not_loaded == 0;
    println!(
        "sample of {n} keys equal: {}{}{}",
        if equal { "yes" } else { "NO" },
        if differ.is_empty() {
            String::new()
        } else {
            format!(
                " ({} differ from the source cluster, first {})",
                differ.len(),
                differ[0]
            )
        },
        if not_loaded == 0 {
            String::new()
        } else {
            format!(" ({not_loaded} not holding the loaded value on the source cluster)")
        },
    );
    Ok(())
}
