//! Mutual TLS on real sockets between real raft-node processes: who may
//! connect to which port, what a connection's certificate lets it do, and
//! certificate files replaced under a running cluster.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, ELECTION};
use raftlane_proto::admin::node_admin_client::NodeAdminClient;
use raftlane_proto::admin::{MemberRequest, StatusRequest};
use raftlane_proto::kv::kv_client::KvClient;
use raftlane_proto::kv::PutRequest;
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::RaftEnvelope;
use raftlane_tls::issue::Authority;
use raftlane_tls::limits::Gate;
use raftlane_tls::server::{incoming, Admit};
use raftlane_tls::{ClientAuth, Dialer, Expect, Identity, ServerTls, TlsFiles, TlsSource};
use tonic::transport::Channel;
use tonic::Code;

const DAY: Duration = Duration::from_secs(86_400);

/// Dials `addr` now with `dialer`; the error text with its causes.
async fn connect(dialer: &Dialer, addr: &str, expect: Expect) -> Result<Channel, String> {
    let endpoint = dialer
        .endpoint(addr)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    dialer.connect(endpoint, expect).await.map_err(|e| {
        let mut out = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            out += &format!(": {c}");
            cur = c.source();
        }
        out
    })
}

/// A status call on `addr`'s admin port through `dialer`.
async fn status(dialer: &Dialer, addr: &str) -> Result<(), String> {
    let ch = connect(dialer, addr, Expect::AnyMember).await?;
    NodeAdminClient::new(ch)
        .status(StatusRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{s}"))
}

/// A Put through the client port at `addr` with `dialer`.
async fn put(dialer: &Dialer, addr: &str) -> Result<(), String> {
    let ch = connect(dialer, addr, Expect::AnyMember).await?;
    KvClient::new(ch)
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{s}"))
}

/// Material of `who`, signed by `ca`, as an in-memory dialer.
fn dialer_of(ca: &Authority, trust: &str, who: &Identity) -> Dialer {
    let issued = ca.issue(who, &["localhost".into()], DAY).unwrap();
    let m = raftlane_tls::files::Material::from_pem(
        Some(issued.cert_pem.as_bytes()),
        Some(issued.key_pem.as_bytes()),
        trust.as_bytes(),
    )
    .unwrap();
    Dialer::Tls(TlsSource::fixed(m))
}

/// A dialer holding only the cluster's CA, as a user without a certificate.
fn ca_only(c: &Cluster) -> Dialer {
    Dialer::Tls(
        TlsSource::open(TlsFiles {
            cert: None,
            key: None,
            ca: c.tls_dir().join("ca.crt"),
            expect: None,
        })
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_of_this_cluster_no_port_lets_a_caller_in() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    let m = &c.members[&1];
    assert!(status(&c.dialer(), &m.admin).await.is_ok());

    // No client certificate: only the CA, as a user without one would hold.
    let ca_only = ca_only(&c);
    // TLS 1.3 judges a client's certificate after the client's side of the
    // handshake: the client sees its connection closed, the member logs why.
    for port in [&m.peer, &m.admin] {
        assert!(
            status(&ca_only, port).await.is_err(),
            "{port} let a caller without a certificate in"
        );
    }
    // The client port serves the key-value API: a Put, refused at the
    // handshake (the same Put with a certificate succeeds).
    assert!(
        put(&ca_only, &m.client).await.is_err(),
        "the client port let a caller without a certificate write"
    );
    put(&c.dialer(), &m.client).await.unwrap();
    // Plaintext to a TLS port gets no answer.
    assert!(status(&Dialer::Plaintext, &m.admin).await.is_err());

    // Another cluster's certificate: the member refuses it (UnknownIssuer),
    // and a client of that cluster refuses the member's (UnknownCA alert).
    let other = Authority::generate("other-cluster", 1, DAY).unwrap();
    let ours = c.ca.as_ref().unwrap().cert_pem();
    // Naming our cluster, signed by theirs: a forged identity.
    let stranger = dialer_of(&other, ours, &Identity::admin(&c.cluster_id));
    assert!(status(&stranger, &m.admin).await.is_err());
    let their_client = dialer_of(&other, other.cert_pem(), &Identity::admin("other-cluster"));
    let err = status(&their_client, &m.admin).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Our CA, another cluster's identity (one issuer shared by two clusters).
    let ca = c.ca.as_ref().unwrap();
    let neighbour = dialer_of(ca, ours, &Identity::admin("neighbour"));
    assert!(status(&neighbour, &m.admin).await.is_err());
    // A certificate of ours that is not a member's, on the peer port.
    assert!(status(&c.dialer(), &m.peer).await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.metric(1, "raftlane_tls_refused_connections").await >= 8.0);
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    for why in [
        "no certificates",
        "UnknownIssuer",
        "UnknownCA",
        "is not a member",
    ] {
        assert!(log.contains(why), "the member's log lacks {why:?}: {log}");
    }
}

/// The client port lets anonymous callers in only when told to, by a flag
/// named for the risk; the peer and admin ports never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_only_behind_the_explicit_opt_out() {
    let c = Cluster::start(1, &["--insecure-anonymous-clients"]);
    c.wait_leader(ELECTION * 20).await;
    let m = &c.members[&1];
    let ca_only = ca_only(&c);
    put(&ca_only, &m.client)
        .await
        .expect("anonymous put under --insecure-anonymous-clients");
    for port in [&m.peer, &m.admin] {
        assert!(
            status(&ca_only, port).await.is_err(),
            "{port} let a caller without a certificate in"
        );
    }
}

/// A member that dials an address where another cluster's member (or
/// another member of ours) answers fails the handshake: the identity is
/// checked, not the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialled_address_answered_by_the_wrong_member_fails_the_handshake() {
    let ours = Authority::generate("ours", 1, DAY).unwrap();
    let theirs = Authority::generate("theirs", 1, DAY).unwrap();
    // A server holding `who`'s certificate of `ca`, trusting `ca` only.
    let serve = |ca: &Authority, who: Identity| {
        let issued = ca.issue(&who, &["127.0.0.1".into()], DAY).unwrap();
        let m = raftlane_tls::files::Material::from_pem(
            Some(issued.cert_pem.as_bytes()),
            Some(issued.key_pem.as_bytes()),
            ca.cert_pem().as_bytes(),
        )
        .unwrap();
        let tls = ServerTls::new(
            TlsSource::fixed(m),
            ClientAuth::Required,
            Admit::Members,
            Default::default(),
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        let gate = Gate::new("test", Default::default(), Default::default());
        (addr, incoming(l, Some(tls), gate))
    };
    let member1 = dialer_of(&ours, ours.cert_pem(), &Identity::member("ours", 1));

    let (addr, _keep) = serve(&theirs, Identity::member("theirs", 2));
    let err = connect(&member1, &addr, Expect::Member(2))
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown"),
        "{err}"
    );

    // One CA for two clusters (a shared issuer): the identity's cluster decides.
    let (addr, _keep3) = serve(&ours, Identity::member("another", 2));
    let err = connect(&member1, &addr, Expect::Member(2))
        .await
        .unwrap_err();
    assert!(err.contains("of another cluster than ours"), "{err}");

    let (addr, _keep2) = serve(&ours, Identity::member("ours", 3));
    let err = connect(&member1, &addr, Expect::Member(2))
        .await
        .unwrap_err();
    assert!(err.contains("member 2 was dialled"), "{err}");
    assert!(connect(&member1, &addr, Expect::Member(3)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_certificate_may_not_speak_for_another_member_nor_administer() {
    let c = Cluster::start(2, &[]);
    let leader = c.wait_leader(ELECTION * 20).await;
    let other = if leader == 1 { 2 } else { 1 };
    // Member `leader`'s certificate, used by someone claiming to be member 9.
    let as_leader = c.dialer_as(&format!("member-{leader}"));
    let ch = connect(&as_leader, &c.members[&other].peer, Expect::Member(other))
        .await
        .unwrap();
    let forged = RaftEnvelope {
        cluster_id: c.cluster_id.clone(),
        from: 9,
        to: other,
        from_addr: "127.0.0.9:7000".into(),
        messages: vec![],
    };
    let err = RaftTransportClient::new(ch).send(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        err.message().contains(&format!("member {leader}'s")),
        "{err}"
    );
    assert!(
        c.metric_with(other, "raftlane_transport_rejected", "certificate")
            .await
            >= 1.0
    );

    // A member's certificate reads the admin API but may not change it.
    let ch = connect(&as_leader, &c.members[&leader].admin, Expect::AnyMember)
        .await
        .unwrap();
    let mut admin = NodeAdminClient::new(ch);
    admin.status(StatusRequest {}).await.unwrap();
    let err = admin
        .add_learner(MemberRequest { id: 5 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("/member/"), "{err}");
    assert_eq!(
        c.metric_with(leader, "raftlane_admin_denied", "AddLearner")
            .await,
        1.0
    );
    // The admin certificate may.
    let mut admin = c.admin(leader).await;
    admin.add_learner(MemberRequest { id: 5 }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused_saying_so() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    let ca = c.ca.as_ref().unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        ca.cert_pem(),
        rcgen::KeyPair::from_pem(ca.key_pem()).unwrap(),
    )
    .unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names.push(rcgen::SanType::URI(
        Identity::admin(&c.cluster_id).uri().try_into().unwrap(),
    ));
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let m = raftlane_tls::files::Material::from_pem(
        Some(cert.pem().as_bytes()),
        Some(key.serialize_pem().as_bytes()),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    let expired = TlsSource::fixed(m);
    // The dialer refuses to present it, saying why.
    let err = status(&Dialer::Tls(expired.clone()), &c.members[&1].admin)
        .await
        .unwrap_err();
    assert!(err.contains("expired"), "{err}");
    // Presented anyway, the member refuses it with the alert that says so.
    let cfg = raftlane_tls::client::client_config(&expired, Expect::AnyMember).unwrap();
    let tcp = tokio::net::TcpStream::connect(&c.members[&1].admin)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let err = match tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
    {
        Err(e) => e.to_string(),
        // TLS 1.3: the client's certificate is judged after the client's
        // side of the handshake; the refusal arrives on the first read.
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            match tls.read(&mut buf).await {
                Err(e) => e.to_string(),
                Ok(n) => format!("read {n} bytes"),
            }
        }
    };
    assert!(err.contains("CertificateExpired"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(c.log_path(1)).unwrap();
    assert!(log.contains("expired"), "the member's log says why: {log}");
}

/// Every member's certificate and key are replaced (as a renewal rewrites a
/// Secret volume) while writes run: each member takes the new files without
/// a restart, redials its peers on them, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_files_are_used_without_a_restart_and_writes_keep_succeeding() {
    let c = Cluster::start(3, &["--tls-reload-ms", "200"]);
    c.wait_leader(ELECTION * 20).await;
    let pids: Vec<u32> = c.all_ids().iter().map(|id| c.pid(*id)).collect();
    let kv = Arc::new(c.kv(&[1, 2, 3]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kv, stop) = (kv.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut errors) = (Vec::new(), 0u32);
            for i in 0..100_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = format!("k{i:06}");
                match kv.put(k.as_bytes(), format!("value-{i}").as_bytes()).await {
                    Ok(_) => acked.push(k),
                    Err(_) => errors += 1,
                }
            }
            (acked, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Written aside and renamed in, as a Secret volume swaps its files.
    let dir = c.tls_dir();
    for id in c.all_ids() {
        let issued =
            c.ca.as_ref()
                .unwrap()
                .issue(
                    &Identity::member(&c.cluster_id, id),
                    &["localhost".into()],
                    DAY,
                )
                .unwrap();
        for (ext, pem) in [("key", &issued.key_pem), ("crt", &issued.cert_pem)] {
            let tmp = dir.join(format!("member-{id}.{ext}.new"));
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, dir.join(format!("member-{id}.{ext}"))).unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in c.all_ids() {
        while c.metric(id, "raftlane_tls_reloads").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "member {id} never reloaded:\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Writes after every member redialled on the new certificates.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.await.unwrap();
    let after = c.kv(&[1, 2, 3]);
    after.put(b"after-reload", b"v").await.unwrap();
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    assert_eq!(errors, 0, "writes failed during the reload");
    common::assert_keys(&after, &acked).await;
    let now: Vec<u32> = c.all_ids().iter().map(|id| c.pid(*id)).collect();
    assert_eq!(pids, now, "no member restarted");
    // A check that met the new certificate beside the old key refused that
    // pair (counted in raftlane_tls_reload_failures) and took the next one.
}
