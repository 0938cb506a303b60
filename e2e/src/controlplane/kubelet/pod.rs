//! One pod on the process kubelet: its containers' processes, restarts with
//! back-off per `restartPolicy`, probes, graceful termination, and the status
//! it reports. Driven by [`PodRun::sync`] on every pass of the kubelet; nothing
//! here blocks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::probe::ProbeState;
use super::setup::Launch;
use crate::controlplane::process::{signal_group, Process};

/// First restart back-off, doubled per restart up to [`MAX_BACKOFF`] (a real
/// kubelet uses 10 s and 5 min; shorter here so scenarios stay quick).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// RFC 3339 time, seconds precision, as the API stores it.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[derive(Clone, Debug)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        /// The termination log, or (FallbackToLogsOnError, a failure) the
        /// log's tail.
        message: String,
        started_at: String,
        finished_at: String,
    },
}

/// At most this much of a termination message is kept, as a kubelet does.
const MESSAGE_BYTES: usize = 4096;

/// The last `max` bytes of `path` (lossily UTF-8), empty when unreadable.
fn tail(path: &std::path::Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[from..])
        .trim_end()
        .to_string()
}

/// One container: its process and what its status reports.
pub struct ContainerRun {
    spec: Container,
    launch: Launch,
    log: PathBuf,
    process: Option<Process>,
    /// SIGTERM sent (liveness or startup failure): SIGKILL at this instant.
    stopping: Option<Instant>,
    state: State,
    last: Option<State>,
    pub restart_count: u32,
    backoff: Duration,
    next_start: Instant,
    startup: Option<ProbeState>,
    liveness: Option<ProbeState>,
    readiness: Option<ProbeState>,
    started: bool,
    ready: bool,
    /// A successful exit under OnFailure / Never: not started again.
    done: bool,
    /// Started at least once: the next start is a restart.
    ever_started: bool,
}

impl ContainerRun {
    pub fn new(spec: Container, launch: Launch, log: PathBuf) -> ContainerRun {
        ContainerRun {
            spec,
            launch,
            log,
            process: None,
            stopping: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            restart_count: 0,
            backoff: FIRST_BACKOFF,
            next_start: Instant::now(),
            startup: None,
            liveness: None,
            readiness: None,
            started: false,
            ready: false,
            done: false,
            ever_started: false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::id)
    }

    fn start(&mut self, pgids: &super::Pgids) {
        let l = &self.launch;
        // Each run's message is its own.
        let _ = std::fs::remove_file(&l.termination_log);
        let mut cmd = Command::new(&l.program);
        cmd.args(&l.args)
            .env_clear()
            .envs(l.env.iter().cloned())
            .current_dir(&l.cwd);
        let started_at = now_rfc3339();
        match Process::spawn(&self.spec.name, cmd, &self.log) {
            Ok(mut p) => {
                // A pod's processes are killed at once when the kubelet goes.
                p.grace = Duration::ZERO;
                pgids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p.id());
                let now = Instant::now();
                let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
                    p.as_ref().map(|p| ProbeState::new(p, &self.spec, now))
                };
                self.startup = probe(&self.spec.startup_probe);
                self.liveness = probe(&self.spec.liveness_probe);
                self.readiness = probe(&self.spec.readiness_probe);
                self.started = self.startup.is_none();
                self.ready = self.readiness.is_none() && self.started;
                self.process = Some(p);
                self.ever_started = true;
                self.state = State::Running { started_at };
            }
            Err(e) => {
                self.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message: format!("{e:#}"),
                };
                self.schedule_restart();
            }
        }
    }

    fn schedule_restart(&mut self) {
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// SIGTERM now, SIGKILL after `grace` (checked by [`ContainerRun::reap`]).
    fn begin_stop(&mut self, grace: Duration) {
        if let (Some(p), None) = (&self.process, self.stopping) {
            signal_group(p.id(), libc::SIGTERM);
            self.stopping = Some(Instant::now() + grace);
        }
    }

    /// Notes an exit; past the stop deadline, kills. True once no process is left.
    fn reap(&mut self, pgids: &super::Pgids) -> bool {
        let Some(p) = self.process.as_mut() else {
            return true;
        };
        let status = match p.try_wait() {
            Ok(Some(s)) => Some(s),
            _ if self.stopping.is_some_and(|d| Instant::now() >= d) => p.kill(),
            _ => None,
        };
        let Some(status) = status else {
            return false;
        };
        // Whatever it left in its group goes with it.
        signal_group(p.id(), libc::SIGKILL);
        pgids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.id());
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
        let started_at = match &self.state {
            State::Running { started_at } => started_at.clone(),
            _ => String::new(),
        };
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        let mut message = tail(&self.launch.termination_log, MESSAGE_BYTES);
        let fallback =
            self.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if message.is_empty() && exit_code != 0 && fallback {
            message = tail(&self.log, 2048);
        }
        self.state = State::Terminated {
            exit_code,
            reason: reason.into(),
            message,
            started_at,
            finished_at: now_rfc3339(),
        };
        self.process = None;
        self.stopping = None;
        self.ready = false;
        self.started = false;
        true
    }

    fn status(&self) -> Value {
        let state = |s: &State| match s {
            State::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => json!({
                "terminated": {
                    "exitCode": exit_code, "reason": reason, "message": message,
                    "startedAt": started_at, "finishedAt": finished_at,
                }
            }),
        };
        let mut s = json!({
            "name": self.spec.name,
            "image": self.spec.image,
            "imageID": format!("file://{}", self.launch.program.display()),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state(&self.state),
            "lastState": self.last.as_ref().map(state).unwrap_or(json!({})),
        });
        if let Some(pid) = self.pid() {
            s["containerID"] = json!(format!("process://{pid}"));
        }
        s
    }
}

