//! Logs go through `tracing` to stderr, filtered by `RAFTLANE_LOG` (default
//! `info`); raft-rs's own slog records are bridged into the same stream.
//! Colours only on a terminal: a container log, a file or a pod's termination
//! message must not carry escape codes.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("RAFTLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
