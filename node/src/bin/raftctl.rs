//! raftctl: the command-line client of a raftlane cluster.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use raft_node::client::KvClient;
use raft_node::service::kv::{DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT};
use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{
    MemberRequest, SnapshotRequest, StatusRequest, StatusResponse, UpsertPeersRequest,
};
use raftlane_tls::{Dialer, Expect, TlsFiles, TlsSource};
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "raftctl", version, about = "Client of a raftlane cluster")]
struct Cli {
    /// Client addresses of members (HOST:PORT, comma-separated), for data commands.
    #[arg(long, env = "RAFTLANE_ENDPOINTS", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Admin address of one member (HOST:PORT), for admin commands.
    #[arg(long, env = "RAFTLANE_ADMIN", global = true)]
    admin: Option<String>,
    /// Overall deadline of one command, milliseconds (retries included).
    #[arg(long, default_value_t = 10_000, global = true)]
    timeout_ms: u64,
    /// The cluster's CA bundle (PEM). Without --cacert, the admin certificate
    /// of the one cluster under --state-dir is used.
    #[arg(long, env = "RAFTCTL_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM): an admin certificate for admin commands; a
    /// client one suffices for data commands.
    #[arg(long, env = "RAFTCTL_CERT", global = true, requires = "tls_key")]
    cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(
        long = "key",
        id = "tls_key",
        env = "RAFTCTL_KEY",
        global = true,
        requires = "cert"
    )]
    tls_key: Option<PathBuf>,
    /// The local runtime's state dir (`raft-operator local --state-dir`),
    /// searched for `<cluster>/tls/` when --cacert is not given.
    #[arg(
        long,
        env = "RAFTCTL_STATE_DIR",
        default_value = ".raftlane",
        global = true
    )]
    state_dir: PathBuf,
    /// Talk to members started with --insecure-plaintext.
    #[arg(long, env = "RAFTCTL_INSECURE_PLAINTEXT", global = true,
          conflicts_with_all = ["cacert", "cert"])]
    insecure_plaintext: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a key.
    Put { key: String, value: String },
    /// Read a key (linearizable); exits 1 if it does not exist.
    Get { key: String },
    /// Delete a key.
    Del { key: String },
    /// List keys with a prefix, in order, following pages to the end. Each page
    /// is its own linearizable read, so a long scan is not one point-in-time view.
    Scan {
        prefix: Option<String>,
        /// Print at most this many pairs (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Pairs fetched per request; the server allows at most 10000.
        #[arg(long, default_value_t = DEFAULT_SCAN_LIMIT,
              value_parser = clap::value_parser!(u32).range(1..=MAX_SCAN_LIMIT as i64))]
        page_size: u32,
    },
    /// Show a member's view of the cluster.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List voters and learners with their addresses.
    Members,
    /// Add a member as a learner (leader only).
    AddLearner { id: u64 },
    /// Promote a learner to voter (leader only).
    Promote { id: u64 },
    /// Remove a member from the cluster (leader only).
    Remove { id: u64 },
    /// Move leadership to a voter (leader only).
    TransferLeader { id: u64 },
    /// Set peer addresses in place: ID=HOST:PORT[,ID=HOST:PORT].
    UpsertPeers {
        #[arg(value_delimiter = ',')]
        peers: Vec<String>,
    },
    /// Take a snapshot and compact the log now.
    Snapshot,
    /// Write a consistent backup of the member's state (a fresh snapshot) to
    /// FILE, checked against its size and CRC32C; restore a new cluster with
    /// `raft-node --restore-from FILE`.
    ///
    /// For scheduled backups: --series/--keep delete older files of the series
    /// once FILE is verified, and --summary-file leaves a JSON record of the run
    /// for the scheduler.
    Backup {
        /// The backup file. Written as `<FILE stem>.partial` first and renamed
        /// only once verified, so FILE is never a partial backup.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Retention: once FILE is written and verified, keep the N newest
        /// regular files named `SERIES-<yyyymmddThhmmssZ>.rlb` (UTC: the
        /// greatest name is the newest) in FILE's directory and delete the
        /// others; FILE counts and is never deleted. A failed backup deletes
        /// nothing.
        #[arg(long, value_name = "N", requires = "series",
              value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// The series --keep prunes; FILE's name must be `SERIES-<yyyymmddThhmmssZ>.rlb`, so that
        /// it counts among the N kept.
        #[arg(long, value_name = "SERIES", requires = "keep")]
        series: Option<String>,
        /// After success, write a JSON object here (whole: temp file, then
        /// rename) for schedulers: file, size, crc32c, term, index, member,
        /// cluster, seconds, removed.
        #[arg(long, value_name = "PATH")]
        summary_file: Option<PathBuf>,
    },
    /// Write load: prints ops/s, p50, p99 and errors.
    Bench {
        #[arg(long, default_value_t = 10_000)]
        ops: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: u64,
        #[arg(long, default_value_t = 128)]
        value_size: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    end_quietly_on_a_closed_stdout();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `raftctl scan | head` ends raftctl by SIGPIPE, as it ends any Unix tool,
/// once `head` has read enough. Rust ignores SIGPIPE, which turns the closed
/// pipe into a panic in `println!`; the default disposition is restored.
fn end_quietly_on_a_closed_stdout() {
    // SAFETY: changes only this process's disposition of one signal, before
    // raftctl writes anything.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The local runtime's certificate files of the one cluster under `state`.
fn local_files(state: &Path) -> anyhow::Result<TlsFiles> {
    let found: Vec<PathBuf> = std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("tls"))
        .filter(|tls| tls.join("admin.crt").exists())
        .collect();
    match found.as_slice() {
        // The trust bundle when there is one: during a CA rotation it holds
        // the old CA too, which members' certificates may still come from.
        [tls] => Ok(TlsFiles {
            cert: Some(tls.join("admin.crt")),
            key: Some(tls.join("admin.key")),
            ca: [tls.join("trust.crt"), tls.join("ca.crt")]
                .into_iter()
                .find(|p| p.exists())
                .unwrap_or_else(|| tls.join("ca.crt")),
            expect: None,
        }),
        [] => anyhow::bail!(
            "no certificates: give --cacert (and --cert/--key), or --state-dir of a local \
             runtime (none found under {}), or --insecure-plaintext",
            state.display()
        ),
        many => anyhow::bail!(
            "several clusters under --state-dir {} ({}): choose with --cacert/--cert/--key",
            state.display(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// How members are dialled, from the TLS flags.
fn dialer(cli: &Cli) -> anyhow::Result<Dialer> {
    if cli.insecure_plaintext {
        return Ok(Dialer::Plaintext);
    }
    anyhow::ensure!(
        cli.cacert.is_some() || cli.cert.is_none(),
        "--cert {} needs --cacert (the cluster's CA bundle) as well",
        cli.cert.as_deref().unwrap_or(Path::new("")).display()
    );
    let files = match &cli.cacert {
        Some(ca) => TlsFiles {
            cert: cli.cert.clone(),
            key: cli.tls_key.clone(),
            ca: ca.clone(),
            expect: None,
        },
        None => local_files(&cli.state_dir)?,
    };
    let src = TlsSource::open(files).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace("--tls-ca", "--cacert")
                .replace("--tls-cert", "--cert")
                .replace("--tls-key", "--key")
        )
    })?;
    Ok(Dialer::Tls(src))
}

fn kv(cli: &Cli) -> anyhow::Result<KvClient> {
    anyhow::ensure!(
        !cli.endpoints.is_empty(),
        "--endpoints is required for this command"
    );
    KvClient::new(
        &cli.endpoints,
        Duration::from_millis(cli.timeout_ms),
        &dialer(cli)?,
    )
}

async fn admin(cli: &Cli) -> anyhow::Result<NodeAdminClient<Channel>> {
    let addr = cli
        .admin
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--admin is required for this command"))?;
    raft_node::transport::validate_peer_addr(addr).map_err(|e| anyhow::anyhow!("--admin: {e}"))?;
    let dialer = dialer(cli)?;
    let endpoint = dialer
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_millis(cli.timeout_ms));
    let ch = dialer
        .connect(endpoint, Expect::AnyMember)
        .await
        .map_err(|e| anyhow::anyhow!("--admin {addr}: cannot connect: {}", chain(&e)))?;
    Ok(NodeAdminClient::new(ch))
}

/// A verified backup: what the summary reports.
struct Taken {
    size: u64,
    /// The file's own trailer checksum, which identifies the backup.
    crc32c: u32,
    term: u64,
    index: u64,
    member: u64,
    cluster: String,
    seconds: f64,
}

/// Streams a backup into `out` (through a temporary file beside it, mode
/// 0600 since it holds every key, fsynced, renamed only once size and
/// checksums match, the directory fsynced before anything is pruned) with
/// progress on stderr.
async fn backup(cli: &Cli, out: &Path) -> anyhow::Result<Taken> {
    use raftlane_proto::admin::backup_chunk::Part;
    let started = Instant::now();
    let mut stream = admin(cli)
        .await?
        .backup(raftlane_proto::admin::BackupRequest {})
        .await?
        .into_inner();
    let tmp = out.with_extension("partial");
    let mut file = std::io::BufWriter::new({
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|f| {
                // A .partial left by an earlier run keeps its old mode.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                Ok(f)
            })
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", tmp.display()))?
    });
    let (mut header, mut got, mut crc, mut sent_crc) = (None, 0u64, 0u32, None);
    let mut shown = Instant::now();
    while let Some(chunk) = stream.message().await? {
        match chunk.part {
            Some(Part::Header(h)) => header = Some(h),
            Some(Part::Data(d)) => {
                crc = crc32c::crc32c_append(crc, &d);
                got += d.len() as u64;
                file.write_all(&d)?;
                if shown.elapsed() > Duration::from_secs(2) {
                    let size = header.as_ref().map_or(0, |h| h.size).max(1);
                    eprintln!(
                        "backup: {} of {} MiB ({}%)",
                        got >> 20,
                        size >> 20,
                        got * 100 / size
                    );
                    shown = Instant::now();
                }
            }
            Some(Part::Crc32c(c)) => sent_crc = Some(c),
            None => {}
        }
    }
    let h = header.ok_or_else(|| anyhow::anyhow!("backup: the member sent no header"))?;
    anyhow::ensure!(
        got == h.size,
        "backup: {got} bytes received, the member announced {}",
        h.size
    );
    anyhow::ensure!(
        sent_crc == Some(crc),
        "backup: CRC32C {crc:#010x} of the bytes received does not match the member's {sent_crc:?}"
    );
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    // The file's own trailer checksum too: what restore will verify.
    let (_, _, mut body) = raft_node::storage::open_backup(&tmp)?;
    std::io::copy(&mut body, &mut std::io::sink())?;
    std::fs::rename(&tmp, out)?;
    // The rename is durable before --keep may delete an older backup.
    raft_node::storage::sync_parent_dir(out)?;
    // The file's own checksum (its last 4 bytes) identifies the backup; the
    // CRC32C of the whole stream, trailer included, is the same for every file.
    let sum = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(out)?;
        f.seek(SeekFrom::End(-4))?;
        let mut tail = [0u8; 4];
        f.read_exact(&mut tail)?;
        u32::from_le_bytes(tail)
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backup of cluster {} from member {} at term {} index {}: {} bytes, crc32c {sum:#010x}, {:.1} s ({:.1} MB/s) -> {}",
        h.cluster_id,
        h.member_id,
        h.term,
        h.index,
        h.size,
        secs,
        h.size as f64 / 1e6 / secs.max(1e-9),
        out.display()
    );
    Ok(Taken {
        size: h.size,
        crc32c: sum,
        term: h.term,
        index: h.index,
        member: h.member_id,
        cluster: h.cluster_id,
        seconds: secs,
    })
}

