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
//! The program uses only the test harness and the `raftctl` and `raft-node`
//! binaries of the tree it is built in, so the same file measures an older
//! raft-node when built in that tree.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
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

fn raftctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(args)
        .output()
        .expect("run raftctl")
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
fn scan_all(endpoint: &str) -> ScanRun {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftctl"))
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
        let load = raftctl(&[
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
        let scan = async {
            let run = tokio::task::spawn_blocking(move || scan_all(&ep))
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
    });
}
