//! HTTPS: the certificate and key from `TLS_CERT_FILE` / `TLS_KEY_FILE`, read again on SIGHUP
//! and every `RELOAD_INTERVAL_SECS` (a renewed certificate is served to new connections
//! without a restart), TLS 1.2 and 1.3 only. And `service gen-cert`: the key pair and
//! self-signed certificate the instance makes for itself at first boot, so the private key
//! never leaves it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    acceptor: RwLock<(Vec<u8>, TlsAcceptor)>,
}

impl Tls {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Tls> {
        let (fingerprint, acceptor) = acceptor(cert_file, key_file)?;
        Ok(Tls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            acceptor: RwLock::new((fingerprint, acceptor)),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().expect("tls lock").1.clone()
    }

    /// Reads the files again; returns whether the certificate changed. Files that do not make
    /// a valid pair keep the current one in service.
    pub fn reload(&self) -> Result<bool> {
        let (fingerprint, acceptor) = acceptor(&self.cert_file, &self.key_file)?;
        let mut current = self.acceptor.write().expect("tls lock");
        if current.0 == fingerprint {
            return Ok(false);
        }
        *current = (fingerprint, acceptor);
        Ok(true)
    }
}

fn acceptor(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, TlsAcceptor)> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading TLS_CERT_FILE {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing TLS_CERT_FILE {}", cert_file.display()))?;
    let Some(leaf) = certs.first() else {
        bail!("TLS_CERT_FILE {} holds no certificate", cert_file.display());
    };
    let fingerprint = Sha256::digest(leaf).to_vec();
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading TLS_KEY_FILE {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS_CERT_FILE and TLS_KEY_FILE do not make a certificate and its key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((fingerprint, TlsAcceptor::from(Arc::new(config))))
}

/// A fresh ECDSA P-256 key and a self-signed certificate for `ips` and `names`, valid from
/// an hour ago (clock skew) for `days`; PEM texts (certificate, key).
pub fn generate(ips: &[IpAddr], names: &[String], days: u32) -> Result<(String, String)> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "filepipe service");
    params.distinguished_name = subject;
    params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    for name in names {
        params.subject_alt_names.push(SanType::DnsName(
            name.as_str()
                .try_into()
                .with_context(|| format!("{name} is not a DNS name"))?,
        ));
    }
    if params.subject_alt_names.is_empty() {
        bail!("a certificate needs at least one --ip or --dns name");
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether the first certificate of a PEM text is valid for the DNS name `name` (its
/// subject alternative names say so; validity dates and issuer are not looked at).
pub fn names_host(cert_pem: &str, name: &str) -> bool {
    let Ok(cert) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name.to_string()) else {
        return false;
    };
    webpki::EndEntityCert::try_from(&cert)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// The SHA-256 fingerprint of the first certificate of a PEM text, as `ab:cd:...`.
pub fn fingerprint(cert_pem: &str) -> Result<String> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("no PEM certificate")?;
    Ok(Sha256::digest(&cert)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_loads_and_a_reload_notices_a_new_certificate() {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) =
            generate(&["127.0.0.1".parse().unwrap()], &["localhost".into()], 30).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let tls = Tls::load(&cert_file, &key_file).unwrap();
        assert!(!tls.reload().unwrap(), "the same certificate");

        let (other_cert, other_key) = generate(&["127.0.0.1".parse().unwrap()], &[], 30).unwrap();
        assert_ne!(
            fingerprint(&cert).unwrap(),
            fingerprint(&other_cert).unwrap()
        );
        // A certificate without its key is refused, and the old pair stays in service.
        std::fs::write(&cert_file, &other_cert).unwrap();
        assert!(tls.reload().is_err());
        std::fs::write(&key_file, &other_key).unwrap();
        assert!(tls.reload().unwrap(), "the new pair");
        assert!(generate(&[], &[], 30).is_err());
        assert!(names_host(&cert, "localhost"));
        assert!(!names_host(&cert, "elsewhere.example"));
        assert!(!names_host("not a certificate", "localhost"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
