//! raft-operator: reconciles `RaftCluster` resources into raft-node members.

pub mod backup;
pub mod certs;
pub mod crd;
pub mod k8s;
pub mod local;
pub mod local_backups;
pub mod naming;
pub mod plan;
pub mod reconcile;
pub mod revision;
pub mod runtime;
pub mod status;
