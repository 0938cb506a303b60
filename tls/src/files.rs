//! Certificate, key and CA files, and the material read from them.
//!
//! A [`TlsSource`] holds the current material and re-reads the files when
//! their bytes change and [`TlsSource::reload`] is called (a Kubernetes
//! Secret volume swaps them atomically; the local runtime rewrites them), so
//! a renewed certificate is used without a restart. Subscribers learn of each
//! new generation and re-dial.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::identity::Identity;

/// Where the PEM files are; the flag names are used in errors.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This party's certificate chain; none for a client that only verifies.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA bundle that is trusted (during a CA rotation, old and new).
    pub ca: PathBuf,
    /// The identity the certificate must name, if known (a member's own):
    /// files naming another are refused, at start and on reload.
    pub expect: Option<Identity>,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{flag} {path}: {why}")]
    File {
        flag: &'static str,
        path: String,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A certificate chain with its key, and who it says it is.
pub struct Credentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub identity: Identity,
    /// When the certificate stops being valid.
    pub not_after: SystemTime,
}

/// Everything one TLS config needs.
pub struct Material {
    pub credentials: Option<Credentials>,
    pub roots: Arc<RootCertStore>,
}

impl Material {
    /// Parses PEM text: `cert` and `key` together or neither.
    pub fn from_pem(
        cert: Option<&[u8]>,
        key: Option<&[u8]>,
        ca: &[u8],
    ) -> Result<Material, FilesError> {
        Material::parse(
            cert.map(|c| (c, "certificate")),
            key.map(|k| (k, "key")),
            (ca, "CA bundle"),
        )
    }

    /// Each part comes with the words naming it in errors.
    fn parse(
        cert: Option<(&[u8], &str)>,
        key: Option<(&[u8], &str)>,
        ca: (&[u8], &str),
    ) -> Result<Material, FilesError> {
        let invalid = |what: &str, why: String| FilesError::Invalid(format!("{what}: {why}"));
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.0) {
            let c = c.map_err(|e| invalid(ca.1, e.to_string()))?;
            roots
                .add(c)
                .map_err(|e| invalid(ca.1, format!("not a CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid(ca.1, "holds no certificate".into()));
        }
        let credentials = match (cert, key) {
            (None, None) => None,
            (Some((cert, what)), Some((key, kwhat))) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(what, e.to_string()))?;
                let leaf = chain
                    .first()
                    .ok_or_else(|| invalid(what, "holds no certificate".into()))?;
                let identity = Identity::of_cert(leaf).map_err(|e| invalid(what, e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| invalid(kwhat, format!("no private key: {e}")))?;
                // A reload may meet a new certificate beside the old key
                // (files swapped one by one): refused, and tried again.
                let signer = rustls::crypto::ring::sign::any_supported_type(&key)
                    .map_err(|e| invalid(kwhat, e.to_string()))?;
                rustls::sign::CertifiedKey::new(chain.clone(), signer)
                    .keys_match()
                    .map_err(|e| invalid(kwhat, format!("not the key of {what}: {e}")))?;
                let (_, x509) = x509_parser::parse_x509_certificate(leaf)
                    .map_err(|e| invalid(what, e.to_string()))?;
                let secs = x509.validity().not_after.timestamp().max(0) as u64;
                Some(Credentials {
                    chain,
                    key,
                    identity,
                    not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
                })
            }
            _ => {
                return Err(FilesError::Invalid(
                    "a certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(Material {
            credentials,
            roots: Arc::new(roots),
        })
    }

    /// Who this material authenticates as, if it has a certificate.
    pub fn identity(&self) -> Option<&Identity> {
        self.credentials.as_ref().map(|c| &c.identity)
    }
}

impl TlsFiles {
    /// The three files' bytes, each error naming its flag.
    fn read(&self) -> Result<[Option<Vec<u8>>; 3], FilesError> {
        let read = |flag: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| FilesError::File {
                flag,
                path: p.display().to_string(),
                why: e.to_string(),
            })
        };
        Ok([
            self.cert
                .as_deref()
                .map(|p| read("--tls-cert", p))
                .transpose()?,
            self.key
                .as_deref()
                .map(|p| read("--tls-key", p))
                .transpose()?,
            Some(read("--tls-ca", &self.ca)?),
        ])
    }

    fn parse(&self, bytes: &[Option<Vec<u8>>; 3]) -> Result<Material, FilesError> {
        let label = |flag: &str, p: &Option<PathBuf>| {
            format!("{flag} {}", p.as_deref().unwrap_or(Path::new("")).display())
        };
        let (c, k) = (
            label("--tls-cert", &self.cert),
            label("--tls-key", &self.key),
        );
        let ca = label("--tls-ca", &Some(self.ca.clone()));
        let m = Material::parse(
            bytes[0].as_deref().map(|b| (b, c.as_str())),
            bytes[1].as_deref().map(|b| (b, k.as_str())),
            (bytes[2].as_deref().unwrap_or_default(), ca.as_str()),
        )?;
        if let Some(want) = &self.expect {
            if m.identity() != Some(want) {
                return Err(FilesError::Invalid(format!(
                    "{c}: the certificate is {}, but this is {want}",
                    m.identity()
                        .map_or("without identity".into(), |g| g.to_string())
                )));
            }
        }
        Ok(m)
    }
}

/// The current TLS material, re-read when its files change.
pub struct TlsSource {
    files: Option<TlsFiles>,
    current: RwLock<Arc<Material>>,
    bytes: Mutex<[Option<Vec<u8>>; 3]>,
    generation: watch::Sender<u64>,
}

impl TlsSource {
    /// Reads `files` once; fails naming the flag and file that is wrong.
    pub fn open(files: TlsFiles) -> Result<Arc<TlsSource>, FilesError> {
        let bytes = files.read()?;
        let material = files.parse(&bytes)?;
        Ok(Arc::new(TlsSource {
            files: Some(files),
            current: RwLock::new(Arc::new(material)),
            bytes: Mutex::new(bytes),
            generation: watch::channel(0).0,
        }))
    }