/// Whether `name` is a file of backup series `series`:
/// `SERIES-<yyyymmddThhmmssZ>.rlb` exactly, so that series `nightly` never
/// counts (or deletes) the files of a series `nightly-weekly` beside it.
fn in_series(name: &str, series: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix(series)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".rlb"))
    else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// Checked before the backup is taken, so a bad --series costs no backup and
/// --keep can count FILE among the files it keeps.
fn check_series(out: &Path, series: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !series.is_empty() && !series.contains(std::path::is_separator),
        "--series {series:?}: must be a non-empty file name prefix"
    );
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("");
    anyhow::ensure!(
        in_series(name, series),
        "--out {}: with --series {series} the file must be named \
         {series}-<yyyymmddThhmmssZ>.rlb",
        out.display()
    );
    Ok(())
}

/// Splits a series' file names into (kept, removed), both newest first: the
/// `keep` greatest names, plus `own` (the file just written) should a greater
/// name exist beyond them: that one may be a concurrent run's newer backup,
/// and `own` is never deleted.
fn retention(mut names: Vec<String>, own: &str, keep: usize) -> (Vec<String>, Vec<String>) {
    names.sort_unstable_by(|a, b| b.cmp(a));
    names.dedup();
    let (mut kept, mut removed) = (Vec::new(), Vec::new());
    for n in names {
        if kept.len() < keep || n == own {
            kept.push(n);
        } else {
            removed.push(n);
        }
    }
    (kept, removed)
}

