//! raft-node's launch settings for one member, built in one place for every
//! runtime: the local runtime renders them as flags, the Kubernetes runtime as
//! the pod's environment (raft-node reads each flag `--x-y` from
//! `RAFTLANE_X_Y` too), so the two cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::RaftSettings;

/// One raft-node flag and its value; a switch has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The flag without its dashes, e.g. `peer-addr`.
    pub name: &'static str,
    pub value: Option<String>,
}

impl Setting {
    fn new(name: &'static str, value: impl ToString) -> Setting {
        Setting {
            name,
            value: Some(value.to_string()),
        }
    }

    fn switch(name: &'static str) -> Setting {
        Setting { name, value: None }
    }

    pub fn flag(&self) -> String {
        format!("--{}", self.name)
    }

    /// The environment variable raft-node reads when the flag is absent.
    pub fn env_name(&self) -> String {
        format!("RAFTLANE_{}", self.name.replace('-', "_").to_uppercase())
    }
}

/// Where a member listens, and the peer address it gives others when that is
/// not its listen address (listening on `[::]` in a pod). A port may be 0:
/// raft-node binds one the OS picks and reports it in [`Launch::addrs_file`]
/// (and advertises the bound peer address unless `advertise` is set).
pub struct Listen {
    pub peer: String,
    pub client: String,
    pub admin: String,
    pub metrics: String,
    pub advertise: Option<String>,
}

/// How a member's ports are secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS from these PEM files (re-read by raft-node when they change).
    Tls {
        cert: String,
        key: String,
        ca: String,
        /// The client port lets in clients without a certificate
        /// (`--insecure-anonymous-clients`).
        anonymous_clients: bool,
    },
    /// `--insecure-plaintext`: only when the spec says `tls.enabled: false`.
    Plaintext,
}

/// Whether a start of a member must find raft state in its data dir (else
/// raft-node exits with [`super::WIPED_EXIT_CODE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectState {
    /// Its storage is not known to have held state.
    No,
    /// It has: the runtime decides at every start (the local runtime starts
    /// every process itself).
    Yes,
    /// raft-node reads the answer from this file at every start. On
    /// Kubernetes the kubelet restarts containers on its own with the pod's
    /// fixed environment, so the answer comes from something that can change
    /// under a running pod (see `k8s::resources::member_pod`).
    File(String),
}

/// Everything one start of member `id` is given.
pub struct Launch<'a> {
    pub id: u64,
    pub cluster_id: &'a str,
    pub data_dir: String,
    pub listen: Listen,
    /// Other members' peer addresses (an entry for `id` itself is skipped).
    pub peers: &'a BTreeMap<u64, String>,
    /// Set only for the members that form a new cluster.
    pub initial_voters: Option<&'a BTreeSet<u64>>,
    /// Once the member's storage has held state, raft-node refuses an empty
    /// data dir (a wiped volume) instead of rejoining empty.
    pub expect_state: ExpectState,
    /// A file outside the data where raft-node records, as soon as its data
    /// first holds raft state, that it does; every later start finding it
    /// expects state (before any runtime has seen the member's state).
    pub state_marker: Option<String>,
    /// Where raft-node writes the addresses it bound, once it has (how ports
    /// asked for as 0 are learned): only the local runtime sets it.
    pub addrs_file: Option<String>,
    /// A backup file every initial voter of a new cluster bootstraps from
    /// (`spec.restore`); given only with `initial_voters`.
    pub restore_from: Option<String>,
    pub raft: &'a RaftSettings,
    pub transport: Transport,
}

