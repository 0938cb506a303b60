//! raft-operator: `crdgen` writes the CRD; the reconcilers (`local`, `run`)
//! are being built (see the project issues) and say so instead of pretending.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "raft-operator",
    version,
    about = "Reconciles RaftCluster resources into raft-node members"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the RaftCluster CRD as YAML, or write it to --out.
    Crdgen {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check RaftCluster manifests against the CRD's schema and rules.
    Validate { files: Vec<PathBuf> },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Crdgen { out } => {
            let yaml = raft_operator::crd::crd_yaml();
            match out {
                Some(path) => {
                    if let Err(e) = std::fs::write(&path, yaml) {
                        eprintln!("error: --out {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                None => print!("{yaml}"),
            }
            ExitCode::SUCCESS
        }
        Cmd::Validate { files } => {
            let mut ok = true;
            for f in files {
                let text = match std::fs::read_to_string(&f) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        ok = false;
                        continue;
                    }
                };
                match raft_operator::crd::parse_cluster(&text) {
                    Ok(c) => println!("{}: ok ({} replicas)", f.display(), c.spec.replicas),
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
