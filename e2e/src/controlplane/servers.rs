//! etcd, kube-apiserver and kube-controller-manager as local processes on
//! loopback, started in that order, each waited for with a bounded timeout,
//! and stopped in reverse order when [`ControlPlane`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::certs::{self, Certs};
use super::process::{free_port, tail, Process};

const ETCD_READY: Duration = Duration::from_secs(60);
/// A cold kube-apiserver on a loaded 2-core machine installs its
/// post-start hooks (RBAC bootstrap, priority classes) in ~10-30 s.
const APISERVER_READY: Duration = Duration::from_secs(180);
const CONTROLLERS_READY: Duration = Duration::from_secs(180);

/// The controllers the operator and the process kubelet rely on are all in
/// `*` (garbage collector, namespace, PV binder, PV/PVC protection,
/// disruption, endpoints, endpointslice, serviceaccount and its tokens,
/// root-ca publisher, deployment and replicaset for the chart): removed are
/// the ones that need a cloud provider, node CIDRs or a kubelet's volume
/// attachments, and node lifecycle (the process kubelet owns its Node).
const CONTROLLERS: &str = "*,-node-lifecycle-controller,-persistentvolume-attach-detach-controller,\
-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller,-node-ipam-controller";

/// Paths and ports of a running control plane.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub certs: Certs,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    pub port: u16,
    /// Admin (system:masters) kubeconfig, for kubectl, helm and the tests.
    pub kubeconfig: PathBuf,
    /// Reported by kube-apiserver's /version.
    pub version: String,
    // Dropped in this order: controllers, API server, etcd.
    kcm: Option<Process>,
    apiserver: Option<Process>,
    etcd: Option<Process>,
}

fn kubeconfig_text(server: &str, c: &Certs) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    \
         client-key: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: admin\n\
         current-context: e2e\n",
        c.ca.display(),
        c.admin_cert.display(),
        c.admin_key.display()
    )
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `up` every 200 ms until it holds, failing after `within` or as soon
/// as `process` exits (with its log's last lines).
async fn wait_up<F, Fut>(
    what: &str,
    within: Duration,
    mut process: Option<&mut Process>,
    mut up: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = process.as_mut() {
            p.check_running()?;
        }
        if up().await {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not reached within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl ControlPlane {
    /// Starts the three servers from the binaries in `bin`, with all state
    /// (data, certificates, logs) under `dir`.
    pub async fn start(bin: &Path, dir: &Path) -> anyhow::Result<ControlPlane> {
        let certs = certs::write(&dir.join("pki"))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let (etcd_port, peer_port, port) = (free_port()?, free_port()?, free_port()?);
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(&server, &certs))?;
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            certs,
            server,
            port,
            kubeconfig,
            version: String::new(),
            kcm: None,
            apiserver: None,
            etcd: None,
        };

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--name=e2e")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        cp.etcd = Some(Process::spawn("etcd", etcd, &logs.join("etcd.log"))?);
        let etcd_addr = format!("127.0.0.1:{etcd_port}");
        let etcd_up = || async { tokio::net::TcpStream::connect(&etcd_addr).await.is_ok() };
        wait_up(
            "etcd accepting connections",
            ETCD_READY,
            cp.etcd.as_mut(),
            etcd_up,
        )
        .await?;

        let c = &cp.certs;
        let sa_key = c.service_account_key.display().to_string();
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", c.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                c.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", c.ca.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                c.service_account_pub.display()
            ))
            .arg(format!("--service-account-signing-key-file={sa_key}"))
            .arg("--allow-privileged=true")
            // 127.0.0.1 cannot be an endpoint of the `kubernetes` Service.
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            .arg("--v=1");
        cp.apiserver = Some(Process::spawn(
            "kube-apiserver",
            api,
            &logs.join("kube-apiserver.log"),
        )?);
        let client = client_from(&cp.kubeconfig).await?;
        let ready = || async {
            let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
                return false;
            };
            matches!(client.request_text(req).await, Ok(body) if body.trim() == "ok")
        };
        wait_up(
            "kube-apiserver /readyz",
            APISERVER_READY,
            cp.apiserver.as_mut(),
            ready,
        )
        .await?;
        cp.version = client.apiserver_version().await?.git_version;

        let mut kcm = Command::new(bin.join("kube-controller-manager"));
        kcm.arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .arg(format!("--service-account-private-key-file={sa_key}"))
            .arg(format!("--root-ca-file={}", c.ca.display()))
            .arg("--use-service-account-credentials=true")
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--enable-hostpath-provisioner=true")
            .arg("--leader-elect=false")
            // Not served: readiness is read from what the controllers made.
            .arg("--secure-port=0")
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=1");
        cp.kcm = Some(Process::spawn(
            "kube-controller-manager",
            kcm,
            &logs.join("kube-controller-manager.log"),
        )?);
        // The serviceaccount and root-ca-cert-publisher controllers are
        // running once the default namespace has both.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let running = || async {
            let sa = sas.get_opt("default").await.ok().flatten();
            let ca = cms.get_opt("kube-root-ca.crt").await.ok().flatten();
            sa.is_some() && ca.is_some()
        };
        let what = "kube-controller-manager's controllers";
        wait_up(what, CONTROLLERS_READY, cp.kcm.as_mut(), running).await?;
        Ok(cp)
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from(&self.kubeconfig).await
    }

    /// Fails when a server has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for p in [&mut self.etcd, &mut self.apiserver, &mut self.kcm]
            .into_iter()
            .flatten()
        {
            p.check_running()?;
        }
        Ok(())
    }

    /// The last lines of each server's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in [&self.etcd, &self.apiserver, &self.kcm]
            .into_iter()
            .flatten()
        {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                p.log().display(),
                tail(p.log(), lines)
            ));
        }
        out
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for p in [&mut self.kcm, &mut self.apiserver, &mut self.etcd] {
            if let Some(mut p) = p.take() {
                p.stop(Duration::from_secs(10));
            }
        }
    }
}
