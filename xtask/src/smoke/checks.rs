//! The checks of one smoke run against one service URL: each case uploaded, processed,
//! downloaded and read back from S3, the refusals, and the clean-up.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aws_clients::{AwsClients, AwsResultExt};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cases::{Case, cases, sealed_case};
use super::{Check, Report};
use crate::flags;
use crate::seal::Sealer;

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn json(&self, path: &str) -> Result<(u16, Value)> {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("GET {}{path}", self.url))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }
}

/// `aws`: the operator's clients, for the checks of the S3 objects themselves; `sealer`:
/// `service seal` as the operator, for the Encryption SDK case (which needs the key). Every
/// environment passes both. `pin`: the only certificate an HTTPS service may present.
pub async fn smoke(
    url: &str,
    args: &flags::Smoke,
    deployed_key: Option<&str>,
    aws: Option<&AwsClients>,
    sealer: Option<&Sealer>,
    pin: Option<&str>,
) -> Result<Report> {
    let s3 = aws.map(|aws| &aws.s3);
    let client = Client {
        http: http_client(pin, Duration::from_secs(600))?,
        url: url.to_string(),
        token: args.token.clone(),
    };
    let (status, info) = client.json("/v1/info").await?;
    if status != 200 {
        bail!("GET {url}/v1/info answered {status}: {info}");
    }
    let key_arn = match deployed_key {
        Some(key) => key.to_string(),
        None => info["kms_key_arn"].as_str().unwrap_or_default().to_string(),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let run_id = format!("{:x}", nanos ^ u64::from(std::process::id()));
    let mut checks = Vec::new();

    let mut created = Vec::new();
    let mut cases = cases(&info, nanos);
    let mut sealing_failed = None;
    if let Some(sealer) = sealer {
        match sealed_case(&cases, &key_arn, sealer).await {
            Ok(sealed) => cases.push(sealed),
            Err(err) => sealing_failed = Some(format!("{err:#}")),
        }
    }
    for case in cases {
        let name = format!("smoke/{run_id}/{}", case.label);
        let started = Instant::now();
        let result = check_case(
            &client,
            &info,
            &key_arn,
            s3,
            &name,
            &case,
            args.timeout_secs,
        )
        .await;
        created.push(name.clone());
        checks.push(Check {
            name: format!("round trip {}", case.label),
            passed: result.is_ok(),
            detail: match &result {
                Ok(detail) => detail.clone(),
                Err(err) => format!("{err:#}"),
            },
            seconds: started.elapsed().as_secs_f64(),
            bytes: (case.body.len() + case.expected.len()) as u64,
        });
    }

    if let Some(detail) = sealing_failed {
        checks.push(Check {
            name: "round trip of an Encryption SDK message".into(),
            passed: false,
            detail,
            seconds: 0.0,
            bytes: 0,
        });
    }

    for (label, path, want) in [
        (
            "bad name is refused",
            format!("/v1/files/smoke/{run_id}/bad%5Cname"),
            400,
        ),
        (
            "unknown name is 404",
            format!("/v1/files/smoke/{run_id}/never-uploaded"),
            404,
        ),
    ] {
        let started = Instant::now();
        let method = if want == 400 {
            reqwest::Method::PUT
        } else {
            reqwest::Method::GET
        };
        let result = client.request(method, &path).body("x").send().await;
        let (passed, detail) = match result {
            Ok(response) if response.status().as_u16() == want => (true, format!("HTTP {want}")),
            Ok(response) => (false, format!("HTTP {} (want {want})", response.status())),
            Err(err) => (false, err.to_string()),
        };
        checks.push(Check {
            name: label.into(),
            passed,
            detail,
            seconds: started.elapsed().as_secs_f64(),
            bytes: 0,
        });
    }

    checks.extend(door_checks(&client, pin).await);

    if !args.keep {
        let started = Instant::now();
        let mut failures = Vec::new();
        for name in &created {
            match client
                .request(reqwest::Method::DELETE, &format!("/v1/files/{name}"))
                .send()
                .await
            {
                Ok(response) if response.status().as_u16() == 204 => {}
                Ok(response) => failures.push(format!("{name}: HTTP {}", response.status())),
                Err(err) => failures.push(format!("{name}: {err}")),
            }
        }
        checks.push(Check {
            name: "clean up".into(),
            passed: failures.is_empty(),
            detail: if failures.is_empty() {
                format!("{} files deleted", created.len())
            } else {
                failures.join("; ")
            },
            seconds: started.elapsed().as_secs_f64(),
            bytes: 0,
        });
    }

    let failed = checks.iter().filter(|c| !c.passed).count();
    Ok(Report {
        url: url.to_string(),
        run_id,
        passed: checks.len() - failed,
        failed,
        checks,
    })
}

/// Whoever lacks the certificate or the token is refused: an unpinned client cannot finish
/// the handshake; no token and a wrong one get 401.
async fn door_checks(client: &Client, pin: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name: &str, result: std::result::Result<String, String>, started: Instant| {
        checks.push(Check {
            name: name.into(),
            passed: result.is_ok(),
            detail: result.unwrap_or_else(|e| e),
            seconds: started.elapsed().as_secs_f64(),
            bytes: 0,
        })
    };
    if pin.is_some() {
        let started = Instant::now();
        let unpinned = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string());
        let result = match unpinned {
            Ok(http) => match http.get(format!("{}/healthz", client.url)).send().await {
                Ok(response) => Err(format!(
                    "a client without the pinned certificate got HTTP {}",
                    response.status()
                )),
                Err(_) => Ok("refused at the TLS handshake".to_string()),
            },
            Err(err) => Err(err),
        };
        check(
            "a client without the certificate is refused",
            result,
            started,
        );
    }
    if client.token.is_some() {
        for (name, token) in [
            ("no token is refused", None),
            (
                "a wrong token is refused",
                Some("not-the-token-of-this-service"),
            ),
        ] {
            let started = Instant::now();
            let request = client.http.get(format!("{}/v1/info", client.url));
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            let result = match request.send().await {
                Ok(response) if response.status().as_u16() == 401 => Ok("HTTP 401".to_string()),
                Ok(response) => Err(format!("HTTP {} (want 401)", response.status())),
                Err(err) => Err(err.to_string()),
            };
            check(name, result, started);
        }
    }
    checks
}