/// `--keep`: deletes all but the `keep` newest files of `series` beside `out`
/// (regular files only: never a `.partial`, a directory or a symlink); returns
/// the names deleted.
fn prune(out: &Path, series: &str, keep: usize) -> anyhow::Result<Vec<String>> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let own = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("--out {}: no file name", out.display()))?;
    let mut names = Vec::new();
    for e in
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("--keep: {}: {e}", dir.display()))?
    {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        if let Ok(name) = e.file_name().into_string() {
            if in_series(&name, series) {
                names.push(name);
            }
        }
    }
    // The file just written must be among them, or the listing is not of the
    // directory it went to: delete nothing then.
    anyhow::ensure!(
        names.iter().any(|n| n == own),
        "--keep: {own} not found in {}; nothing deleted",
        dir.display()
    );
    let (kept, removed) = retention(names, own, keep);
    if kept[0] != own {
        eprintln!(
            "backup: warning: {} sorts after {own} (clock or naming off, or a concurrent \
             run?); both are kept",
            kept[0]
        );
    }
    let (mut gone, mut failed) = (Vec::new(), Vec::new());
    for n in removed {
        assert_ne!(n, own, "the new backup is never deleted");
        match std::fs::remove_file(dir.join(&n)) {
            Ok(()) => gone.push(n),
            // Deleted meanwhile (another run): gone, but not by us.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failed.push(format!("{n}: {e}")),
        }
    }
    eprintln!(
        "backup: series {series} in {}: kept {} [{}], removed {} [{}]",
        dir.display(),
        kept.len(),
        kept.join(", "),
        gone.len(),
        gone.join(", ")
    );
    anyhow::ensure!(
        failed.is_empty(),
        "--keep: could not delete {}",
        failed.join("; ")
    );
    Ok(gone)
}

