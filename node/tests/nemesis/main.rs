//! The nemesis: seeded randomized runs against real `raft-node` processes while
//! concurrent clients put unique values and read linearizably on a few keys.
//! Faults: kill -9, SIGSTOP pauses, partitions through per-pair loopback
//! proxies, restarts on a new address with UpsertPeers, and membership changes
//! (add learner, promote, remove a follower, re-add) on a young cluster. After
//! each run every fault is healed, every member's own Status must show the
//! leader's configuration, and the history must be linearizable.
//!
//! `RAFTLANE_NEMESIS_SEEDS`: a count of fresh seeds (`5`), or seeds to replay
//! (`0x1f2e3d4c5b6a7988`, or a comma-separated list). `RAFTLANE_NEMESIS_SECS`:
//! seconds of faults per run (default 20). A failed run prints the line that
//! replays it; timing differs between runs, the schedule does not.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod history;
mod mesh;
mod nemesis;
mod proxy;
mod run;
mod schedule;
mod workload;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{Cluster, ELECTION};
use history::{History, Outcome, Record};
use workload::{ReadPath, Workload};

const DEFAULT_SEEDS: usize = 2;
const DEFAULT_SECS: u64 = 20;

/// The seeds to run, from `RAFTLANE_NEMESIS_SEEDS`.
fn seeds() -> Vec<u64> {
    let spec = std::env::var("RAFTLANE_NEMESIS_SEEDS").unwrap_or_default();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    parse_seeds(&spec, clock ^ ((std::process::id() as u64) << 32))
}

/// A count (`5`) draws that many seeds from `entropy`; a hex seed (`0x1f`) or a
/// comma-separated list (`0x1f,42`) replays exactly those.
fn parse_seeds(spec: &str, entropy: u64) -> Vec<u64> {
    let spec = spec.trim();
    let parse = |s: &str| {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .unwrap_or_else(|e| panic!("RAFTLANE_NEMESIS_SEEDS: {s:?}: {e}"))
    };
    if spec.contains(',') || spec.starts_with("0x") {
        return spec
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(parse)
            .collect();
    }
    let count = if spec.is_empty() {
        DEFAULT_SEEDS
    } else {
        parse(spec) as usize
    };
    let mut x = entropy;
    (0..count)
        .map(|_| {
            // splitmix64: distinct, well-spread seeds from one reading.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
        .collect()
}

#[test]
fn a_seed_count_draws_fresh_seeds_and_a_printed_seed_replays_itself() {
    let fresh = parse_seeds("3", 1);
    assert_eq!(fresh.len(), 3);
    assert_ne!(fresh, parse_seeds("3", 2));
    assert_eq!(parse_seeds("", 1).len(), DEFAULT_SEEDS);
    let printed = format!("{:#x}", fresh[1]);
    assert_eq!(parse_seeds(&printed, 9), vec![fresh[1]]);
    assert_eq!(parse_seeds("0x2a, 7", 9), vec![42, 7]);
}

fn nemesis_secs() -> Duration {
    let secs = std::env::var("RAFTLANE_NEMESIS_SECS")
        .ok()
        .map(|s| s.trim().parse().expect("RAFTLANE_NEMESIS_SECS: seconds"))
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_nemesis_runs_stay_linearizable_and_every_member_sees_the_leaders_configuration() {
    let started = Instant::now();
    let secs = nemesis_secs();
    let mut reports = Vec::new();
    for seed in seeds() {
        let r = run::run(seed, secs).await;
        eprintln!("{}", r.summary());
        for why in &r.counts.refusals {
            eprintln!("  refused: {why}");
        }
        match (&r.views, r.passed()) {
            (Ok(views), true) => eprintln!("  views: {views}"),
            _ => eprint!("{}", r.details()),
        }
        reports.push(r);
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}\n{}", r.summary(), r.details()))
        .collect();
    let total = |f: fn(&run::RunReport) -> usize| reports.iter().map(f).sum::<usize>();
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut applied, mut refused, mut lost) = (0, 0, 0);
    for r in &reports {
        for (k, n) in &r.counts.faults {
            *faults.entry(k).or_default() += n;
        }
        for c in r.counts.changes.values() {
            applied += c.applied;
            refused += c.refused;
            lost += c.failed;
        }
    }
    eprintln!(
        "nemesis total: runs {} ({} failed), ops {} (ok {}, failed {}, unknown {}), faults {:?}, \
         membership changes applied {applied} refused {refused} failed {lost}, anomalies {}, wall {:.1}s",
        reports.len(),
        failed.len(),
        total(|r| r.ops.ok + r.ops.failed + r.ops.unknown),
        total(|r| r.ops.ok),
        total(|r| r.ops.failed),
        total(|r| r.ops.unknown),
        faults,
        total(|r| r.anomalies.len()),
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed runs:\n{}", failed.join("\n"));
}

/// A get answered from client 0's cache whose value was overwritten, by
/// operations that completed, before the get began: stale by construction.
fn provably_stale(records: &[Record]) -> Option<&Record> {
    let ok_put = |r: &Record| r.put.is_some() && r.outcome == Outcome::Ok(None);
    records.iter().find(|g| {
        let Outcome::Ok(Some(v)) = &g.outcome else {
            return false;
        };
        if g.client != 0 || g.put.is_some() {
            return false;
        }
        let Some(w) = records.iter().find(|p| p.put.as_ref() == Some(v)) else {
            return false;
        };
        records
            .iter()
            .any(|q| ok_put(q) && q.key == g.key && q.invoke > w.complete && q.complete < g.invoke)
    })
}

/// The checker bites on real output: three clients on a real cluster, one of
/// which answers its gets from its own cache instead of asking a member (the
/// product has no read path without ReadIndex, so the wrong path is the
/// client's). Its puts and the others' operations are real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_history_with_reads_served_from_a_stale_cache_is_reported_as_an_anomaly() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(ELECTION * 40).await;
    let endpoints = Arc::new(RwLock::new(
        c.all_ids()
            .into_iter()
            .map(|id| (id, c.members[&id].client.clone()))
            .collect(),
    ));
    let history = Arc::new(History::new());
    let paths = [
        ReadPath::ClientCache,
        ReadPath::Linearizable,
        ReadPath::Linearizable,
    ];
    let clients = Workload::start(7, &paths, 2, endpoints, history.clone(), &c.dialer());
    let deadline = Instant::now() + Duration::from_secs(60);
    while provably_stale(&history.records()).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    clients.stop().await;
    let records = history.records();
    let stale = provably_stale(&records).expect("the cached reader returned a stale value");

    let report = checker::check(&History::checker_ops(&records), run::MAX_STATES);
    let anomalies = report.anomalies();
    assert!(
        anomalies.iter().any(|a| a.key == stale.key),
        "stale read {stale:?} not reported: {report:?}"
    );
    eprintln!(
        "checker on {} real ops: {}",
        records.len(),
        anomalies[0].why
    );

    // The same history without the cached reads is linearizable: the anomaly
    // is the wrong read path's, not the cluster's.
    let honest: Vec<Record> = records
        .into_iter()
        .filter(|r| r.client != 0 || r.put.is_some())
        .collect();
    let report = checker::check(&History::checker_ops(&honest), run::MAX_STATES);
    assert!(
        report.anomalies().is_empty() && report.undecided().is_empty(),
        "{report:?}"
    );
}
