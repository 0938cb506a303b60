//! A kubelet that runs pods as local processes: it registers a Ready Node
//! (and removes the not-ready taint admission put on it), binds every pending
//! pod to itself through `pods/binding` (there is no scheduler), and runs the
//! pods bound to it with what [`setup`] and [`pod`] provide: a distinct
//! loopback pod IP per pod (`127.1.x.y`, never reused in a run, so a
//! recreated pod comes back on a new address), volumes, env, probes,
//! restarts, graceful deletion and status.
//!
//! It works by polling (a pass every [`PASS`]): list every pod, act, report
//! what changed through `pods/status`. On drop every process it started is
//! killed.

pub mod pod;
pub mod probe;
pub mod setup;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::wait_for;
use pod::{now_rfc3339, ContainerRun, PodRun};
pub use setup::ImageBinary;
use setup::{NotYet, Sandbox};

/// Process groups of every running container, killed when the kubelet drops.
pub type Pgids = Arc<Mutex<BTreeSet<u32>>>;

/// Time between two passes.
const PASS: Duration = Duration::from_millis(250);
const NODE_READY: Duration = Duration::from_secs(30);

/// What the kubelet needs to know.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub node: String,
    /// Pod directories go under `<dir>/pods/<uid>`.
    pub dir: PathBuf,
    /// Image name (as [`setup::image_name`] gives it) to binary.
    pub images: BTreeMap<String, ImageBinary>,
    /// Port of the API server on 127.0.0.1, given to pods as the
    /// `kubernetes` Service.
    pub apiserver_port: u16,
}

/// The running kubelet; stops with every pod process on drop.
pub struct Kubelet {
    task: tokio::task::JoinHandle<()>,
    pgids: Pgids,
    pub dir: PathBuf,
}

impl Kubelet {
    /// Registers the Node, waits for it to be Ready and untainted, and starts
    /// running pods.
    pub async fn start(client: Client, config: KubeletConfig) -> anyhow::Result<Kubelet> {
        register_node(&client, &config.node).await?;
        let pgids = Pgids::default();
        let dir = config.dir.clone();
        let mut state = Loop {
            client,
            config,
            pgids: pgids.clone(),
            runs: BTreeMap::new(),
            ips: BTreeMap::new(),
            next_ip: 2,
            waiting: BTreeMap::new(),
            errors: BTreeMap::new(),
        };
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = state.pass().await {
                    eprintln!("kubelet: {e:#}");
                }
                tokio::time::sleep(PASS).await;
            }
        });
        Ok(Kubelet { task, pgids, dir })
    }

    /// The last lines of every container log, for a failed run.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let Ok(pods) = std::fs::read_dir(self.dir.join("pods")) else {
            return out;
        };
        let mut logs: Vec<PathBuf> = pods
            .flatten()
            .filter_map(|d| std::fs::read_dir(d.path()).ok())
            .flat_map(|d| d.flatten().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for l in logs {
            let tail = super::process::tail(&l, lines);
            out.push_str(&format!("--- {} ---\n{tail}\n", l.display()));
        }
        out
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        let pgids = std::mem::take(&mut *self.pgids.lock().unwrap_or_else(|e| e.into_inner()));
        for pgid in pgids {
            super::process::signal_group(pgid, libc::SIGKILL);
        }
    }
}

async fn register_node(client: &Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
    }))?;
    if nodes.get_opt(name).await?.is_none() {
        nodes
            .create(&PostParams::default(), &node)
            .await
            .context("creating the Node")?;
    }
    let now = now_rfc3339();
    let resources =
        json!({"cpu": "16", "memory": "64Gi", "pods": "250", "ephemeral-storage": "100Gi"});
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "machineID": "raftlane-e2e", "systemUUID": "raftlane-e2e", "bootID": "raftlane-e2e",
            "kernelVersion": "", "osImage": "raftlane process kubelet",
            "containerRuntimeVersion": "process://0.1.0", "kubeletVersion": "v0.0.0-raftlane-e2e",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("reporting the Node Ready")?;
    // TaintNodesByCondition put node.kubernetes.io/not-ready on the new Node;
    // without the node lifecycle controller nobody else takes it off.
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .context("removing the Node's taints")?;
    wait_for("the Node Ready without taints", NODE_READY, || async {
        let n = nodes.get(name).await?;
        let untainted = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_none_or(|t| t.is_empty());
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok((untainted && ready).then_some(()))
    })
    .await
}