/// Writes `data` to `path` in place (truncated, written, fsynced): it is read
/// once raftctl has exited, and it may be a file that cannot be replaced by
/// a rename, such as a container's `/dev/termination-log`.
fn write_summary(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().map_err(|e| anyhow::anyhow!("--summary-file {}: {e}", path.display()))
}

fn summary_json(out: &Path, t: &Taken, removed: &[String]) -> serde_json::Value {
    json!({
        "file": out.to_string_lossy(),
        "size": t.size,
        "crc32c": t.crc32c,
        "term": t.term,
        "index": t.index,
        "member": t.member,
        "cluster": t.cluster,
        "seconds": t.seconds,
        "removed": removed,
    })
}

/// An error with its causes: a refused handshake's reason is in a source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(&format!(": {c}"));
        cur = c.source();
    }
    out
}

fn status_json(s: &StatusResponse) -> serde_json::Value {
    json!({
        "id": s.id,
        "cluster_id": s.cluster_id,
        "role": s.role,
        "term": s.term,
        "leader_id": s.leader_id,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "first_log_index": s.first_log_index,
        "last_log_index": s.last_log_index,
        "conf_change_pending": s.conf_change_pending,
        "voters": s.voters,
        "learners": s.learners,
        "peers": s.peers.iter().map(|p| json!({
            "id": p.id,
            "address": p.address,
            "no_stream": p.no_stream,
            "last_error": p.last_error,
            "lanes": p.lanes.iter().map(|l| json!({
                "name": l.name,
                "stream_open": l.stream_open,
                "queued": l.queued,
                "sent": l.sent,
                "dropped": l.dropped,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_status(s: &StatusResponse) {
    println!(
        "member {} ({}) of cluster {:?}, term {}, leader {}",
        s.id, s.role, s.cluster_id, s.term, s.leader_id
    );
    println!(
        "commit {} applied {} snapshot {} log [{}..{}]{}",
        s.commit_index,
        s.applied_index,
        s.snapshot_index,
        s.first_log_index,
        s.last_log_index,
        if s.conf_change_pending {
            " (membership change pending)"
        } else {
            ""
        }
    );
    println!("voters {:?} learners {:?}", s.voters, s.learners);
    for p in &s.peers {
        let err = if p.last_error.is_empty() {
            String::new()
        } else {
            format!(" last error: {}", p.last_error)
        };
        println!(
            "  peer {} at {}{}{}",
            p.id,
            p.address,
            if p.no_stream { " (no streaming)" } else { "" },
            err
        );
        for l in &p.lanes {
            println!(
                "    {:<11} open={:<5} queued={} sent={} dropped={}",
                l.name, l.stream_open, l.queued, l.sent, l.dropped
            );
        }
    }
}

fn member(id: u64) -> MemberRequest {
    MemberRequest { id }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.cmd {
        Cmd::Put { key, value } => {
            let index = kv(&cli)?.put(key.as_bytes(), value.as_bytes()).await?;
            println!("OK (index {index})");
        }
        Cmd::Get { key } => match kv(&cli)?.get(key.as_bytes()).await? {
            Some(v) => println!("{}", String::from_utf8_lossy(&v)),
            None => {
                eprintln!("key {key:?} not found");
                return Ok(ExitCode::from(1));
            }
        },
        Cmd::Del { key } => {
            let existed = kv(&cli)?.delete(key.as_bytes()).await?;
            println!(
                "{}",
                if existed {
                    "deleted"
                } else {
                    "not found (nothing to delete)"
                }
            );
        }
        Cmd::Scan {
            prefix,
            limit,
            page_size,
        } => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let mut written = Ok(());
            let prefix = prefix.as_deref().unwrap_or("").as_bytes();
            kv(&cli)?
                .scan(prefix, *page_size, *limit, |kv| {
                    if written.is_ok() {
                        written = writeln!(
                            out,
                            "{}\t{}",
                            String::from_utf8_lossy(&kv.key),
                            String::from_utf8_lossy(&kv.value)
                        );
                    }
                })
                .await?;
            written.and_then(|()| out.flush())?;
        }
        Cmd::Status { json } => {
            let s = admin(&cli)
                .await?
                .status(StatusRequest {})
                .await?
                .into_inner();
            if *json {
                println!("{}", status_json(&s));
            } else {
                print_status(&s);
            }
        }
        Cmd::Members => {
            let s = admin(&cli)
                .await?
                .status(StatusRequest {})
                .await?
                .into_inner();
            let addr = |id: u64| {
                s.peers
                    .iter()
                    .find(|p| p.id == id)
                    .map_or("-".to_string(), |p| p.address.clone())
            };
            for id in &s.voters {
                let lead = if *id == s.leader_id { " leader" } else { "" };
                let a = if *id == s.id {
                    "(this member)".to_string()
                } else {
                    addr(*id)
                };
                println!("{id}\tvoter{lead}\t{a}");
            }
            for id in &s.learners {
                let a = if *id == s.id {
                    "(this member)".to_string()
                } else {
                    addr(*id)
                };
                println!("{id}\tlearner\t{a}");
            }
        }
        Cmd::AddLearner { id } => println!(
            "{}",
            admin(&cli)
                .await?
                .add_learner(member(*id))
                .await?
                .into_inner()
                .message
        ),
        Cmd::Promote { id } => println!(
            "{}",
            admin(&cli)
                .await?
                .promote_learner(member(*id))
                .await?
                .into_inner()
                .message
        ),
        Cmd::Remove { id } => println!(
            "{}",
            admin(&cli)
                .await?
                .remove_member(member(*id))
                .await?
                .into_inner()
                .message
        ),
        Cmd::TransferLeader { id } => {
            println!(
                "{}",
                admin(&cli)
                    .await?
                    .transfer_leader(member(*id))
                    .await?
                    .into_inner()
                    .message
            )
        }
        Cmd::Snapshot => println!(
            "{}",
            admin(&cli)
                .await?
                .snapshot(SnapshotRequest {})
                .await?
                .into_inner()
                .message
        ),
        Cmd::Backup {
            out,
            keep,
            series,
            summary_file,
        } => {
            // clap makes --keep and --series come together.
            let retain = match (keep, series) {
                (Some(n), Some(s)) => {
                    check_series(out, s)?;
                    Some((s.as_str(), *n as usize))
                }
                _ => None,
            };
            let taken = backup(&cli, out).await?;
            let removed = match retain {
                Some((s, n)) => prune(out, s, n)?,
                None => Vec::new(),
            };
            if let Some(p) = summary_file {
                let text = summary_json(out, &taken, &removed).to_string();
                write_summary(p, text.as_bytes())?;
            }
        }
        Cmd::UpsertPeers { peers } => {
            let mut map = std::collections::HashMap::new();
            for p in peers {
                let (id, addr) = p.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("upsert-peers: expected ID=HOST:PORT, got {p:?}")
                })?;
                let id: u64 = id
                    .parse()
                    .map_err(|_| anyhow::anyhow!("upsert-peers: bad member id {id:?}"))?;
                map.insert(id, addr.to_string());
            }
            let r = admin(&cli)
                .await?
                .upsert_peers(UpsertPeersRequest { peers: map })
                .await?
                .into_inner();
            println!("changed: {:?}", r.changed);
        }
        Cmd::Bench {
            ops,
            concurrency,
            value_size,
        } => bench(kv(&cli)?, *ops, *concurrency, *value_size).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(client: KvClient, ops: u64, concurrency: u64, value_size: usize) {
    let client = Arc::new(client);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; value_size];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, errors, value) =
            (client.clone(), next.clone(), errors.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return lat;
                }
                let t = Instant::now();
                match client
                    .put_once(format!("bench/{i:012}").into_bytes(), value.clone())
                    .await
                {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "ops={} concurrency={} value_size={} ok={} errors={} ops/s={:.0} p50={:.2}ms p99={:.2}ms",
        ops,
        concurrency,
        value_size,
        lat.len(),
        errors.load(Ordering::Relaxed),
        lat.len() as f64 / secs,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names() {
        assert!(in_series("demo-20261201T100000Z.rlb", "demo"));
        assert!(!in_series("demo-20261201T100000Z.partial", "demo"));
        assert!(!in_series("demo20261201T100000Z.rlb", "demo"));
        assert!(!in_series("other-20261201T100000Z.rlb", "demo"));
        // Another series whose name starts with this one's is not this one.
        assert!(!in_series("demo-weekly-20261201T100000Z.rlb", "demo"));
        assert!(in_series("demo-weekly-20261201T100000Z.rlb", "demo-weekly"));
        assert!(!in_series("demo-x.rlb", "demo"));
        assert!(check_series(Path::new("/b/demo-20261201T100000Z.rlb"), "demo").is_ok());
        assert!(check_series(Path::new("/b/x.rlb"), "demo").is_err());
        assert!(check_series(Path::new("/b/a/b-1.rlb"), "a/b").is_err());
    }

    #[test]
    fn retention_keeps_the_newest_names_and_always_the_new_file() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (kept, removed) = retention(names(&["d-1.rlb", "d-3.rlb", "d-2.rlb"]), "d-3.rlb", 2);
        assert_eq!(kept, names(&["d-3.rlb", "d-2.rlb"]));
        assert_eq!(removed, names(&["d-1.rlb"]));
        // A greater name than the new file's is kept, and the new file too.
        let (kept, removed) = retention(names(&["d-9.rlb", "d-2.rlb", "d-1.rlb"]), "d-2.rlb", 1);
        assert_eq!(kept, names(&["d-9.rlb", "d-2.rlb"]));
        assert_eq!(removed, names(&["d-1.rlb"]));
        let (kept, removed) = retention(names(&["d-1.rlb"]), "d-1.rlb", 3);
        assert_eq!((kept, removed), (names(&["d-1.rlb"]), vec![]));
    }
}
