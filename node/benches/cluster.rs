//! Cluster benchmarks with real raft-node processes on loopback. Prints figures
//! measured side by side, in sections:
//!
//! - `rtt`, RTT tolerance: every peer link runs through a delay proxy adding
//!   700 ms RTT, at 100 heartbeats/s per peer, for `RAFTLANE_BENCH_SECS`
//!   (default 60) under a light write load: heartbeat drops, all drops, and
//!   elections, streaming vs `--transport unary` (batched, and one message per
//!   call);
//! - `lanes`, write throughput (`raftctl bench`, concurrency 1 and 32), 4 lanes
//!   vs 1 lane;
//! - `tls`, mutual TLS vs plaintext (`--insecure-plaintext`), both with the
//!   ports' default limits, and mutual TLS with every limit raised out of the
//!   way: write throughput at concurrency 32 and 256, p50 latency at
//!   concurrency 1, 4 lanes. Rounds (`TLS_ROUNDS`) run a fresh cluster per
//!   mode, rotating which runs first; each mode's figure is its median over
//!   the rounds, and the ratios (mTLS/plaintext; limits on/limits raised at
//!   c=256) are checked against their targets (printed as MEETS or MISSES,
//!   not asserted).
//!
//! Members run with mutual TLS unless a section asks for plaintext;
//! `raftctl bench` is given the cluster's admin certificate, or
//! `RAFTCTL_INSECURE_PLAINTEXT=true` on a plaintext cluster.
//!
//! `RAFTLANE_BENCH_SECTIONS` (a comma list of `rtt`, `lanes`, `tls`; default
//! all) runs only the named sections, always in the order above.

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

/// Points `cmd` (a raftctl) at `c`: the cluster's CA and admin certificate on a
/// TLS cluster, plaintext otherwise. Conflicting settings inherited from the
/// environment are removed.
fn raftctl_env(c: &Cluster, cmd: &mut Command) {
    if c.ca.is_some() {
        let dir = c.tls_dir();
        cmd.env_remove("RAFTCTL_INSECURE_PLAINTEXT")
            .env("RAFTCTL_CACERT", dir.join("ca.crt"))
            .env("RAFTCTL_CERT", dir.join("admin.crt"))
            .env("RAFTCTL_KEY", dir.join("admin.key"));
    } else {
        cmd.env_remove("RAFTCTL_CACERT")
            .env_remove("RAFTCTL_CERT")
            .env_remove("RAFTCTL_KEY")
            .env("RAFTCTL_INSECURE_PLAINTEXT", "true");
    }
}

