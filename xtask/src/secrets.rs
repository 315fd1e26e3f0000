//! The deployed service's secrets, as the operator holds them: the bearer token, an SSM
//! SecureString under the stack's key that the xtask makes and rotates with the SDK (never
//! Terraform: no state, plan or output ever holds it), and the certificate the instance made
//! for itself and published, which clients pin. Both are read over the operator's
//! authenticated AWS channel; files written for curl are 0600 and hold no more than needed.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsResultExt};
use aws_sdk_ssm::error::ProvideErrorMetadata as _;
use aws_sdk_ssm::types::ParameterType;

use crate::context::Context;
use crate::outputs::Outputs;
use crate::paths::write_private;

/// The SSM parameters of the service's secrets by purpose, named as terraform/main.tf names
/// them (the sandbox and `destroy` need them without Terraform's outputs).
pub fn parameter_names(prefix: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("auth_token", format!("/{prefix}/auth-token")),
        ("tls_certificate", format!("/{prefix}/tls-certificate")),
        ("tls_rotation", format!("/{prefix}/tls-rotation")),
        ("tls_key", format!("/{prefix}/tls-key")),
    ])
}

/// Deletes the parameters Terraform does not manage (the token, the published certificate,
/// the rotation request); ones already gone are fine.
pub async fn delete_parameters(cx: &Context, operator: &AwsClients) -> Result<()> {
    let ssm = aws_sdk_ssm::Client::new(&operator.sdk_config);
    for name in parameter_names(&cx.env.name_prefix).values() {
        if !cx.aws_call(format!("ssm:DeleteParameter {name}")) {
            continue;
        }
        match ssm.delete_parameter().name(name).send().await {
            Ok(_) => {}
            Err(err) if err.code() == Some("ParameterNotFound") => {}
            Err(err) => return Err(err).aws_context(format!("ssm:DeleteParameter {name}")),
        }
    }
    Ok(())
}

/// The parameters of one environment, from its outputs.
pub struct Secrets {
    pub token_parameter: String,
    pub certificate_parameter: String,
    pub rotation_parameter: String,
    pub kms_key_arn: String,
    /// A fleet's: the shared key's parameter and the name the certificate carries.
    pub fleet: Option<FleetTls>,
    ssm: aws_sdk_ssm::Client,
}

/// A fleet's instances serve one key and certificate, made here for the load balancer's
/// name, so that clients pin one certificate whichever instance answers.
pub struct FleetTls {
    pub key_parameter: String,
    pub dns_name: String,
}

/// How long a fleet's certificate is valid, and how old it may get before `deploy` renews it.
const FLEET_CERT_DAYS: u32 = 90;
const FLEET_CERT_RENEW_DAYS: i64 = 60;

impl Secrets {
    pub fn new(outputs: &Outputs, operator: &AwsClients) -> Result<Secrets> {
        Ok(Secrets {
            token_parameter: outputs.string("auth_token_parameter")?.to_string(),
            certificate_parameter: outputs.string("tls_certificate_parameter")?.to_string(),
            rotation_parameter: outputs.string("tls_rotation_parameter")?.to_string(),
            kms_key_arn: outputs.string("kms_key_arn")?.to_string(),
            fleet: match (
                outputs.optional_string("tls_key_parameter"),
                outputs.optional_string("load_balancer_dns_name"),
            ) {
                (Some(key), Some(dns)) => Some(FleetTls {
                    key_parameter: key.to_string(),
                    dns_name: dns.to_string(),
                }),
                _ => None,
            },
            ssm: aws_sdk_ssm::Client::new(&operator.sdk_config),
        })
    }

