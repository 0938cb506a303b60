//! raft-node's command line. Every flag also reads `RAFTLANE_<FLAG>`; a bad value
//! is refused at startup with a message naming the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use raftlane_tls::limits;

use crate::transport::grpc::LaneMode;
use crate::transport::snapshot::{self, SnapshotLimits};
use crate::transport::validate_peer_addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportMode {
    Stream,
    Unary,
}

/// A replicated key-value member of a raftlane cluster.
#[derive(Parser, Debug, Clone)]
#[command(name = "raft-node", version)]
pub struct NodeConfig {
    /// This member's raft id (1 or more; the operator uses ordinal + 1).
    #[arg(long, env = "RAFTLANE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Cluster identity; peers with another cluster id are refused.
    #[arg(long, env = "RAFTLANE_CLUSTER_ID", value_parser = non_empty)]
    pub cluster_id: String,
    /// Where the raft log and snapshots live.
    #[arg(long, env = "RAFTLANE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Listen address of the peer transport. Port 0 binds a port the OS picks
    /// (see --addrs-file).
    #[arg(long, env = "RAFTLANE_PEER_ADDR")]
    pub peer_addr: SocketAddr,
    /// The peer address others should use, when it differs from --peer-addr
    /// (e.g. listening on 0.0.0.0); never port 0. Defaults to the address the
    /// peer port is bound to.
    #[arg(long, env = "RAFTLANE_ADVERTISE_ADDR", value_parser = peer_addr)]
    pub advertise_addr: Option<String>,
    /// Listen address of the key-value API (port 0: one the OS picks).
    #[arg(long, env = "RAFTLANE_CLIENT_ADDR")]
    pub client_addr: SocketAddr,
    /// Listen address of the admin API (port 0: one the OS picks).
    #[arg(long, env = "RAFTLANE_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
    /// Listen address of /metrics, /healthz and /readyz (port 0: one the OS picks).
    #[arg(long, env = "RAFTLANE_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Once every port is bound, and before any is served, the bound addresses
    /// are written here as JSON, {"peer", "client", "admin", "metrics"}
    /// (whole: a temporary file in the same folder, fsynced, renamed in).
    /// How whoever started this member learns ports it asked for as port 0.
    #[arg(long, env = "RAFTLANE_ADDRS_FILE")]
    pub addrs_file: Option<PathBuf>,
    /// Voters of a new cluster (bootstraps only an empty data dir). Without it the
    /// member starts empty and waits to be added as a learner.
    #[arg(long, env = "RAFTLANE_INITIAL_VOTERS", value_delimiter = ',',
          value_parser = clap::value_parser!(u64).range(1..))]
    pub initial_voters: Vec<u64>,
    /// Known peer addresses, ID=HOST:PORT; more arrive through UpsertPeers.
    #[arg(long, env = "RAFTLANE_PEERS", value_delimiter = ',', value_parser = peer_entry)]
    pub peers: Vec<(u64, String)>,
    /// Applied entries between snapshots (and log compactions).
    #[arg(long, env = "RAFTLANE_SNAPSHOT_ENTRIES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_entries: u64,
    /// A learner is promoted only when it matched within this many entries of
    /// the leader's last index (and was heard from within an election timeout).
    #[arg(long, env = "RAFTLANE_MAX_PROMOTE_LAG", default_value_t = 1_000)]
    pub max_promote_lag: u64,
    /// Raft tick length in milliseconds.
    #[arg(long, env = "RAFTLANE_TICK_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub tick_ms: u64,
    /// Ticks without a leader before an election.
    #[arg(long, env = "RAFTLANE_ELECTION_TICKS", default_value_t = 10)]
    pub election_ticks: usize,
    /// Ticks between leader heartbeats; must be below --election-ticks.
    #[arg(long, env = "RAFTLANE_HEARTBEAT_TICKS", default_value_t = 2)]
    pub heartbeat_ticks: usize,
    /// Append messages in flight per follower.
    #[arg(long, env = "RAFTLANE_MAX_INFLIGHT", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_inflight: u64,
    /// Lanes per peer: 4 isolated lanes, or 1 multiplexed lane (for comparison).
    #[arg(long, env = "RAFTLANE_LANES", value_enum, default_value = "4")]
    pub lanes: LaneMode,
    /// Peer transport: long-lived streams (falling back to unary per peer), or
    /// unary calls only (for comparison).
    #[arg(long, env = "RAFTLANE_TRANSPORT", value_enum, default_value = "stream")]
    pub transport: TransportMode,
    /// Most raft messages packed into one envelope when a lane has a backlog.
    #[arg(long, env = "RAFTLANE_MAX_BATCH_MESSAGES", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_batch_messages: u64,
    /// Deadline of a client request, milliseconds.
    #[arg(long, env = "RAFTLANE_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Deadline of one peer send, milliseconds; past it the peer is reported unreachable.
    #[arg(long, env = "RAFTLANE_SEND_TIMEOUT_MS", default_value_t = 5_000)]
    pub send_timeout_ms: u64,
    /// Connect timeout to a peer, milliseconds.
    #[arg(long, env = "RAFTLANE_CONNECT_TIMEOUT_MS", default_value_t = 3_000)]
    pub connect_timeout_ms: u64,
    /// Refuse to start when the data dir holds no raft state, exiting with code
    /// 66. For a member whose data has held state: a wiped volume must not
    /// rejoin empty under its old id (it could vote for a leader missing
    /// committed entries); the operator replaces the member.
    #[arg(long, env = "RAFTLANE_EXPECT_STATE")]
    pub expect_state: bool,
    /// As --expect-state when this file reads `true` at startup. A fact that
    /// changes after the process was configured (on Kubernetes, the pod's
    /// `raftlane.io/holds-state` annotation through a downward-API volume) so
    /// that every restart, however it comes, sees the current answer. A
    /// missing or unreadable file refuses the start.
    #[arg(long, env = "RAFTLANE_EXPECT_STATE_FILE")]
    pub expect_state_file: Option<PathBuf>,
    /// A file outside the data dir that raft-node writes (fsynced) once its
    /// data dir first holds raft state, and that makes every later start
    /// expect state (as --expect-state) while it exists. It closes the window
    /// before anyone else has recorded that this member holds state: put it
    /// where a wipe of the data cannot reach (on Kubernetes an emptyDir of the
    /// pod, which outlives container restarts and node reboots; locally a
    /// file beside the data dir).
    #[arg(long, env = "RAFTLANE_STATE_MARKER")]
    pub state_marker: Option<PathBuf>,
    /// Largest snapshot accepted from a peer, bytes; never more than the data
    /// volume has free.
    #[arg(long, env = "RAFTLANE_MAX_SNAPSHOT_BYTES",
          default_value_t = snapshot::DEFAULT_MAX_SNAPSHOT_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_snapshot_bytes: u64,
    /// A snapshot receive with no chunk for this long is abandoned, milliseconds.
    #[arg(long, env = "RAFTLANE_SNAPSHOT_IDLE_TIMEOUT_MS",
          default_value_t = snapshot::DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_idle_timeout_ms: u64,
    /// Least time a whole snapshot receive may take, milliseconds; a big one
    /// gets a second per MiB if that is longer. Past it the receive is abandoned.
    #[arg(long, env = "RAFTLANE_SNAPSHOT_TIMEOUT_MS",
          default_value_t = snapshot::MIN_SNAPSHOT_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_timeout_ms: u64,
    /// A new cluster starts from this backup (`raftctl backup --out FILE`)
    /// instead of empty: with --initial-voters on an empty data dir, every
    /// initial voter given the same file starts from the same state. Refused
    /// when the data dir already holds state (the cluster formed).
    #[arg(long, env = "RAFTLANE_RESTORE_FROM", requires = "initial_voters")]
    pub restore_from: Option<PathBuf>,
    /// This member's certificate (PEM, the chain first), naming it
    /// `raftlane://<cluster-id>/member/<id>` in a URI SAN. Every port serves it;
    /// re-read when the file changes.
    #[arg(long, env = "RAFTLANE_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "RAFTLANE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA bundle (PEM; old and new CA while one is rotated).
    #[arg(long, env = "RAFTLANE_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Let clients without a certificate use the client port (TLS still
    /// encrypts): anyone who reaches the port can then read and write every
    /// key. Without it every port requires a certificate of this cluster.
    #[arg(
        long,
        env = "RAFTLANE_INSECURE_ANONYMOUS_CLIENTS",
        requires = "tls_cert"
    )]
    pub insecure_anonymous_clients: bool,
    /// Connections the peer port holds open at once; more are closed on accept.
    /// Each member dials each peer once per address (lanes share it).
    #[arg(long, env = "RAFTLANE_PEER_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub peer_max_connections: u32,
    /// Connections the client port holds open at once.
    #[arg(long, env = "RAFTLANE_CLIENT_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub client_max_connections: u32,
    /// Connections the admin port holds open at once.
    #[arg(long, env = "RAFTLANE_ADMIN_MAX_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_max_connections: u32,
    /// Connections the metrics port holds open at once.
    #[arg(long, env = "RAFTLANE_METRICS_MAX_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub metrics_max_connections: u32,
    /// TLS handshakes in progress per port; more connections are closed on accept.
    #[arg(long, env = "RAFTLANE_MAX_HANDSHAKES", default_value_t = limits::DEFAULT_MAX_HANDSHAKES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: u32,
    /// A TLS handshake not done within this is dropped, milliseconds.
    #[arg(long, env = "RAFTLANE_HANDSHAKE_TIMEOUT_MS",
          default_value_t = limits::DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout_ms: u64,
    /// A connection nothing was read from for this long is closed, milliseconds
    /// (peers ping every 10 s, so only dead or silent ones go).
    #[arg(long, env = "RAFTLANE_IDLE_TIMEOUT_MS",
          default_value_t = limits::DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Connections older than this are asked to close (GOAWAY; 30 s for open
    /// calls to finish), so a rotated certificate is in use on every
    /// connection within it; milliseconds.
    #[arg(long, env = "RAFTLANE_MAX_CONNECTION_AGE_MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connection_age_ms: u64,
    /// Concurrent calls (HTTP/2 streams) per connection on the client port.
    #[arg(long, env = "RAFTLANE_CLIENT_MAX_STREAMS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub client_max_streams: u32,
    /// Bytes of unfinished requests the client port holds across all its
    /// connections; a call whose bytes do not fit ends RESOURCE_EXHAUSTED.
    #[arg(long, env = "RAFTLANE_CLIENT_BUDGET_BYTES", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range(8 << 20..))]
    pub client_budget_bytes: u64,
    /// As --client-budget-bytes, for the peer port (at least twice the
    /// largest envelope, 16 MiB).
    #[arg(long, env = "RAFTLANE_PEER_BUDGET_BYTES", default_value_t = 128 << 20,
          value_parser = clap::value_parser!(u64).range(32 << 20..))]
    pub peer_budget_bytes: u64,
    /// How often the TLS files are checked for changes, milliseconds.
    #[arg(long, env = "RAFTLANE_TLS_RELOAD_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub tls_reload_ms: u64,
    /// Serve every port without TLS or authentication: any process that
    /// reaches a port can read and change the cluster. For benchmarks and
    /// isolated test networks only; without it the --tls-* flags are required.
    #[arg(long, env = "RAFTLANE_INSECURE_PLAINTEXT", conflicts_with = "tls_cert")]
    pub insecure_plaintext: bool,
}

