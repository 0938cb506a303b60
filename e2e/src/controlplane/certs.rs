//! The control plane's certificates and keys, made with rcgen: one CA that
//! signs the API server's serving certificate and the admin client
//! certificate (group `system:masters`), and the key that signs and verifies
//! ServiceAccount tokens. Written as PEM files into one directory.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of the PEM files [`write`] made.
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// ServiceAccount token signing key (private, PKCS#8).
    pub service_account_key: PathBuf,
    /// Its public half, which verifies the tokens.
    pub service_account_pub: PathBuf,
}

fn leaf(
    cn: &str,
    org: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![usage];
    Ok(p)
}

/// Makes every certificate and key under `dir`.
pub fn write(dir: &Path) -> anyhow::Result<Certs> {
    std::fs::create_dir_all(dir)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "raftlane-e2e-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    // Every name a client may use for the API server: loopback, and the
    // in-cluster names of the `kubernetes` Service.
    let mut serving = leaf("kube-apiserver", None, ExtendedKeyUsagePurpose::ServerAuth)?;
    for dns in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        serving
            .subject_alt_names
            .push(SanType::DnsName(dns.try_into()?));
    }
    for ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 0, 1)] {
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(ip)));
    }
    let serving_key = KeyPair::generate()?;
    let serving = serving.signed_by(&serving_key, &ca)?;

    let admin = leaf(
        "raftlane-e2e-admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let admin_key = KeyPair::generate()?;
    let admin = admin.signed_by(&admin_key, &ca)?;

    let sa_key = KeyPair::generate()?;

    let certs = Certs {
        ca: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        service_account_key: dir.join("sa.key"),
        service_account_pub: dir.join("sa.pub"),
    };
    std::fs::write(&certs.ca, ca.pem())?;
    std::fs::write(&certs.serving_cert, serving.pem())?;
    std::fs::write(&certs.serving_key, serving_key.serialize_pem())?;
    std::fs::write(&certs.admin_cert, admin.pem())?;
    std::fs::write(&certs.admin_key, admin_key.serialize_pem())?;
    std::fs::write(&certs.service_account_key, sa_key.serialize_pem())?;
    std::fs::write(&certs.service_account_pub, sa_key.public_key_pem())?;
    Ok(certs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = super::write(dir.path()).unwrap();
        for p in [&c.ca, &c.serving_cert, &c.admin_cert] {
            assert!(std::fs::read_to_string(p)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        }
        for p in [&c.serving_key, &c.admin_key, &c.service_account_key] {
            assert!(std::fs::read_to_string(p)
                .unwrap()
                .contains("PRIVATE KEY-----"));
        }
    }
}
