//! raft-operator: reconciles `RaftCluster` resources into raft-node members.

pub mod crd;
pub mod plan;