struct Loop {
    client: Client,
    config: KubeletConfig,
    pgids: Pgids,
    runs: BTreeMap<String, PodRun>,
    /// Pod IPs by pod UID, given before the pod could start.
    ips: BTreeMap<String, Ipv4Addr>,
    next_ip: u32,
    /// Why a pod has not started yet, as last reported.
    waiting: BTreeMap<String, String>,
    /// The last status-report error per pod, printed once.
    errors: BTreeMap<String, String>,
}

fn pods_api(client: &Client, ns: &str) -> Api<Pod> {
    Api::namespaced(client.clone(), ns)
}

impl Loop {
    fn ip_for(&mut self, uid: &str) -> Ipv4Addr {
        if let Some(ip) = self.ips.get(uid) {
            return *ip;
        }
        let n = self.next_ip;
        self.next_ip += 1;
        let ip = Ipv4Addr::new(
            127,
            1 + (n / 62_000) as u8,
            ((n % 62_000) / 250) as u8,
            (n % 250) as u8 + 1,
        );
        self.ips.insert(uid.to_string(), ip);
        ip
    }

    async fn bind(&self, pod: &Pod) -> anyhow::Result<()> {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let body = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node},
        });
        let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/binding"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)?;
        self.client
            .request_text(req)
            .await
            .with_context(|| format!("binding pod {ns}/{name}"))?;
        Ok(())
    }

    /// Deletes a pod whose processes are gone, for good.
    async fn delete_finally(&self, ns: &str, name: &str, uid: &str) -> anyhow::Result<()> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods_api(&self.client, ns).delete(name, &params).await {
            Ok(_) => Ok(()),
            // Already gone, or a new pod under the same name (UID differs).
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting pod {ns}/{name} finally")),
        }
    }

    async fn report(&self, ns: &str, name: &str, status: &serde_json::Value) -> anyhow::Result<()> {
        let patch = json!({"status": status});
        match pods_api(&self.client, ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("status of pod {ns}/{name}")),
        }
    }

    /// Sets up a pod's sandbox and containers; Ok(None) while it cannot start yet.
    async fn prepare(&mut self, pod: &Pod) -> anyhow::Result<Option<PodRun>> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ip = self.ip_for(&uid);
        let dir = self.config.dir.join("pods").join(&uid);
        std::fs::create_dir_all(&dir)?;
        let sandbox = Sandbox {
            client: &self.client,
            pod,
            ip,
            dir: &dir,
            node: &self.config.node,
            apiserver_port: self.config.apiserver_port,
            images: &self.config.images,
        };
        let prepared = async {
            let volumes = sandbox.volumes().await?;
            let mut containers = Vec::new();
            for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                let launch = sandbox.launch(c, &volumes).await?;
                let log = dir.join(format!("{}.log", c.name));
                containers.push(ContainerRun::new(c.clone(), launch, log));
            }
            anyhow::Ok(containers)
        }
        .await;
        match prepared {
            Ok(containers) => {
                self.waiting.remove(&uid);
                Ok(Some(PodRun::new(pod, ip, dir, containers)))
            }
            Err(e) => {
                let (reason, message) = match e.downcast_ref::<NotYet>() {
                    Some(n) => ("ContainerCreating", n.0.clone()),
                    None => ("CreateContainerConfigError", format!("{e:#}")),
                };
                if self.waiting.get(&uid) != Some(&message) {
                    let names: Vec<_> = pod.spec.iter().flat_map(|s| s.containers.iter()).collect();
                    let status = json!({
                        "phase": "Pending",
                        "hostIP": "127.0.0.1",
                        "containerStatuses": names.iter().map(|c| json!({
                            "name": c.name, "image": c.image, "imageID": "", "ready": false,
                            "restartCount": 0,
                            "state": {"waiting": {"reason": reason, "message": message}},
                        })).collect::<Vec<_>>(),
                    });
                    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
                    self.report(&ns, &name, &status).await?;
                    self.waiting.insert(uid, message);
                }
                Ok(None)
            }
        }
    }

    async fn pass(&mut self) -> anyhow::Result<()> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .context("listing pods")?;
        let mine = Some(self.config.node.as_str());
        let mut ours: BTreeMap<String, Pod> = BTreeMap::new();
        for p in pods {
            let spec = p.spec.as_ref();
            match spec.and_then(|s| s.node_name.as_deref()) {
                None if p.metadata.deletion_timestamp.is_none() => {
                    if let Err(e) = self.bind(&p).await {
                        eprintln!("kubelet: {e:#}");
                    }
                }
                n if n == mine => {
                    ours.insert(p.metadata.uid.clone().unwrap_or_default(), p);
                }
                _ => {}
            }
        }

        // Gone from the API (a forced delete): killed at once, before any
        // replacement starts on the same volume.
        let gone: Vec<String> = self
            .runs
            .keys()
            .filter(|u| !ours.contains_key(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut run) = self.runs.remove(&uid) {
                run.kill(&self.pgids);
            }
            self.ips.remove(&uid);
        }
        self.waiting.retain(|u, _| ours.contains_key(u));
        self.errors.retain(|u, _| ours.contains_key(u));

        for (uid, pod) in &ours {
            let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            if pod.metadata.deletion_timestamp.is_some() {
                let done = match self.runs.get_mut(uid) {
                    Some(run) => {
                        if !run.terminating {
                            let grace = pod
                                .metadata
                                .deletion_grace_period_seconds
                                .unwrap_or(30)
                                .max(0);
                            run.terminate(Duration::from_secs(grace as u64));
                        }
                        run.stopped(&self.pgids)
                    }
                    None => true,
                };
                if done {
                    self.runs.remove(uid);
                    self.ips.remove(uid);
                    // Tried again next pass while the pod is still there.
                    if let Err(e) = self.delete_finally(&ns, &name, uid).await {
                        eprintln!("kubelet: {e:#}");
                    }
                }
                continue;
            }
            if !self.runs.contains_key(uid) {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Succeeded" | "Failed")) {
                    continue;
                }
                match self.prepare(pod).await {
                    Ok(Some(run)) => {
                        self.runs.insert(uid.clone(), run);
                    }
                    Ok(None) => continue,
                    // One pod's trouble does not hold up the others.
                    Err(e) => {
                        eprintln!("kubelet: pod {ns}/{name}: {e:#}");
                        continue;
                    }
                }
            }
            if let Some(run) = self.runs.get_mut(uid) {
                // Before any restart: a restarted container sees the pod's
                // current downward-API files, as with a real kubelet.
                let sandbox = Sandbox {
                    client: &self.client,
                    pod,
                    ip: run.ip,
                    dir: &run.dir,
                    node: &self.config.node,
                    apiserver_port: self.config.apiserver_port,
                    images: &self.config.images,
                };
                if let Err(e) = sandbox.refresh_downward_api_volumes() {
                    eprintln!("kubelet: pod {ns}/{name}: {e:#}");
                }
                run.sync(&self.pgids);
            }
        }

        // Probes due now, all at once.
        let now = Instant::now();
        let mut results = Vec::new();
        {
            let mut checks = Vec::new();
            for (uid, run) in &self.runs {
                for (i, which, probe) in run.due_probes(now) {
                    let (uid, ip) = (uid.clone(), run.ip);
                    checks.push(async move { (uid, i, which, probe.run(ip).await) });
                }
            }
            results.extend(futures::future::join_all(checks).await);
        }
        for (uid, i, which, ok) in results {
            if let Some(run) = self.runs.get_mut(&uid) {
                run.probed(i, which, ok);
            }
        }

        let mut reports = Vec::new();
        for run in self.runs.values_mut() {
            let status = run.status();
            if run.reported.as_ref() != Some(&status) {
                reports.push((
                    run.uid.clone(),
                    run.namespace.clone(),
                    run.name.clone(),
                    status,
                ));
            }
        }
        for (uid, ns, name, status) in reports {
            // A failed report is tried again next pass; said once per error.
            match self.report(&ns, &name, &status).await {
                Ok(()) => {
                    self.errors.remove(&uid);
                    if let Some(run) = self.runs.get_mut(&uid) {
                        run.reported = Some(status);
                    }
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    if self.errors.get(&uid) != Some(&e) {
                        eprintln!("kubelet: {e}");
                        self.errors.insert(uid, e);
                    }
                }
            }
        }
        Ok(())
    }
}

/// `<dir>/pods/<uid>` of a pod, for tests that read what the kubelet wrote.
pub fn pod_dir(dir: &Path, uid: &str) -> PathBuf {
    dir.join("pods").join(uid)
}