    /// Material held in memory (the operator's client certificate).
    pub fn fixed(material: Material) -> Arc<TlsSource> {
        Arc::new(TlsSource {
            files: None,
            current: RwLock::new(Arc::new(material)),
            bytes: Mutex::new([None, None, None]),
            generation: watch::channel(0).0,
        })
    }

    pub fn current(&self) -> Arc<Material> {
        self.current.read().expect("tls material poisoned").clone()
    }

    /// Changes on every reload that took effect.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Re-reads the files; returns true when new material took effect. Bad
    /// new files leave the old material in use and return the error.
    pub fn reload(&self) -> Result<bool, FilesError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        (|| {
            let bytes = files.read()?;
            let mut last = self.bytes.lock().expect("tls bytes poisoned");
            if *last == bytes {
                return Ok(false);
            }
            let material = files.parse(&bytes)?;
            *self.current.write().expect("tls material poisoned") = Arc::new(material);
            *last = bytes;
            self.generation.send_modify(|g| *g += 1);
            Ok(true)
        })()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::Authority;

    #[test]
    fn a_certificate_beside_another_certificates_key_is_refused() {
        let day = std::time::Duration::from_secs(86_400);
        let ca = Authority::generate("c", 1, day).unwrap();
        let a = ca.issue(&Identity::member("c", 1), &[], day).unwrap();
        let b = ca.issue(&Identity::member("c", 1), &[], day).unwrap();
        let ca_pem = ca.cert_pem().as_bytes();
        assert!(Material::from_pem(
            Some(a.cert_pem.as_bytes()),
            Some(a.key_pem.as_bytes()),
            ca_pem
        )
        .is_ok());
        let err = Material::from_pem(
            Some(a.cert_pem.as_bytes()),
            Some(b.key_pem.as_bytes()),
            ca_pem,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(err.contains("not the key of"), "{err}");
    }
}
