//! One seeded run: a young three-voter cluster (default --snapshot-entries, so
//! nothing is compacted during the run: where joiners once replayed the log
//! from index 1 and missed the initial voters), clients, the nemesis schedule;
//! then heal, converge, read every key through every member, and judge the
//! history and every member's own configuration view.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::checker::{self, Anomaly};
use crate::history::{Counts, History};
use crate::nemesis::{self, Nemesis};
use crate::schedule::schedule;
use crate::workload::{self, ReadPath, Workload};

pub const CLIENTS: usize = 4;
pub const KEYS: usize = 3;
/// States the checker may explore per key before it answers undecided.
pub const MAX_STATES: usize = 250_000;
/// Longest wait for agreement once every fault is healed.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

pub struct RunReport {
    pub seed: u64,
    /// Seconds of faults the run was given.
    pub secs: u64,
    pub wall: Duration,
    pub ops: Counts,
    pub counts: nemesis::Counts,
    pub anomalies: Vec<Anomaly>,
    pub undecided: Vec<(String, usize)>,
    /// Every member's view once converged, or what disagreed or broke.
    pub views: Result<String, String>,
    /// The members' log tails, kept when the run failed.
    pub logs: Option<String>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.views.is_ok() && self.anomalies.is_empty() && self.undecided.is_empty()
    }

    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .counts
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let changes: Vec<String> = self
            .counts
            .changes
            .iter()
            .map(|(k, c)| format!("{k} {}/{}/{}", c.applied, c.refused, c.failed))
            .collect();
        format!(
            "nemesis seed={:#018x} wall={:.1}s ops={} (ok {} / failed {} / unknown {}) \
             faults: {} | membership applied/refused/failed: {} | anomalies {} undecided {} | views {}",
            self.seed,
            self.wall.as_secs_f64(),
            self.ops.ok + self.ops.failed + self.ops.unknown,
            self.ops.ok,
            self.ops.failed,
            self.ops.unknown,
            faults.join(", "),
            changes.join(", "),
            self.anomalies.len(),
            self.undecided.len(),
            if self.views.is_ok() { "agree" } else { "DISAGREE" },
        )
    }

    /// Everything needed to understand and replay a failed run.
    pub fn details(&self) -> String {
        let mut out = String::new();
        match &self.views {
            Ok(v) => out += &format!("  views: {v}\n"),
            Err(e) => out += &format!("  configuration views disagree: {e}\n"),
        }
        for a in &self.anomalies {
            out += &format!("  anomaly on {} (ops {:?}): {}\n", a.key, a.ops, a.why);
        }
        for (k, explored) in &self.undecided {
            out += &format!("  undecided: key {k} after {explored} states\n");
        }
        if let Some(logs) = &self.logs {
            out += logs;
        }
        out += &format!(
            "  replay: RAFTLANE_NEMESIS_SEEDS={:#x} RAFTLANE_NEMESIS_SECS={} cargo test -p raft-node --test nemesis -- --nocapture seeded\n",
            self.seed, self.secs
        );
        out
    }
}

pub async fn run(seed: u64, nemesis_for: Duration) -> RunReport {
    let started = Instant::now();
    let history = Arc::new(History::new());
    let mut n = Nemesis::start(seed, 3, &["--request-timeout-ms", "2000"], history.clone()).await;
    let views = match n.wait_leader(Duration::from_secs(30)).await {
        None => Err("no leader within 30 s of the start".to_string()),
        Some(_) => {
            let paths = [ReadPath::Linearizable; CLIENTS];
            let clients = Workload::start(
                seed,
                &paths,
                KEYS,
                n.endpoints.clone(),
                history.clone(),
                &n.c.dialer(),
            );
            let until = Instant::now() + nemesis_for;
            for step in schedule(seed, 10_000) {
                if Instant::now() >= until {
                    break;
                }
                n.run_step(step).await;
            }
            n.heal_everything().await;
            clients.stop().await;
            judge_cluster(&mut n, &history).await
        }
    };
    let records = history.records();
    let report = checker::check(&History::checker_ops(&records), MAX_STATES);
    let mut r = RunReport {
        seed,
        secs: nemesis_for.as_secs(),
        wall: started.elapsed(),
        ops: history.counts(),
        counts: n.counts.clone(),
        anomalies: report.anomalies().into_iter().cloned().collect(),
        undecided: report
            .undecided()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
        views,
        logs: None,
    };
    if !r.passed() {
        r.logs = Some(n.c.logs_tail());
    }
    r
}

/// After healing: every member's own view agrees with the leader's, the
/// cluster takes a write, and every member answers a read of every key (those
/// reads join the history). Returns the views, or everything that broke.
async fn judge_cluster(n: &mut Nemesis, history: &Arc<History>) -> Result<String, String> {
    let views = n.converge(CONVERGE_WITHIN).await;
    let writable = workload::put_until_acknowledged(
        CLIENTS,
        "key-final",
        n.endpoints.clone(),
        history.clone(),
        Duration::from_secs(10),
        &n.c.dialer(),
    )
    .await;
    let mut broken = n.violations.clone();
    if !writable {
        broken.push("no write acknowledged within 10 s of healing".into());
    }
    let members: Vec<(u64, String)> = n
        .endpoints
        .read()
        .expect("endpoints poisoned")
        .iter()
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    for (i, (id, addr)) in members.into_iter().enumerate() {
        let only = Arc::new(RwLock::new([(id, addr)].into()));
        workload::read_every_key(CLIENTS + 1 + i, KEYS, only, history.clone(), &n.c.dialer()).await;
    }
    match views {
        Ok(v) if broken.is_empty() => Ok(v),
        Ok(v) => Err(format!("{}; views: {v}", broken.join("; "))),
        Err(e) => Err(broken.into_iter().chain([e]).collect::<Vec<_>>().join("; ")),
    }
}