/// A pod the kubelet runs.
pub struct PodRun {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    restart_policy: String,
    grace: Duration,
    start_time: String,
    pub containers: Vec<ContainerRun>,
    /// Deletion seen: every process gets SIGTERM, then SIGKILL at the deadline.
    pub terminating: bool,
    /// Conditions' last transition times, by type.
    transitions: BTreeMap<String, (bool, String)>,
    /// The status last written, to write only changes.
    pub reported: Option<Value>,
}

impl PodRun {
    pub fn new(pod: &Pod, ip: Ipv4Addr, dir: PathBuf, containers: Vec<ContainerRun>) -> PodRun {
        let spec = pod.spec.clone().unwrap_or_default();
        PodRun {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            ip,
            dir,
            restart_policy: spec.restart_policy.unwrap_or_else(|| "Always".into()),
            grace: Duration::from_secs(
                spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64
            ),
            start_time: now_rfc3339(),
            containers,
            terminating: false,
            transitions: BTreeMap::new(),
            reported: None,
        }
    }

    /// SIGTERM to every container; SIGKILL after `grace` (the pod's
    /// deletionGracePeriodSeconds).
    pub fn terminate(&mut self, grace: Duration) {
        self.terminating = true;
        for c in &mut self.containers {
            c.done = true;
            c.begin_stop(grace);
            // One already asked to stop (liveness) keeps the earlier deadline
            // only if it is sooner.
            if let Some(d) = c.stopping {
                c.stopping = Some(d.min(Instant::now() + grace));
            }
        }
    }

    /// SIGKILL to every container at once (the pod is gone from the API).
    pub fn kill(&mut self, pgids: &super::Pgids) {
        self.terminating = true;
        for c in &mut self.containers {
            c.done = true;
            c.stopping = Some(Instant::now());
            c.reap(pgids);
        }
    }

    /// True once every process has exited.
    pub fn stopped(&mut self, pgids: &super::Pgids) -> bool {
        let mut all = true;
        for c in &mut self.containers {
            all &= c.reap(pgids);
        }
        all
    }