/// The exit code of `--expect-state` on an empty data dir (stated in its help):
/// runtimes read it from the exited process or container as "volume wiped".
pub const EXPECT_STATE_EXIT_CODE: i32 = 66;

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

fn peer_addr(s: &str) -> Result<String, String> {
    validate_peer_addr(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn peer_entry(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=HOST:PORT, got {s:?}"))?;
    let id: u64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("member id {id:?} is not a number of 1 or more"))?;
    Ok((id, peer_addr(addr)?))
}

impl NodeConfig {
    /// Every flag at its default, ids and addresses placeholders: for tools
    /// and tests that serve a port the way raft-node does.
    pub fn defaults() -> NodeConfig {
        NodeConfig::parse_from([
            "raft-node",
            "--id=1",
            "--cluster-id=defaults",
            "--data-dir=/nonexistent",
            "--peer-addr=127.0.0.1:0",
            "--client-addr=127.0.0.1:0",
            "--admin-addr=127.0.0.1:0",
            "--metrics-addr=127.0.0.1:0",
            "--insecure-plaintext",
        ])
    }

    /// Checks that span several flags; the message names them.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(format!(
                "--heartbeat-ticks ({}) must be at least 1 and below --election-ticks ({})",
                self.heartbeat_ticks, self.election_ticks
            ));
        }
        if !self.initial_voters.is_empty() && !self.initial_voters.contains(&self.id) {
            return Err(format!(
                "--initial-voters ({:?}) must include this member's --id ({})",
                self.initial_voters, self.id
            ));
        }
        if self.tls_cert.is_none() && !self.insecure_plaintext {
            return Err("TLS is required: give --tls-cert, --tls-key and --tls-ca \
                 (or --insecure-plaintext to serve every port unauthenticated)"
                .into());
        }
        let addrs = [
            ("--peer-addr", self.peer_addr),
            ("--client-addr", self.client_addr),
            ("--admin-addr", self.admin_addr),
            ("--metrics-addr", self.metrics_addr),
        ];
        for (i, (a, x)) in addrs.iter().enumerate() {
            for (b, y) in &addrs[i + 1..] {
                if x == y && x.port() != 0 {
                    return Err(format!("{a} and {b} are both {x}"));
                }
            }
        }
        if let Some(p) = &self.addrs_file {
            if p.file_name().is_none() || p.as_os_str().to_string_lossy().ends_with('/') {
                return Err(format!("--addrs-file {}: not a file path", p.display()));
            }
        }
        Ok(())
    }

    /// The peer address others should use: --advertise-addr, else `bound`,
    /// the address the peer port was bound to (its real port when
    /// --peer-addr asked for port 0).
    pub fn advertise(&self, bound: SocketAddr) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| bound.to_string())
    }

    /// Whether this start must find raft state in the data dir: `--expect-state`,
    /// an existing `--state-marker`, or `--expect-state-file` reading `true`
    /// (surrounding white space ignored).
    pub fn expects_state(&self) -> anyhow::Result<bool> {
        if self.expect_state {
            return Ok(true);
        }
        if let Some(marker) = &self.state_marker {
            match std::fs::metadata(marker) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("--state-marker {}: cannot read: {e}", marker.display()),
            }
        }
        let Some(path) = &self.expect_state_file else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("--expect-state-file {}: cannot read: {e}", path.display())
        })?;
        match text.trim() {
            "true" => Ok(true),
            "" | "false" => Ok(false),
            other => anyhow::bail!(
                "--expect-state-file {}: reads {other:?}, expected `true`, `false` or nothing",
                path.display()
            ),
        }
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// What the peer receiver accepts in snapshots.
    pub fn snapshot_limits(&self) -> SnapshotLimits {
        SnapshotLimits {
            max_bytes: self.max_snapshot_bytes,
            idle: Self::ms(self.snapshot_idle_timeout_ms),
            min_total: Self::ms(self.snapshot_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[&str] = &[
        "raft-node",
        "--id",
        "1",
        "--cluster-id",
        "c",
        "--data-dir",
        "/tmp/x",
        "--peer-addr",
        "127.0.0.1:1",
        "--client-addr",
        "127.0.0.1:2",
        "--admin-addr",
        "127.0.0.1:3",
        "--metrics-addr",
        "127.0.0.1:4",
        "--insecure-plaintext",
    ];

    fn parse(extra: &[&str]) -> Result<NodeConfig, String> {
        let args: Vec<&str> = BASE.iter().chain(extra).copied().collect();
        let cfg = NodeConfig::try_parse_from(args).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn parses_peers_and_voters() {
        let c = parse(&[
            "--initial-voters",
            "1,2,3",
            "--peers",
            "2=127.0.0.2:7000,3=raft-2.svc:7000",
        ])
        .unwrap();
        assert_eq!(c.initial_voters, vec![1, 2, 3]);
        assert_eq!(c.peers[1], (3, "raft-2.svc:7000".to_string()));
        assert_eq!(c.snapshot_entries, 10_000);
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (extra, flag) in [
            (&["--peers", "2=nowhere"][..], "--peers"),
            (&["--peers", "x=127.0.0.1:1"][..], "--peers"),
            (&["--initial-voters", "1,0"][..], "--initial-voters"),
            (&["--initial-voters", "2,3"][..], "--initial-voters"),
            (&["--heartbeat-ticks", "10"][..], "--heartbeat-ticks"),
            (&["--snapshot-entries", "0"][..], "--snapshot-entries"),
            (&["--admin-addr", "127.0.0.1:2"][..], "--client-addr"),
            (&["--lanes", "3"][..], "--lanes"),
            (&["--transport", "udp"][..], "--transport"),
            (&["--advertise-addr", "127.0.0.1:0"][..], "--advertise-addr"),
            (&["--addrs-file", "/tmp/"][..], "--addrs-file"),
            (&["--addrs-file", ""][..], "--addrs-file"),
        ] {
            let err = parse(extra).unwrap_err();
            assert!(err.contains(flag), "{extra:?}: {err}");
        }
        let err = NodeConfig::try_parse_from(["raft-node", "--id", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--id"), "{err}");
    }

    #[test]
    fn listen_addresses_may_ask_for_port_0_and_the_bound_peer_address_is_advertised() {
        let args = BASE
            .iter()
            .map(|a| match a.strip_prefix("127.0.0.1:") {
                Some(_) => "127.0.0.1:0",
                None => a,
            })
            .chain(["--addrs-file", "/tmp/x.addrs"]);
        let c = NodeConfig::try_parse_from(args).unwrap();
        c.validate().expect("every port may be 0");
        assert_eq!(
            c.addrs_file.as_deref(),
            Some(std::path::Path::new("/tmp/x.addrs"))
        );
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(c.advertise(bound), "127.0.0.1:4242");
        let c = parse(&["--advertise-addr", "m-1.svc:7000"]).unwrap();
        assert_eq!(c.advertise(bound), "m-1.svc:7000");
        let cmd = <NodeConfig as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("addrs-file"))
            .unwrap();
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("RAFTLANE_ADDRS_FILE")
        );
    }

    #[test]
    fn tls_is_required_unless_plaintext_is_chosen_and_its_flags_go_together() {
        let base: Vec<&str> = BASE
            .iter()
            .copied()
            .filter(|a| *a != "--insecure-plaintext")
            .collect();
        let cfg = NodeConfig::try_parse_from(&base).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(
            err.contains("--tls-cert") && err.contains("--insecure-plaintext"),
            "{err}"
        );
        let with = |extra: &[&str]| {
            NodeConfig::try_parse_from(base.iter().chain(extra))
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|_| c))
        };
        let err = with(&["--tls-cert", "/c"]).unwrap_err();
        assert!(
            err.contains("--tls-key") && err.contains("--tls-ca"),
            "{err}"
        );
        let err = with(&[
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
            "--tls-ca",
            "/a",
            "--insecure-plaintext",
        ])
        .unwrap_err();
        assert!(err.contains("--insecure-plaintext"), "{err}");
        let c = with(&["--tls-cert", "/c", "--tls-key", "/k", "--tls-ca", "/a"]).unwrap();
        assert_eq!(c.tls_ca.as_deref(), Some(std::path::Path::new("/a")));
        assert!(!c.insecure_anonymous_clients);
    }

    #[test]
    fn expect_state_is_off_unless_given_and_its_help_states_the_exit_code() {
        assert!(!parse(&[]).unwrap().expect_state);
        assert!(parse(&["--expect-state"]).unwrap().expect_state);
        let cmd = <NodeConfig as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some("expect-state"))
            .unwrap();
        let help = arg.get_help().unwrap().to_string();
        assert!(
            help.contains(&format!("code {EXPECT_STATE_EXIT_CODE}")),
            "{help}"
        );
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("RAFTLANE_EXPECT_STATE")
        );
    }

    #[test]
    fn snapshot_limits_default_to_8_gib_30_s_idle_and_600_s_total() {
        assert_eq!(
            parse(&[]).unwrap().snapshot_limits(),
            SnapshotLimits::default()
        );
        assert_eq!(SnapshotLimits::default().max_bytes, 8 << 30);
        let c = parse(&[
            "--max-snapshot-bytes",
            "1000",
            "--snapshot-idle-timeout-ms",
            "500",
            "--snapshot-timeout-ms",
            "2000",
        ])
        .unwrap();
        assert_eq!(
            c.snapshot_limits(),
            SnapshotLimits {
                max_bytes: 1000,
                idle: Duration::from_millis(500),
                min_total: Duration::from_secs(2),
            }
        );
        let cmd = <NodeConfig as clap::CommandFactory>::command();
        for (flag, env) in [
            ("--max-snapshot-bytes", "RAFTLANE_MAX_SNAPSHOT_BYTES"),
            (
                "--snapshot-idle-timeout-ms",
                "RAFTLANE_SNAPSHOT_IDLE_TIMEOUT_MS",
            ),
            ("--snapshot-timeout-ms", "RAFTLANE_SNAPSHOT_TIMEOUT_MS"),
        ] {
            let err = parse(&[flag, "0"]).unwrap_err();
            assert!(err.contains(flag) && err.contains('0'), "{err}");
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == flag.strip_prefix("--"))
                .unwrap();
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env));
        }
    }
}