    /// A fleet's key and certificate: made when there are none, when the certificate does
    /// not name the load balancer, or when it is older than 60 days; returns whether it made
    /// them. Nothing to do for one instance (it makes its own).
    pub async fn ensure_fleet_certificate(&self, cx: &Context) -> Result<bool> {
        let Some(fleet) = &self.fleet else {
            return Ok(false);
        };
        if !cx.aws_call(format!(
            "ssm:GetParameter {} (and ssm:PutParameter {} SecureString, {} when missing or old)",
            self.certificate_parameter, fleet.key_parameter, self.certificate_parameter
        )) {
            return Ok(false);
        }
        let current = match self
            .ssm
            .get_parameter()
            .name(&self.certificate_parameter)
            .send()
            .await
        {
            Ok(found) => found.parameter().cloned(),
            Err(err) if err.code() == Some("ParameterNotFound") => None,
            Err(err) => {
                return Err(err)
                    .aws_context(format!("ssm:GetParameter {}", self.certificate_parameter));
            }
        };
        let fresh = current.as_ref().is_some_and(|parameter| {
            let names = parameter
                .value()
                .is_some_and(|pem| certificates::names_host(pem, &fleet.dns_name));
            let young = parameter
                .last_modified_date()
                .is_some_and(|at| at.secs() > now_secs() - FLEET_CERT_RENEW_DAYS * 86_400);
            names && young
        });
        if fresh {
            return Ok(false);
        }
        self.put_fleet_certificate(fleet).await?;
        Ok(true)
    }

    /// A new key and certificate for the fleet: the key first, so that an instance that
    /// sees the new certificate finds its key.
    async fn put_fleet_certificate(&self, fleet: &FleetTls) -> Result<()> {
        let (cert, key) = certificates::generate(
            &[],
            &[fleet.dns_name.clone(), "localhost".to_string()],
            FLEET_CERT_DAYS,
        )?;
        self.ssm
            .put_parameter()
            .name(&fleet.key_parameter)
            .description("filepipe: the fleet's TLS key (cargo xtask rotate-cert makes a new one)")
            .r#type(ParameterType::SecureString)
            .key_id(&self.kms_key_arn)
            .value(key)
            .overwrite(true)
            .send()
            .await
            .aws_context(format!(
                "ssm:PutParameter {} (SecureString, key {})",
                fleet.key_parameter, self.kms_key_arn
            ))?;
        self.ssm
            .put_parameter()
            .name(&self.certificate_parameter)
            .description("filepipe: the fleet's TLS certificate, pinned by clients")
            .r#type(ParameterType::String)
            .value(cert)
            .overwrite(true)
            .send()
            .await
            .aws_context(format!("ssm:PutParameter {}", self.certificate_parameter))?;
        Ok(())
    }

    /// Makes the token if there is none yet; returns whether it did. Never overwrites one.
    pub async fn ensure_token(&self, cx: &Context) -> Result<bool> {
        if !cx.aws_call(format!(
            "ssm:GetParameter {} (and ssm:PutParameter SecureString if missing)",
            self.token_parameter
        )) {
            return Ok(false);
        }
        match self
            .ssm
            .get_parameter()
            .name(&self.token_parameter)
            .send()
            .await
        {
            Ok(_) => return Ok(false),
            Err(err) if err.code() == Some("ParameterNotFound") => {}
            Err(err) => {
                return Err(err).aws_context(format!("ssm:GetParameter {}", self.token_parameter));
            }
        }
        self.put_token(false).await?;
        Ok(true)
    }

    /// A new token, as a new version of the parameter.
    pub async fn rotate_token(&self) -> Result<()> {
        self.put_token(true).await
    }

    async fn put_token(&self, overwrite: bool) -> Result<()> {
        self.ssm
            .put_parameter()
            .name(&self.token_parameter)
            .description("filepipe bearer token (cargo xtask rotate-token makes a new version)")
            .r#type(ParameterType::SecureString)
            .key_id(&self.kms_key_arn)
            .value(new_token()?)
            .overwrite(overwrite)
            .send()
            .await
            .aws_context(format!(
                "ssm:PutParameter {} (SecureString, key {})",
                self.token_parameter, self.kms_key_arn
            ))?;
        Ok(())
    }