/// A client trusting exactly `pin` when given (HTTPS), the machine's roots otherwise.
pub(super) fn http_client(pin: Option<&str>, timeout: Duration) -> Result<reqwest::Client> {
    match pin {
        Some(cert) => crate::secrets::pinned_client(cert, timeout),
        None => reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building an HTTP client"),
    }
}

async fn check_case(
    client: &Client,
    info: &Value,
    key_arn: &str,
    s3: Option<&aws_sdk_s3::Client>,
    name: &str,
    case: &Case,
    timeout_secs: u64,
) -> Result<String> {
    let mut put = client
        .request(reqwest::Method::PUT, &format!("/v1/files/{name}"))
        .body(case.body.clone());
    if let Some(content_type) = case.content_type {
        put = put.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    let response = put.send().await.context("PUT")?;
    let status = response.status().as_u16();
    let put: Value = response.json().await.unwrap_or(Value::Null);
    if status != 201 {
        bail!("PUT answered {status}: {put}");
    }
    if put["sse"] != "aws:kms" {
        bail!("upload not encrypted with SSE-KMS: sse = {}", put["sse"]);
    }
    if put["kms_key_id"] != key_arn {
        bail!(
            "upload encrypted with key {} instead of the deployed key {key_arn}",
            put["kms_key_id"]
        );
    }

    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let last = loop {
        let (code, status) = client.json(&format!("/v1/files/{name}/status")).await?;
        if code == 200 && status["state"] == "processed" {
            break status;
        }
        if code == 200 && status["state"] == "failed" {
            bail!("processing failed: {}", status["error"]);
        }
        if Instant::now() > deadline {
            bail!("not processed within {timeout_secs} s; last status (HTTP {code}): {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let response = client
        .request(reqwest::Method::GET, &format!("/v1/files/{name}"))
        .send()
        .await
        .context("GET")?;
    if response.status().as_u16() != 200 {
        bail!("GET answered {}", response.status());
    }
    let body = response.bytes().await.context("reading the download")?;
    let (want, got) = (
        hex::encode(Sha256::digest(&case.expected)),
        hex::encode(Sha256::digest(&body)),
    );
    if want != got {
        bail!(
            "download differs: sha256 {got}, expected {want} ({} bytes, expected {})",
            body.len(),
            case.expected.len()
        );
    }

    if case.expected.len() > 100 {
        let (start, end) = (case.expected.len() / 3, case.expected.len() / 3 + 99);
        let response = client
            .request(reqwest::Method::GET, &format!("/v1/files/{name}"))
            .header("range", format!("bytes={start}-{end}"))
            .send()
            .await
            .context("range GET")?;
        if response.status().as_u16() != 206 {
            bail!("range GET answered {} (want 206)", response.status());
        }
        let slice = response.bytes().await.context("reading the range")?;
        if slice.as_ref() != &case.expected[start..=end] {
            bail!("range GET returned the wrong bytes");
        }
    }

    let mut detail = format!("{} bytes, sha256 ok", case.expected.len());
    if let Some(s3) = s3 {
        for (bucket, key) in [
            (
                info["initial_bucket"].as_str().unwrap_or_default(),
                format!("raw/{name}"),
            ),
            (
                info["final_bucket"].as_str().unwrap_or_default(),
                format!("processed/{name}"),
            ),
        ] {
            let head = match s3.head_object().bucket(bucket).key(&key).send().await {
                Ok(head) => head,
                Err(err) => {
                    let denied = err
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() == 403);
                    return Err(err).aws_context(format!(
                        "s3:HeadObject {bucket}/{key}{}",
                        if denied {
                            " (denied: the bucket policy admits only the allowed networks and admin_principal_arns; add the role you run the xtask as there, or smoke from an allowed network)"
                        } else {
                            ""
                        }
                    ));
                }
            };
            if head.server_side_encryption().map(|s| s.as_str()) != Some("aws:kms") {
                bail!("{bucket}/{key} is not SSE-KMS encrypted");
            }
            if head.ssekms_key_id() != Some(key_arn) {
                bail!(
                    "{bucket}/{key} is encrypted with {:?}, not the deployed key {key_arn}",
                    head.ssekms_key_id()
                );
            }
            if head.bucket_key_enabled() != Some(true) {
                bail!("{bucket}/{key} does not use an S3 bucket key");
            }
        }
        detail.push_str(", S3 objects SSE-KMS with the deployed key");
    }
    if let Some(processor) = last["processed"]["processor"].as_str() {
        detail.push_str(&format!(", processor {processor}"));
    }
    Ok(detail)
}
