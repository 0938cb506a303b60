use clap::Parser;
use raft_node::config::NodeConfig;

#[tokio::main]
async fn main() {
    raft_node::logging::init();
    let cfg = NodeConfig::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = raft_node::node::run(cfg).await {
        eprintln!("raft-node: {e:#}");
        std::process::exit(1);
    }
}
