//! The service's self-signed certificates, as the instance makes them (`service gen-cert`) and
//! the operator checks and pins them (`cargo xtask`): one implementation for both.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

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
    fn a_certificate_names_what_it_was_made_for_and_each_has_its_own_fingerprint() {
        let (cert, key) =
            generate(&["127.0.0.1".parse().unwrap()], &["localhost".into()], 30).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let (other, _) = generate(&["127.0.0.1".parse().unwrap()], &[], 30).unwrap();
        assert_ne!(fingerprint(&cert).unwrap(), fingerprint(&other).unwrap());
        assert_eq!(fingerprint(&cert).unwrap().len(), 32 * 3 - 1);
        assert!(generate(&[], &[], 30).is_err());
        assert!(names_host(&cert, "localhost"));
        assert!(!names_host(&cert, "elsewhere.example"));
        assert!(!names_host("not a certificate", "localhost"));
        assert!(fingerprint("not a certificate").is_err());
    }
}