    /// Probes that are due now: (container index, which, probe), to run concurrently.
    pub fn due_probes(&self, now: Instant) -> Vec<(usize, Which, &ProbeState)> {
        let mut out = Vec::new();
        for (i, c) in self.containers.iter().enumerate() {
            if c.process.is_none() || c.stopping.is_some() {
                continue;
            }
            if let Some(p) = c.startup.as_ref().filter(|p| !c.started && p.due(now)) {
                out.push((i, Which::Startup, p));
            }
            if !c.started {
                continue;
            }
            if let Some(p) = c.liveness.as_ref().filter(|p| p.due(now)) {
                out.push((i, Which::Liveness, p));
            }
            if let Some(p) = c.readiness.as_ref().filter(|p| p.due(now)) {
                out.push((i, Which::Readiness, p));
            }
        }
        out
    }

    /// Applies one probe result.
    pub fn probed(&mut self, i: usize, which: Which, ok: bool) {
        let now = Instant::now();
        let grace = self.grace;
        let c = &mut self.containers[i];
        let probe = match which {
            Which::Startup => c.startup.as_mut(),
            Which::Liveness => c.liveness.as_mut(),
            Which::Readiness => c.readiness.as_mut(),
        };
        let Some(p) = probe else { return };
        p.record(ok, now);
        let (succ, fail) = (
            p.successes >= p.success_threshold(),
            p.failures >= p.failure_threshold(),
        );
        match which {
            Which::Startup if succ => {
                c.started = true;
                c.ready = c.readiness.is_none();
            }
            Which::Startup | Which::Liveness if fail => c.begin_stop(grace),
            Which::Readiness if succ => c.ready = true,
            Which::Readiness if fail => c.ready = false,
            _ => {}
        }
    }

    /// Reaps exits and starts (or restarts, after back-off) containers.
    pub fn sync(&mut self, pgids: &super::Pgids) {
        if self.terminating {
            return;
        }
        for c in &mut self.containers {
            if c.process.is_some() {
                let was_running = matches!(c.state, State::Running { .. });
                if c.reap(pgids) && was_running {
                    let failed =
                        matches!(c.state, State::Terminated { exit_code, .. } if exit_code != 0);
                    let again = match self.restart_policy.as_str() {
                        "Never" => false,
                        "OnFailure" => failed,
                        _ => true,
                    };
                    if again {
                        c.schedule_restart();
                    } else {
                        c.done = true;
                    }
                }
                continue;
            }
            if c.done || Instant::now() < c.next_start {
                continue;
            }
            if c.ever_started {
                c.restart_count += 1;
            }
            c.start(pgids);
        }
        // In CrashLoopBackOff between restarts, as a kubelet reports it.
        for c in &mut self.containers {
            if c.process.is_none() && !c.done {
                if let State::Terminated { .. } = c.state {
                    c.last = Some(c.state.clone());
                    c.state = State::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!("back-off restarting failed container {}", c.spec.name),
                    };
                }
            }
        }
    }

    fn phase(&self) -> &'static str {
        let running = self.containers.iter().any(|c| c.process.is_some());
        let all_done = self
            .containers
            .iter()
            .all(|c| c.done && c.process.is_none());
        if all_done && !self.terminating {
            let ok = self
                .containers
                .iter()
                .all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }));
            return if ok { "Succeeded" } else { "Failed" };
        }
        if running || self.containers.iter().any(|c| c.ever_started) {
            "Running"
        } else {
            "Pending"
        }
    }

    fn condition(&mut self, type_: &str, status: bool) -> Value {
        let now = now_rfc3339();
        let entry = self
            .transitions
            .entry(type_.to_string())
            .or_insert_with(|| (status, now.clone()));
        if entry.0 != status {
            *entry = (status, now);
        }
        json!({
            "type": type_,
            "status": if status { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        })
    }

    /// The pod's status as the kubelet reports it.
    pub fn status(&mut self) -> Value {
        let ready = self.containers.iter().all(|c| c.ready) && !self.terminating;
        let conditions = vec![
            self.condition("PodReadyToStartContainers", true),
            self.condition("Initialized", true),
            self.condition("Ready", ready),
            self.condition("ContainersReady", ready),
            self.condition("PodScheduled", true),
        ];
        let ip = self.ip.to_string();
        json!({
            "phase": self.phase(),
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.start_time,
            "containerStatuses": self.containers.iter().map(ContainerRun::status).collect::<Vec<_>>(),
        })
    }
}

