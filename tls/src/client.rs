//! gRPC channels to members, over TLS that verifies whom it reached.
//!
//! The server's certificate must chain to the cluster's CA and name a member
//! of the cluster this party belongs to; a peer connection also requires the
//! member id it dialled. So an address reused by another cluster's member (or
//! by another member of ours) fails the handshake instead of receiving our
//! traffic. Host names are not what is checked: the identity is.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::files::TlsSource;
use crate::identity::{Identity, Role};

/// Which member the dialled server must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Exactly this member (peer connections: the id the table names).
    Member(u64),
    /// Any member of the cluster (clients, the operator, raftctl).
    AnyMember,
}

/// How this party dials members: plaintext only when chosen explicitly.
#[derive(Clone)]
pub enum Dialer {
    Plaintext,
    Tls(Arc<TlsSource>),
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dialer::Plaintext => f.write_str("Plaintext"),
            Dialer::Tls(src) => write!(f, "Tls({:?})", src.current().identity()),
        }
    }
}

#[derive(Debug)]
struct NotExpected(String);

impl std::fmt::Display for NotExpected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotExpected {}

impl Dialer {
    pub fn is_tls(&self) -> bool {
        matches!(self, Dialer::Tls(_))
    }

    /// The endpoint for `addr` (`host:port`); tune it, then [`Dialer::channel`].
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        Endpoint::from_shared(format!("http://{addr}"))
    }

    /// A channel that connects on first use (and again after a failure),
    /// each time through a handshake with the material current then.
    pub fn channel(&self, endpoint: Endpoint, expect: Expect) -> Channel {
        match self {
            Dialer::Plaintext => endpoint.tcp_nodelay(true).connect_lazy(),
            Dialer::Tls(src) => {
                endpoint.connect_with_connector_lazy(connector(src.clone(), expect))
            }
        }
    }

    /// Connects now: errors (a refused handshake among them) surface here.
    pub async fn connect(
        &self,
        endpoint: Endpoint,
        expect: Expect,
    ) -> Result<Channel, tonic::transport::Error> {
        match self {
            Dialer::Plaintext => endpoint.tcp_nodelay(true).connect().await,
            Dialer::Tls(src) => {
                endpoint
                    .connect_with_connector(connector(src.clone(), expect))
                    .await
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn connector(
    src: Arc<TlsSource>,
    expect: Expect,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: Uri| {
        let src = src.clone();
        async move {
            let host = uri.host().ok_or("no host in the address")?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or("no port in the address")?;
            if let Some(c) = &src.current().credentials {
                if c.not_after < std::time::SystemTime::now() {
                    let at = time::OffsetDateTime::from(c.not_after);
                    return Err(format!(
                        "this party's certificate ({}) expired at {at}: renew it",
                        c.identity
                    )
                    .into());
                }
            }
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let cfg = client_config(&src, expect)?;
            // The name is only sent as SNI; the verifier checks the identity.
            let name = ServerName::try_from(host)
                .unwrap_or_else(|_| ServerName::try_from("member.raftlane").expect("valid name"));
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok::<_, BoxError>(TokioIo::new(tls))
        }
    })
}

/// A client config for one connection: verifies `expect` and presents this
/// party's certificate, if it has one.
pub fn client_config(src: &TlsSource, expect: Expect) -> Result<Arc<ClientConfig>, rustls::Error> {
    let m = src.current();
    let provider = crate::provider();
    let verifier = Arc::new(MemberVerifier {
        roots: m.roots.clone(),
        cluster: m.identity().map(|i| i.cluster.clone()),
        expect,
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match &m.credentials {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Chain and expiry as webpki checks them for a server, then the identity.
#[derive(Debug)]
struct MemberVerifier {
    roots: Arc<RootCertStore>,
    /// This party's cluster; unknown for a client holding only the CA.
    cluster: Option<String>,
    expect: Expect,
    algs: WebPkiSupportedAlgorithms,
}

impl MemberVerifier {
    fn check(&self, presented: &Identity) -> Result<(), String> {
        if let Some(c) = &self.cluster {
            if &presented.cluster != c {
                return Err(format!(
                    "server is {presented}, of another cluster than {c}"
                ));
            }
        }
        match (&presented.role, self.expect) {
            (Role::Member(got), Expect::Member(want)) if *got != want => Err(format!(
                "server is {presented}, but member {want} was dialled"
            )),
            (Role::Member(_), _) => Ok(()),
            _ => Err(format!("server is {presented}, not a member")),
        }
    }
}

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let refuse = |why: String| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                NotExpected(why),
            ))))
        };
        let presented = Identity::of_cert(end_entity).map_err(|e| refuse(e.to_string()))?;
        self.check(&presented).map_err(refuse)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}