impl Launch<'_> {
    pub fn settings(&self) -> Vec<Setting> {
        let l = &self.listen;
        let raft = self.raft;
        let mut out = vec![
            Setting::new("id", self.id),
            Setting::new("cluster-id", self.cluster_id),
            Setting::new("data-dir", &self.data_dir),
            Setting::new("peer-addr", &l.peer),
        ];
        if let Some(a) = &l.advertise {
            out.push(Setting::new("advertise-addr", a));
        }
        out.extend([
            Setting::new("client-addr", &l.client),
            Setting::new("admin-addr", &l.admin),
            Setting::new("metrics-addr", &l.metrics),
            Setting::new("tick-ms", raft.tick_ms),
            Setting::new("election-ticks", raft.election_ticks),
            Setting::new("heartbeat-ticks", raft.heartbeat_ticks),
            Setting::new("snapshot-entries", raft.snapshot_entries),
            Setting::new("lanes", raft.lanes),
        ]);
        let peers: Vec<String> = self
            .peers
            .iter()
            .filter(|(p, _)| **p != self.id)
            .map(|(p, a)| format!("{p}={a}"))
            .collect();
        // A one-member cluster has no peers, and an empty list is not a value.
        if !peers.is_empty() {
            out.push(Setting::new("peers", peers.join(",")));
        }
        if let Some(v) = self.initial_voters {
            let v: Vec<String> = v.iter().map(u64::to_string).collect();
            out.push(Setting::new("initial-voters", v.join(",")));
            if let Some(f) = &self.restore_from {
                out.push(Setting::new("restore-from", f));
            }
        }
        match &self.expect_state {
            ExpectState::No => {}
            ExpectState::Yes => out.push(Setting::switch("expect-state")),
            ExpectState::File(f) => out.push(Setting::new("expect-state-file", f)),
        }
        if let Some(f) = &self.state_marker {
            out.push(Setting::new("state-marker", f));
        }
        if let Some(f) = &self.addrs_file {
            out.push(Setting::new("addrs-file", f));
        }
        match &self.transport {
            Transport::Tls {
                cert,
                key,
                ca,
                anonymous_clients,
            } => {
                out.extend([
                    Setting::new("tls-cert", cert),
                    Setting::new("tls-key", key),
                    Setting::new("tls-ca", ca),
                ]);
                if *anonymous_clients {
                    out.push(Setting::switch("insecure-anonymous-clients"));
                }
            }
            Transport::Plaintext => out.push(Setting::switch("insecure-plaintext")),
        }
        out
    }

    /// The settings as a command line.
    pub fn args(&self) -> Vec<String> {
        self.settings()
            .into_iter()
            .flat_map(|s| std::iter::once(s.flag()).chain(s.value))
            .collect()
    }

    /// The settings as environment variables; a switch reads as "true".
    pub fn env(&self) -> Vec<(String, String)> {
        self.settings()
            .into_iter()
            .map(|s| (s.env_name(), s.value.unwrap_or_else(|| "true".into())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use raft_node::config::NodeConfig;

    use super::*;

    /// A start that sets every setting there is.
    fn every_setting<'a>(
        peers: &'a BTreeMap<u64, String>,
        voters: &'a BTreeSet<u64>,
        raft: &'a RaftSettings,
    ) -> Launch<'a> {
        Launch {
            id: 2,
            cluster_id: "c",
            data_dir: "/data".into(),
            listen: Listen {
                peer: "0.0.0.0:7000".into(),
                client: "0.0.0.0:7001".into(),
                admin: "0.0.0.0:7002".into(),
                metrics: "0.0.0.0:7003".into(),
                advertise: Some("demo-1.demo-peers.ns.svc:7000".into()),
            },
            peers,
            initial_voters: Some(voters),
            expect_state: ExpectState::Yes,
            state_marker: Some("/scratch/holds-state".into()),
            addrs_file: Some("/state/member-2.addrs".into()),
            restore_from: Some("/restore/nightly.rlb".into()),
            raft,
            transport: Transport::Tls {
                cert: "/tls/tls.crt".into(),
                key: "/tls/tls.key".into(),
                ca: "/tls/ca.crt".into(),
                anonymous_clients: true,
            },
        }
    }

    #[test]
    fn every_setting_is_a_raft_node_flag_whose_env_fallback_is_the_name_used() {
        let peers = BTreeMap::from([(1, "127.0.0.1:7000".to_string())]);
        let (voters, raft) = (BTreeSet::from([1, 2]), RaftSettings::default());
        let node = NodeConfig::command();
        let mut plaintext = every_setting(&peers, &voters, &raft);
        plaintext.transport = Transport::Plaintext;
        plaintext.expect_state = ExpectState::File("/member/holds-state".into());
        let all = every_setting(&peers, &voters, &raft)
            .settings()
            .into_iter()
            .chain(plaintext.settings());
        for s in all {
            let arg = node
                .get_arguments()
                .find(|a| a.get_long() == Some(s.name))
                .unwrap_or_else(|| panic!("raft-node has no {}", s.flag()));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(s.env_name().as_str()),
                "{}",
                s.flag()
            );
        }
    }

    #[test]
    fn the_flags_are_a_command_line_raft_node_accepts() {
        let peers = BTreeMap::from([
            (1, "127.0.0.1:7000".to_string()),
            (2, "127.0.0.2:7000".to_string()),
            (3, "127.0.0.3:7000".to_string()),
        ]);
        let voters = BTreeSet::from([1, 2, 3]);
        let raft = RaftSettings {
            lanes: 1,
            ..RaftSettings::default()
        };
        let launch = every_setting(&peers, &voters, &raft);
        let cfg =
            NodeConfig::try_parse_from(["raft-node".to_string()].into_iter().chain(launch.args()))
                .expect("raft-node parses the flags");
        assert_eq!(cfg.id, 2);
        assert_eq!(cfg.initial_voters, [1, 2, 3]);
        assert_eq!(
            cfg.peers,
            [(1, "127.0.0.1:7000".into()), (3, "127.0.0.3:7000".into())],
            "its own entry is skipped"
        );
        assert!(cfg.expect_state);
        assert_eq!(
            cfg.advertise(cfg.peer_addr),
            "demo-1.demo-peers.ns.svc:7000"
        );
        assert_eq!(
            cfg.addrs_file.as_deref(),
            Some(std::path::Path::new("/state/member-2.addrs"))
        );
        assert_eq!(cfg.snapshot_entries, raft.snapshot_entries);
        assert_eq!(
            cfg.tls_cert.as_deref(),
            Some(std::path::Path::new("/tls/tls.crt"))
        );
        assert_eq!(
            cfg.tls_ca.as_deref(),
            Some(std::path::Path::new("/tls/ca.crt"))
        );
        assert!(cfg.insecure_anonymous_clients && !cfg.insecure_plaintext);
        cfg.validate().expect("a valid configuration");
    }

    #[test]
    fn without_tls_members_are_told_plaintext_explicitly() {
        let (peers, voters, raft) = (
            BTreeMap::new(),
            BTreeSet::from([2]),
            RaftSettings::default(),
        );
        let mut launch = every_setting(&peers, &voters, &raft);
        launch.transport = Transport::Plaintext;
        let args = launch.args();
        assert!(args.contains(&"--insecure-plaintext".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--tls")), "{args:?}");
        let env = launch.env();
        assert!(env.contains(&("RAFTLANE_INSECURE_PLAINTEXT".into(), "true".into())));
        let cfg = NodeConfig::try_parse_from(["raft-node".to_string()].into_iter().chain(args))
            .expect("raft-node parses the flags");
        assert!(cfg.insecure_plaintext);
        launch.expect_state = ExpectState::File("/member/holds-state".into());
        let cfg = NodeConfig::try_parse_from(["raft-node".into()].into_iter().chain(launch.args()))
            .expect("raft-node parses the flags");
        assert_eq!(
            cfg.expect_state_file.as_deref(),
            Some(std::path::Path::new("/member/holds-state"))
        );
        assert!(!cfg.expect_state);
        cfg.validate().expect("a valid configuration");
    }

    #[test]
    fn a_switch_reads_true_in_the_environment_and_empty_lists_are_left_out() {
        let (peers, voters, raft) = (BTreeMap::new(), BTreeSet::new(), RaftSettings::default());
        let mut launch = every_setting(&peers, &voters, &raft);
        launch.initial_voters = None;
        let env = launch.env();
        assert!(env.contains(&("RAFTLANE_EXPECT_STATE".into(), "true".into())));
        assert!(env
            .iter()
            .all(|(k, _)| k != "RAFTLANE_PEERS" && k != "RAFTLANE_INITIAL_VOTERS"));
        launch.expect_state = ExpectState::No;
        launch.addrs_file = None;
        let args = launch.args();
        assert!(!args.contains(&"--expect-state".to_string()));
        assert!(!args.contains(&"--addrs-file".to_string()), "{args:?}");
    }
}