/// Which probe of a container.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Startup,
    Liveness,
    Readiness,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_running(script: &str, policy: &str, dir: &std::path::Path) -> PodRun {
        let liveness = json!({"tcpSocket": {"port": 1}, "failureThreshold": 2, "periodSeconds": 1});
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {
                "restartPolicy": policy,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "sh", "livenessProbe": liveness}],
            },
        }))
        .unwrap();
        let spec = pod.spec.as_ref().unwrap().containers[0].clone();
        let launch = Launch {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: dir.to_path_buf(),
            termination_log: dir.join("c.termination-log"),
        };
        let c = ContainerRun::new(spec, launch, dir.join("c.log"));
        PodRun::new(
            &pod,
            Ipv4Addr::new(127, 1, 0, 2),
            dir.to_path_buf(),
            vec![c],
        )
    }

    fn sync_for(run: &mut PodRun, pgids: &super::super::Pgids, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            run.sync(pgids);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn always_restarts_a_failing_container_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let pgids = super::super::Pgids::default();
        let mut run = pod_running("exit 3", "Always", dir.path());
        sync_for(&mut run, &pgids, Duration::from_millis(1600));
        let s = run.status();
        assert_eq!(s["phase"], "Running", "{s}");
        let c = &s["containerStatuses"][0];
        assert!(c["restartCount"].as_u64().unwrap() >= 1, "{c}");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
        run.kill(&pgids);
    }

    #[test]
    fn a_failed_liveness_probe_restarts_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let pgids = super::super::Pgids::default();
        let mut run = pod_running("sleep 30", "Always", dir.path());
        sync_for(&mut run, &pgids, Duration::from_millis(100));
        assert_eq!(run.due_probes(Instant::now()).len(), 1);
        run.probed(0, Which::Liveness, false);
        assert!(
            run.containers[0].stopping.is_none(),
            "one failure is below the threshold"
        );
        run.probed(0, Which::Liveness, false);
        assert!(run.containers[0].stopping.is_some());
        sync_for(&mut run, &pgids, Duration::from_millis(1500));
        let c = &run.status()["containerStatuses"][0];
        assert_eq!(c["restartCount"], 1, "{c}");
        assert!(c["state"]["running"].is_object(), "{c}");
        run.kill(&pgids);
    }

    #[test]
    fn never_leaves_a_failed_pod_failed() {
        let dir = tempfile::tempdir().unwrap();
        let pgids = super::super::Pgids::default();
        let mut run = pod_running("exit 1", "Never", dir.path());
        sync_for(&mut run, &pgids, Duration::from_millis(500));
        let s = run.status();
        assert_eq!(s["phase"], "Failed", "{s}");
        assert_eq!(s["containerStatuses"][0]["restartCount"], 0);
    }

    #[test]
    fn what_a_container_leaves_in_its_termination_log_is_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let pgids = super::super::Pgids::default();
        let log = dir.path().join("c.termination-log");
        let script = format!("printf '{{\"size\": 7}}' > {}; exit 0", log.display());
        let mut run = pod_running(&script, "Never", dir.path());
        sync_for(&mut run, &pgids, Duration::from_millis(500));
        let s = run.status();
        assert_eq!(s["phase"], "Succeeded", "{s}");
        let terminated = &s["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(terminated["message"], "{\"size\": 7}", "{s}");
    }

    #[test]
    fn termination_sends_sigterm_then_kills_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let pgids = super::super::Pgids::default();
        // Ignores SIGTERM: only the SIGKILL after the grace period ends it.
        let mut run = pod_running(
            "trap '' TERM; while :; do sleep 0.1; done",
            "Always",
            dir.path(),
        );
        sync_for(&mut run, &pgids, Duration::from_millis(200));
        let started = Instant::now();
        run.terminate(Duration::from_millis(500));
        while !run.stopped(&pgids) {
            assert!(started.elapsed() < Duration::from_secs(5), "not stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(started.elapsed() >= Duration::from_millis(450));
        assert!(pgids.lock().unwrap().is_empty());
        assert_eq!(run.status()["conditions"][2]["status"], "False");
    }
}