    pub async fn token(&self) -> Result<String> {
        let found = self
            .ssm
            .get_parameter()
            .name(&self.token_parameter)
            .with_decryption(true)
            .send()
            .await
            .aws_context(format!("ssm:GetParameter {}", self.token_parameter))?;
        found
            .parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .with_context(|| format!("{} has no value", self.token_parameter))
    }

    /// The certificate the instance published, if it has yet.
    pub async fn certificate(&self) -> Result<Option<String>> {
        match self
            .ssm
            .get_parameter()
            .name(&self.certificate_parameter)
            .send()
            .await
        {
            Ok(found) => Ok(found
                .parameter()
                .and_then(|p| p.value())
                .map(str::to_string)),
            Err(err) if err.code() == Some("ParameterNotFound") => Ok(None),
            Err(err) => {
                Err(err).aws_context(format!("ssm:GetParameter {}", self.certificate_parameter))
            }
        }
    }

    /// Waits (bounded, with progress) for a published certificate other than `previous`.
    pub async fn wait_for_certificate(
        &self,
        previous: Option<&str>,
        timeout: Duration,
    ) -> Result<String> {
        let started = Instant::now();
        let mut reported = Instant::now();
        loop {
            if let Some(cert) = self.certificate().await?
                && Some(cert.as_str()) != previous
            {
                return Ok(cert);
            }
            if started.elapsed() > timeout {
                bail!(
                    "no {} certificate in {} after {} s: the instance publishes it at first boot and within a minute of a rotation request (`journalctl -u filepipe-refresh` on the instance tells why not)",
                    if previous.is_some() {
                        "new"
                    } else {
                        "published"
                    },
                    self.certificate_parameter,
                    timeout.as_secs()
                );
            }
            if reported.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "    waiting for the instance to publish its certificate in {} ({:.0} s)",
                    self.certificate_parameter,
                    started.elapsed().as_secs_f64()
                );
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Asks the instance for a new key and certificate (it polls the parameter every minute);
    /// for a fleet, makes them (its instances take them within a minute).
    pub async fn request_new_certificate(&self) -> Result<()> {
        if let Some(fleet) = &self.fleet {
            return self.put_fleet_certificate(fleet).await;
        }
        let nonce = new_token()?;
        self.ssm
            .put_parameter()
            .name(&self.rotation_parameter)
            .description(
                "filepipe: a new value asks the instance for a new TLS key and certificate",
            )
            .r#type(ParameterType::String)
            .value(&nonce[..16])
            .overwrite(true)
            .send()
            .await
            .aws_context(format!("ssm:PutParameter {}", self.rotation_parameter))?;
        Ok(())
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// 32 random bytes, hex: from the kernel's generator.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(bytes))
}

/// Where the environment's pinned certificate is kept (`curl --cacert`).
pub fn pin_file(cx: &Context) -> PathBuf {
    cx.state_dir().join("service-ca.pem")
}

/// The `Authorization` header for `curl -H @file`: the token never on a command line.
pub fn header_file(cx: &Context) -> PathBuf {
    cx.state_dir().join("auth-header")
}

pub fn write_pin(cx: &Context, cert_pem: &str) -> Result<PathBuf> {
    let path = pin_file(cx);
    std::fs::write(&path, cert_pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn write_header(cx: &Context, token: &str) -> Result<PathBuf> {
    let path = header_file(cx);
    write_private(&path, &format!("Authorization: Bearer {token}\n"))?;
    Ok(path)
}

/// An HTTP client that trusts exactly `cert_pem`, no other root.
pub fn pinned_client(cert_pem: &str, timeout: Duration) -> Result<reqwest::Client> {
    let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes())
        .context("the published certificate is not PEM")?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(timeout)
        .build()
        .context("building an HTTP client")
}
