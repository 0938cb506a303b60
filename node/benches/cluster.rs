//! Cluster benchmarks with real raft-node processes on loopback. Prints figures
//! measured side by side:
//!
//! - RTT tolerance: every peer link runs through a delay proxy adding 700 ms RTT,
//!   at 100 heartbeats/s per peer, for `RAFTLANE_BENCH_SECS` (default 60) under a
//!   light write load: heartbeat drops, all drops, and elections, streaming vs
//!   `--transport unary` (batched, and one message per call);
//! - write throughput (`raftctl bench`, concurrency 1 and 32), 4 lanes vs 1 lane.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/delay_proxy.rs"]
mod delay_proxy;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, ELECTION};

fn bench_secs() -> u64 {
    std::env::var("RAFTLANE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// Waits until some member leads; false if none did in time (measured anyway).
async fn settle(c: &Cluster, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for id in c.running_ids() {
            if c.status(id).await.is_some_and(|s| s.role == "leader") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

struct RttRun {
    settled: bool,
    heartbeat_drops: f64,
    all_drops: f64,
    elections: u64,
    writes_ok: u64,
    writes_failed: u64,
}

async fn rtt_run(flags: &[&str], secs: u64) -> RttRun {
    // Seed 000's load: 100 heartbeats/s per peer (10 ms ticks, a heartbeat every
    // tick), 1 s election timeout.
    let timing = [
        "--tick-ms",
        "10",
        "--heartbeat-ticks",
        "1",
        "--election-ticks",
        "100",
    ];
    let mut c = Cluster::prepare(3, &[flags, &timing].concat());
    for id in c.all_ids() {
        let real: SocketAddr = c.members[&id].peer.parse().unwrap();
        let listen: SocketAddr = format!("{}:0", c.members[&id].ip).parse().unwrap();
        let proxy = delay_proxy::start(listen, real, Duration::from_millis(350)).await;
        c.reach.insert(id, proxy.to_string());
    }
    c.start_voters();
    let settled = settle(&c, Duration::from_secs(30)).await;
    let term_before = max_term(&c).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut writers = Vec::new();
    for w in 0..4 {
        let kv = c.kv(&c.all_ids());
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match kv
                    .put_once(format!("w{w}/{i}").into_bytes(), vec![b'x'; 256])
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let (mut hb, mut all) = (0.0, 0.0);
    for id in c.all_ids() {
        hb += c
            .metric_with(
                id,
                "raftlane_transport_dropped_messages_total",
                "lane=\"heartbeat\"",
            )
            .await;
        all += c
            .metric(id, "raftlane_transport_dropped_messages_total")
            .await;
    }
    RttRun {
        settled,
        heartbeat_drops: hb,
        all_drops: all,
        elections: max_term(&c).await - term_before,
        writes_ok: ok.load(Ordering::Relaxed),
        writes_failed: failed.load(Ordering::Relaxed),
    }
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

fn raftctl_bench(endpoints: &str, ops: u64, concurrency: u64) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(["--endpoints", endpoints, "bench", "--ops", &ops.to_string()])
        .args([
            "--concurrency",
            &concurrency.to_string(),
            "--value-size",
            "128",
        ])
        .output()
        .expect("run raftctl bench");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or("?")
        .to_string()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let secs = bench_secs();
        println!(
            "== RTT tolerance: 3 members, 700 ms RTT on every peer link, 100 heartbeats/s, {secs} s, 4 writers =="
        );
        println!(
            "{:<26} {:>16} {:>12} {:>10} {:>10} {:>12}",
            "transport", "heartbeat drops", "all drops", "elections", "writes ok", "writes failed"
        );
        let modes: [(&str, &[&str]); 3] = [
            ("stream", &["--transport", "stream"]),
            ("unary, batched", &["--transport", "unary"]),
            (
                "unary, 1 message per call",
                &["--transport", "unary", "--max-batch-messages", "1"],
            ),
        ];
        for (name, flags) in modes {
            let started = Instant::now();
            let r = rtt_run(flags, secs).await;
            println!(
                "{name:<26} {:>16} {:>12} {:>10} {:>10} {:>12}   ({:.0} s{})",
                r.heartbeat_drops,
                r.all_drops,
                r.elections,
                r.writes_ok,
                r.writes_failed,
                started.elapsed().as_secs_f64(),
                if r.settled { "" } else { ", no leader within 30 s of start" }
            );
        }

        println!("\n== write throughput: 3 members, raftctl bench, 128-byte values ==");
        println!(
            "{:<8} {:>12} {:>10} {:>10} {:>10} {:>8}",
            "lanes", "concurrency", "ops/s", "p50", "p99", "errors"
        );
        for lanes in ["4", "1"] {
            let c = Cluster::start(3, &["--lanes", lanes]);
            c.wait_leader(ELECTION * 40).await;
            let eps = c.endpoints(&c.all_ids()).join(",");
            for (ops, conc) in [(3000u64, 1u64), (30000, 32)] {
                let line = raftctl_bench(&eps, ops, conc);
                println!(
                    "{lanes:<8} {conc:>12} {:>10} {:>10} {:>10} {:>8}",
                    field(&line, "ops/s"),
                    field(&line, "p50"),
                    field(&line, "p99"),
                    field(&line, "errors")
                );
            }
        }
    });
}
