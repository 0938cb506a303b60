//! raft-operator: reconciles `RaftCluster` resources into raft-node members.
//! The reconciler lands with the operator-core work; until then this binary only
//! says so, so that scripts calling it fail loudly instead of silently.

fn main() {
    eprintln!("raft-operator: the reconciler is not built yet (see the project issues)");
    std::process::exit(2);
}
