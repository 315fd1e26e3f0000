//! HTTPS: the certificate and key from `TLS_CERT_FILE` / `TLS_KEY_FILE`, read again on SIGHUP
//! and every `RELOAD_INTERVAL_SECS` (a renewed certificate is served to new connections
//! without a restart), TLS 1.2 and 1.3 only. The certificates themselves (`service gen-cert`)
//! come from the `certificates` crate, which the operator's xtask shares.

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

#[cfg(test)]
mod tests {
    use super::*;
    use certificates::{fingerprint, generate};

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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