/// Runs `raftctl bench` (128-byte values) against every member of `c`; returns
/// its summary line, empty (after printing why) if it failed.
fn raftctl_bench(c: &Cluster, ops: u64, concurrency: u64) -> String {
    let eps = c.endpoints(&c.all_ids()).join(",");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftctl"));
    cmd.args(["--endpoints", &eps, "bench", "--ops", &ops.to_string()])
        .args([
            "--concurrency",
            &concurrency.to_string(),
            "--value-size",
            "128",
        ]);
    raftctl_env(c, &mut cmd);
    let out = cmd.output().expect("run raftctl bench");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || line.is_empty() {
        println!(
            "raftctl bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    line
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or("?")
        .to_string()
}

/// A duration as raftctl prints it (`1.23ms`; also `µs`/`us`, `ns`, `s`, or a
/// bare number of milliseconds), in milliseconds.
fn millis(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("µs").or_else(|| v.strip_suffix("us")) {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ns") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(|x| x * scale)
}

const SECTIONS: [&str; 3] = ["rtt", "lanes", "tls"];

/// The sections `RAFTLANE_BENCH_SECTIONS` names; all when unset or empty.
fn sections() -> Vec<&'static str> {
    let Some(list) = std::env::var("RAFTLANE_BENCH_SECTIONS")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        return SECTIONS.to_vec();
    };
    let chosen: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &chosen {
        assert!(
            SECTIONS.contains(&s.as_str()),
            "RAFTLANE_BENCH_SECTIONS: unknown section {s:?} (known: {})",
            SECTIONS.join(",")
        );
    }
    SECTIONS
        .into_iter()
        .filter(|s| chosen.iter().any(|c| c == s))
        .collect()
}

/// The highest term the running members report, and the leader they name in it.
async fn leadership(c: &Cluster) -> (u64, u64) {
    let (mut term, mut leader) = (0, 0);
    for id in c.running_ids() {
        if let Some(s) = c.status(id).await {
            if s.term > term || (s.term == term && leader == 0) {
                term = s.term;
                leader = s.leader_id;
            }
        }
    }
    (term, leader)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Rounds of the mTLS vs plaintext section.
const TLS_ROUNDS: usize = 3;

/// One mode's figures from one round: ops/s at c=32, p50 (ms) at c=1.
#[derive(Default)]
struct TlsRound {
    ops_s: Option<f64>,
    ops_256: Option<f64>,
    p50_ms: Option<f64>,
}

/// Every port limit raised far past what the bench reaches: the "limits
/// off" mode the defaults are compared with.
const LIMITS_RAISED: &[&str] = &[
    "--client-max-streams",
    "100000",
    "--client-max-connections",
    "100000",
    "--client-budget-bytes",
    "17179869184",
    "--peer-budget-bytes",
    "17179869184",
    "--idle-timeout-ms",
    "86400000",
    "--max-connection-age-ms",
    "86400000",
];

async fn tls_section() {
    println!("\n== mutual TLS vs plaintext: 3 members, raftctl bench, 128-byte values ==");
    println!(
        "{TLS_ROUNDS} rounds, each a fresh cluster per mode (rotating which goes first), \
         4 lanes, default settings; c=1: 3000 ops, c=32 and c=256: 30000 ops, after a discarded warm-up"
    );
    println!(
        "{:<6} {:<10} {:>12} {:>10} {:>10} {:>10} {:>8}  note",
        "round", "mode", "concurrency", "ops/s", "p50", "p99", "errors"
    );
    let raised: Vec<&str> = [&["--lanes", "4"][..], LIMITS_RAISED].concat();
    let modes: [(&str, &[&str]); 3] = [
        ("mTLS", &["--lanes", "4"]),
        ("plaintext", &["--lanes", "4", "--insecure-plaintext"]),
        ("mTLS-raised", &raised),
    ];
    let mut results: Vec<Vec<TlsRound>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut flagged = 0;
    for round in 0..TLS_ROUNDS {
        let order = [0, 1, 2].map(|m| (m + round) % 3);
        for m in order {
            let (name, flags) = modes[m];
            let c = Cluster::start(3, flags);
            assert_eq!(c.ca.is_some(), name != "plaintext", "{name} cluster");
            c.wait_leader(ELECTION * 40).await;
            // Warm-up, not measured: opens the members' forwarding channels
            // (and their TLS sessions) and lets the log settle past the
            // leader's first entries.
            let warm = raftctl_bench(&c, 500, 8);
            if field(&warm, "ops/s") == "?" {
                println!("{:<6} {name:<10} warm-up failed: {warm}", round + 1);
            }
            let mut r = TlsRound::default();
            for (ops, conc) in [(3000u64, 1u64), (30000, 32), (30000, 256)] {
                let before = leadership(&c).await;
                let line = raftctl_bench(&c, ops, conc);
                let after = leadership(&c).await;
                let errors = field(&line, "errors");
                let mut note = Vec::new();
                if before != after || before.1 == 0 {
                    note.push(format!(
                        "leader changed: term {} leader {} -> term {} leader {}",
                        before.0, before.1, after.0, after.1
                    ));
                }
                if errors != "0" {
                    note.push(format!("errors={errors}"));
                }
                if !note.is_empty() {
                    flagged += 1;
                }
                println!(
                    "{:<6} {name:<10} {conc:>12} {:>10} {:>10} {:>10} {errors:>8}  {}",
                    round + 1,
                    field(&line, "ops/s"),
                    field(&line, "p50"),
                    field(&line, "p99"),
                    note.join("; ")
                );
                match conc {
                    1 => r.p50_ms = millis(&field(&line, "p50")),
                    32 => r.ops_s = field(&line, "ops/s").parse().ok(),
                    _ => r.ops_256 = field(&line, "ops/s").parse().ok(),
                }
            }
            results[m].push(r);
            drop(c); // kills the members before the next cluster starts
        }
    }
    if flagged > 0 {
        println!("{flagged} run(s) flagged above (leader change or errors); medians include them");
    }

    let ops = |m: usize| median(results[m].iter().filter_map(|r| r.ops_s).collect());
    let ops_256 = |m: usize| median(results[m].iter().filter_map(|r| r.ops_256).collect());
    let p50 = |m: usize| median(results[m].iter().filter_map(|r| r.p50_ms).collect());
    let show = |v: Option<f64>, unit: &str, prec: usize| {
        v.map_or("?".to_string(), |v| format!("{v:.prec$}{unit}"))
    };
    println!("median over {TLS_ROUNDS} rounds:");
    for (m, (name, _)) in modes.iter().enumerate() {
        println!(
            "  {name:<12} ops/s c=32: {:>8}   c=256: {:>8}   p50 c=1: {:>8}",
            show(ops(m), "", 0),
            show(ops_256(m), "", 0),
            show(p50(m), "ms", 2)
        );
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let verdict = |r: Option<f64>, ok: fn(f64) -> bool| match r {
        Some(r) if ok(r) => "MEETS",
        Some(_) => "MISSES",
        None => "MISSES (no figure)",
    };
    let tput = ratio(ops(0), ops(1));
    println!(
        "mTLS/plaintext throughput c=32: {} (target >= 0.85x) {}",
        show(tput, "x", 2),
        verdict(tput, |r| r >= 0.85)
    );
    let limited = ratio(ops_256(0), ops_256(2));
    println!(
        "mTLS default limits / limits raised, throughput c=256: {} (target >= 0.95x) {}",
        show(limited, "x", 2),
        verdict(limited, |r| r >= 0.95)
    );
    let lat = ratio(p50(0), p50(1));
    println!(
        "mTLS/plaintext p50 c=1: {} (target <= 1.2x) {}",
        show(lat, "x", 2),
        verdict(lat, |r| r <= 1.2)
    );
}

fn main() {
    let sections = sections();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if sections.contains(&"rtt") {
            rtt_section().await;
        }
        if sections.contains(&"lanes") {
            lanes_section().await;
        }
        if sections.contains(&"tls") {
            tls_section().await;
        }
    });
}

async fn rtt_section() {
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
            if r.settled {
                ""
            } else {
                ", no leader within 30 s of start"
            }
        );
    }
}

async fn lanes_section() {
    println!("\n== write throughput: 3 members, raftctl bench, 128-byte values ==");
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "lanes", "concurrency", "ops/s", "p50", "p99", "errors"
    );
    for lanes in ["4", "1"] {
        let c = Cluster::start(3, &["--lanes", lanes]);
        c.wait_leader(ELECTION * 40).await;
        for (ops, conc) in [(3000u64, 1u64), (30000, 32)] {
            let line = raftctl_bench(&c, ops, conc);
            println!(
                "{lanes:<8} {conc:>12} {:>10} {:>10} {:>10} {:>8}",
                field(&line, "ops/s"),
                field(&line, "p50"),
                field(&line, "p99"),
                field(&line, "errors")
            );
        }
    }
}
