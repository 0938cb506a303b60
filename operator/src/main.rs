//! raft-operator: `run` is the Kubernetes controller (in-cluster or from a
//! kubeconfig); `local` reconciles a cluster of local processes from a
//! manifest (the embedded default); `crdgen` writes the CRD; `validate` checks
//! manifests offline; `uninstall-check` is the chart's pre-delete hook.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use raft_operator::local::{self, LocalOptions};

#[derive(Parser)]
#[command(
    name = "raft-operator",
    version,
    about = "Reconciles RaftCluster resources into raft-node members"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax, e.g. `info` or `raft_operator=debug`).
    #[arg(long, env = "RAFTLANE_LOG", default_value = "warn", global = true)]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct LocalArgs {
    /// The RaftCluster manifest (required); edits to it (replicas) are applied.
    #[arg(short = 'f', long = "file", env = "RAFTLANE_MANIFEST")]
    file: Option<PathBuf>,
    /// Where members keep data, logs, status.yaml and endpoints.
    #[arg(long, env = "RAFTLANE_STATE_DIR", default_value = ".raftlane")]
    state_dir: PathBuf,
    /// The raft-node binary (default: next to this one).
    #[arg(long, env = "RAFTLANE_NODE_BIN")]
    node_bin: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Namespace whose RaftClusters are reconciled (default: the operator's own).
    #[arg(
        long,
        env = "RAFTLANE_WATCH_NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    namespace: Option<String>,
    /// Reconcile RaftClusters in every namespace (needs the cluster-wide RBAC).
    #[arg(long, env = "RAFTLANE_ALL_NAMESPACES")]
    all_namespaces: bool,
    /// Listen address of /metrics, /healthz and /readyz.
    #[arg(long, env = "RAFTLANE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Take a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "RAFTLANE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespaces (comma-separated) whose RaftClusters get a NetworkPolicy
    /// admitting the peer port only from their own members: those where the
    /// chart's members policy covers the other ports (the chart sets it).
    /// None by default: that policy alone would close them.
    #[arg(
        long,
        env = "RAFTLANE_NETWORK_POLICY_NAMESPACES",
        value_delimiter = ','
    )]
    network_policy_namespaces: Option<Vec<String>>,
    #[arg(long, env = "RAFTLANE_LEASE_NAME", default_value = "raft-operator")]
    lease_name: String,
    /// This replica's identity in the Lease and in events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The operator's own namespace (Lease, default watch namespace).
    #[arg(
        long = "pod-namespace",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    pod_namespace: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller on Kubernetes until SIGTERM.
    Run(RunArgs),
    /// Run the cluster of a manifest as local processes until Ctrl-C.
    Local(LocalCmd),
    /// Print the CRDs (RaftCluster, RaftClusterBackup) as YAML, or write
    /// them into --out-dir as raftcluster.yaml and raftclusterbackup.yaml.
    Crdgen {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Check RaftCluster manifests against the CRD's schema and rules.
    Validate { files: Vec<PathBuf> },
    /// Exit 1, naming them, while RaftClusters exist in the watched scope:
    /// the chart runs it before an uninstall, since a RaftCluster deleted
    /// without an operator stays stuck on its finalizer.
    UninstallCheck {
        /// Namespace whose RaftClusters count (default: every namespace).
        #[arg(long, env = "RAFTLANE_WATCH_NAMESPACE")]
        namespace: Option<String>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct LocalCmd {
    #[command(flatten)]
    args: LocalArgs,
    #[command(subcommand)]
    action: Option<LocalAction>,
}

#[derive(Subcommand)]
enum LocalAction {
    /// Stop the members of a cluster left running.
    Down(LocalArgs),
}

fn options(a: LocalArgs) -> anyhow::Result<LocalOptions> {
    let node_bin = match a.node_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("raft-node"),
    };
    Ok(LocalOptions {
        file: a
            .file
            .ok_or_else(|| anyhow::anyhow!("-f/--file <MANIFEST> is required"))?,
        state_dir: a.state_dir,
        node_bin,
    })
}

fn run_options(a: RunArgs) -> raft_operator::k8s::RunOptions {
    let identity = a.identity.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("raft-operator-{}", std::process::id()))
    });
    raft_operator::k8s::RunOptions {
        namespace: if a.all_namespaces {
            None
        } else {
            Some(a.namespace.unwrap_or_else(|| a.pod_namespace.clone()))
        },
        metrics_addr: a.metrics_addr,
        leader_election: a.leader_election,
        network_policies: a
            .network_policy_namespaces
            .map(|n| n.into_iter().filter(|s| !s.is_empty()).collect()),
        lease_name: a.lease_name,
        lease_namespace: a.pod_namespace,
        identity,
    }
}

fn crdgen(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let crds = [
        ("raftcluster.yaml", raft_operator::crd::crd_yaml()),
        ("raftclusterbackup.yaml", raft_operator::backup::crd_yaml()),
    ];
    for (file, yaml) in crds {
        match &out_dir {
            Some(dir) => std::fs::write(dir.join(file), yaml)
                .map_err(|e| anyhow::anyhow!("--out-dir {}: {e}", dir.display()))?,
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

fn validate(files: Vec<PathBuf>) -> anyhow::Result<()> {
    let mut bad = 0;
    for f in &files {
        let result = std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| raft_operator::crd::parse_manifest(&t));
        match result {
            Ok((c, backups)) => println!(
                "{}: ok ({} replicas, {} backups)",
                f.display(),
                c.spec.replicas,
                backups.len()
            ),
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                bad += 1;
            }
        }
    }
    anyhow::ensure!(bad == 0, "{bad} of {} manifests are invalid", files.len());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log {:?}: {e}", cli.log);
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes only on a terminal, never in a container's log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.cmd {
        Cmd::Run(args) => raft_operator::k8s::run(run_options(args)).await,
        Cmd::Local(LocalCmd { args, action: None }) => match options(args) {
            Ok(o) => local::run(o).await,
            Err(e) => Err(e),
        },
        Cmd::Local(LocalCmd {
            action: Some(LocalAction::Down(args)),
            ..
        }) => options(args).and_then(|o| local::down(&o)),
        Cmd::Crdgen { out_dir } => crdgen(out_dir),
        Cmd::Validate { files } => validate(files),
        Cmd::UninstallCheck { namespace } => {
            raft_operator::k8s::uninstall_check::run(namespace.as_deref()).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
