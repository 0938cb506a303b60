//! A cluster's CA and the certificates it signs, made with rcgen.
//!
//! The operator keeps one [`Authority`] per RaftCluster and issues every
//! member, its own client and users a certificate naming their [`Identity`];
//! the local runtime does the same under its state dir, and tests use it to
//! make good and bad certificates alike.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::{Identity, Role};

/// Backdating of every certificate, so that a member whose clock is a little
/// behind the issuer's accepts it at once.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("not a PEM certificate: {0}")]
    Pem(String),
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A cluster's certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

fn window(validity: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - BACKDATE, now + validity)
}

impl Authority {
    /// A new self-signed CA for `cluster`; `generation` tells CAs of one
    /// cluster apart (a rotation makes the next one).
    pub fn generate(
        cluster: &str,
        generation: u32,
        validity: Duration,
    ) -> Result<Authority, IssueError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(
            DnType::CommonName,
            format!("raftlane CA {cluster} #{generation}"),
        );
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (p.not_before, p.not_after) = window(validity);
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(p, key)?;
        let cert_pem = ca.pem();
        Authority::from_pem(&cert_pem, &key_pem)
    }

    /// The CA kept as PEM (a Secret, files under the state dir).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, IssueError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Authority {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `who`, valid for `validity`. A member's also serves
    /// (its ports), under the DNS names and addresses in `names`; every other
    /// role only authenticates as a client.
    pub fn issue(
        &self,
        who: &Identity,
        names: &[String],
        validity: Duration,
    ) -> Result<Issued, IssueError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, who.uri());
        p.subject_alt_names
            .push(SanType::URI(who.uri().try_into()?));
        let serves = matches!(who.role, Role::Member(_));
        if serves {
            for n in names {
                p.subject_alt_names.push(match n.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into()?),
                });
            }
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = window(validity);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// When the first certificate in `pem` starts and stops being valid.
pub fn validity(pem: &str) -> Result<(SystemTime, SystemTime), IssueError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| IssueError::Pem(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| IssueError::Parse(e.to_string()))?;
    let v = cert.validity();
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
}

/// True once two thirds of the certificate's lifetime have passed (or it is
/// unreadable): it is renewed with a third left, so a missed pass or two
/// never lets it lapse.
pub fn renewal_due(pem: &str, now: SystemTime) -> bool {
    let Ok((from, until)) = validity(pem) else {
        return true;
    };
    let life = until.duration_since(from).unwrap_or_default();
    now >= from + life * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_member_certificate_names_its_identity_and_serves_its_names() {
        let ca = Authority::generate("uid-1", 1, 365 * DAY).unwrap();
        let who = Identity::member("uid-1", 3);
        let issued = ca
            .issue(
                &who,
                &["demo-3.demo.ns.svc".into(), "127.0.0.3".into()],
                DAY,
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(Identity::of_cert(&der).unwrap(), who);
        let (from, until) = validity(&issued.cert_pem).unwrap();
        assert!(from < SystemTime::now() && until > SystemTime::now() + DAY / 2);
    }

    #[test]
    fn a_ca_reloaded_from_pem_signs_as_before() {
        let ca = Authority::generate("c", 1, DAY).unwrap();
        let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let issued = again.issue(&Identity::operator("c"), &[], DAY).unwrap();
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let ca = Authority::generate("c", 1, DAY).unwrap();
        let cert = ca
            .issue(&Identity::admin("c"), &[], 30 * DAY)
            .unwrap()
            .cert_pem;
        let now = SystemTime::now();
        assert!(!renewal_due(&cert, now));
        assert!(!renewal_due(&cert, now + 19 * DAY));
        assert!(renewal_due(&cert, now + 21 * DAY));
        assert!(renewal_due("not a certificate", now));
    }
}
