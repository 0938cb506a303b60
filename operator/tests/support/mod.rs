//! Test doubles of the Kubernetes adapter tests: a fake API server (the one
//! part that cannot run here) and real raft-node members.

pub mod fake_api;
pub mod members;
pub mod rbac;
