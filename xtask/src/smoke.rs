//! `cargo xtask smoke`: uploads and downloads through the service and checks every property a
//! deployment promises — SSE-KMS with the deployed key, processing, byte-exact downloads,
//! ranges, refusals — then cleans up after itself.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::context::{Context, block_on};
use crate::outputs::Outputs;
use crate::outputs::outputs_file;
use crate::secrets::Secrets;
use service::aws::{AwsClients, AwsResultExt};
use service::decrypt::{Decryptor, Settings};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Service base URL [default: the `service_url` output of the environment].
    #[arg(long)]
    pub url: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the uploaded files (default: delete them afterwards).
    #[arg(long)]
    pub keep: bool,
    /// Bearer token, if the service requires one.
    #[arg(long, env = "FILEPIPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds to wait for each file to be processed.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Seconds to wait for /readyz first: a freshly booted instance downloads and starts the
    /// service before it answers.
    #[arg(long, default_value_t = 600)]
    pub ready_timeout_secs: u64,
}

impl Args {
    #[cfg(test)]
    pub fn default_for_tests() -> Args {
        Args {
            timeout_secs: 60,
            ..Args::default()
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub seconds: f64,
    /// Bytes moved (up + down), for a throughput figure.
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub run_id: String,
    pub checks: Vec<Check>,
    pub passed: usize,
    pub failed: usize,
}

pub fn run(cx: &Context, args: Args) -> Result<()> {
    let outputs = Outputs::load(&outputs_file(cx)).ok();
    let local_services = if cx.env.is_local() {
        crate::local::instance::read_records(cx)
    } else {
        Vec::new()
    };
    // Through every local instance `up` started; elsewhere through the stack's URL.
    let urls: Vec<String> = match (&args.url, &outputs) {
        (Some(url), _) => vec![url.trim_end_matches('/').to_string()],
        (None, _) if !local_services.is_empty() => local_services.iter().map(|s| s.url()).collect(),
        (None, Some(outputs)) => match outputs.string("service_url") {
            Ok(url) => vec![url.trim_end_matches('/').to_string()],
            Err(_) => bail!(
                "no service URL: the `{}` outputs have no `service_url` (no host is deployed); pass --url",
                cx.env.name
            ),
        },
        (None, None) => bail!(
            "no service URL: pass --url, or deploy `{}` first (its outputs give service_url)",
            cx.env.name
        ),
    };
    let deployed_key = outputs
        .as_ref()
        .and_then(|o| o.string("kms_key_arn").ok().map(str::to_string));
    // The operator's credentials: the S3 checks read the objects themselves, the Encryption
    // SDK case encrypts with the deployed key, and the token and the certificate to pin come
    // from SSM.
    let aws = block_on(AwsClients::connect(&cx.env.aws))?;
    let mut args = args;
    let mut pin = None;
    if let Some(outputs) = &outputs
        && outputs.string("auth_token_parameter").is_ok()
    {
        let secrets = Secrets::new(outputs, &aws)?;
        if urls.iter().any(|url| url.starts_with("https://")) {
            // A new instance publishes its certificate only once it has booted.
            pin = Some(block_on(secrets.wait_for_certificate(
                None,
                Duration::from_secs(args.ready_timeout_secs),
            ))?);
        }
        if args.token.is_none() {
            args.token = Some(block_on(secrets.token())?);
        }
    }
    let mut reports = Vec::new();
    for url in &urls {
        block_on(wait_until_ready(
            url,
            pin.as_deref(),
            Duration::from_secs(args.ready_timeout_secs),
        ))?;
        let report = block_on(smoke(
            url,
            &args,
            deployed_key.as_deref(),
            Some(&aws),
            pin.as_deref(),
        ))?;
        if !args.json {
            print_table(&report);
        }
        reports.push(report);
    }
    if args.json {
        // One report as before for one URL; a list for several instances.
        let json = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            all => serde_json::to_string_pretty(all)?,
        };
        println!("{json}");
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.failed > 0)
        .map(|r| format!("{} against {}", r.failed, r.url))
        .collect();
    if !failed.is_empty() {
        bail!("smoke check(s) failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Polls `/readyz` until it answers 200, printing progress; a freshly booted instance first
/// installs and starts the service (user-data), then checks its buckets and key.
pub async fn wait_until_ready(url: &str, pin: Option<&str>, timeout: Duration) -> Result<()> {
    let http = http_client(pin, Duration::from_secs(10))?;
    let started = Instant::now();
    let mut reported = Instant::now();
    let interval = (timeout / 20).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let last = match http.get(format!("{url}/readyz")).send().await {
            Ok(response) if response.status().as_u16() == 200 => return Ok(()),
            Ok(response) => format!(
                "HTTP {}: {}",
                response.status().as_u16(),
                response.text().await.unwrap_or_default().trim()
            ),
            Err(err) => format!("{err:#}"),
        };
        let waited = started.elapsed();
        if waited >= timeout {
            bail!(
                "{url}/readyz did not answer 200 within {} s (last: {last}); on the instance, `journalctl -u filepipe` and /var/log/cloud-init-output.log tell why",
                timeout.as_secs()
            );
        }
        if reported.elapsed() >= Duration::from_secs(30) || waited < Duration::from_secs(1) {
            eprintln!(
                "    waiting for {url}/readyz ({:.0} s of {} s; last: {last})",
                waited.as_secs_f64(),
                timeout.as_secs()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(interval).await;
    }
}

pub fn print_table(report: &Report) {
    let mut out = std::io::stdout().lock();
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(out, "smoke {} (run {})", report.url, report.run_id);
    let _ = writeln!(
        out,
        "{:width$}  {:6}  {:>8}  {:>12}  detail",
        "check", "result", "seconds", "MB/s"
    );
    for check in &report.checks {
        let throughput = if check.bytes > 0 && check.seconds > 0.0 {
            format!("{:.1}", check.bytes as f64 / 1e6 / check.seconds)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:width$}  {:6}  {:>8.2}  {:>12}  {}",
            check.name,
            if check.passed { "ok" } else { "FAILED" },
            check.seconds,
            throughput,
            check.detail
        );
    }
    let _ = writeln!(out, "{} passed, {} failed", report.passed, report.failed);
}

/// A file to push through the pipeline and what must come back.
#[derive(Clone)]
struct Case {
    label: String,
    body: Vec<u8>,
    expected: Vec<u8>,
    /// The upload's Content-Type, when not the client's default.
    content_type: Option<&'static str>,
}

/// curl's Content-Type for `--data-binary`: a body once stored empty by the emulator, so every
/// smoke run sends one file with it.
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

impl Case {
    fn form_typed(mut self) -> Case {
        self.label = format!("form-typed-{}", self.label);
        self.content_type = Some(FORM_TYPE);
        self
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn cases(info: &Value, run_seed: u64) -> Vec<Case> {
    let part_size = info["part_size"].as_u64().unwrap_or(8 * 1024 * 1024) as usize;
    let processor = info["processor"].as_str().unwrap_or("identity");
    let jsonl: Vec<u8> = (0..2000)
        .map(|i| format!("{{\"n\":{i},\"smoke\":true}}\n"))
        .collect::<String>()
        .into_bytes();
    let text = b"filepipe smoke test\n"
        .iter()
        .copied()
        .cycle()
        .take(1024)
        .collect::<Vec<u8>>();
    let large = pseudo_random(3 * part_size + 1024, run_seed);
    let as_is = |label: &str, body: Vec<u8>| Case {
        label: label.to_string(),
        expected: body.clone(),
        body,
        content_type: None,
    };
    match processor {
        "gunzip" => {
            let gzip = |data: &[u8]| {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(data).expect("gzip in memory");
                encoder.finish().expect("gzip in memory")
            };
            let text = Case {
                label: "text-1kib.txt.gz".into(),
                body: gzip(&text),
                expected: text,
                content_type: None,
            };
            vec![
                Case {
                    label: "empty.gz".into(),
                    body: gzip(b""),
                    expected: Vec::new(),
                    content_type: None,
                },
                text.clone(),
                text.form_typed(),
                Case {
                    label: "large-3-parts.bin.gz".into(),
                    body: gzip(&large),
                    expected: large,
                    content_type: None,
                },
                Case {
                    label: "lines.jsonl.gz".into(),
                    body: gzip(&jsonl),
                    expected: jsonl,
                    content_type: None,
                },
            ]
        }
        "jsonl" => vec![
            as_is("empty.jsonl", Vec::new()),
            as_is("lines.jsonl", jsonl.clone()),
            as_is("lines.jsonl", jsonl).form_typed(),
            as_is("large-3-parts.jsonl", {
                let line = b"{\"pad\":\"0123456789abcdef0123456789abcdef0123456789abcdef\"}\n";
                line.iter()
                    .copied()
                    .cycle()
                    .take((3 * part_size + 1024) / line.len() * line.len())
                    .collect()
            }),
        ],
        _ => vec![
            as_is("empty.bin", Vec::new()),
            as_is("text-1kib.txt", text.clone()),
            as_is("text-1kib.txt", text).form_typed(),
            as_is("large-3-parts.bin", large),
        ],
    }
}

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

/// An Encryption SDK message of the second case's input, as a producer holding the key would
/// send it: the service must decrypt it before processing.
async fn sealed_case(cases: &[Case], key_arn: &str, kms: &aws_sdk_kms::Client) -> Result<Case> {
    let template = &cases[1];
    let producer = Decryptor::new(kms.clone(), key_arn, Settings::defaults(16 << 20))
        .await
        .context("creating an Encryption SDK producer")?;
    Ok(Case {
        label: format!("sealed-{}.esdk", template.label),
        body: producer
            .encrypt(template.body.clone(), None)
            .await
            .context("encrypting with the deployed key")?,
        expected: template.expected.clone(),
        content_type: None,
    })
}

/// `aws`: the operator's clients, for the checks of the S3 objects themselves and for the
/// Encryption SDK case (which needs the key); every environment passes them.
/// `pin`: the only certificate an HTTPS service may present.
pub async fn smoke(
    url: &str,
    args: &Args,
    deployed_key: Option<&str>,
    aws: Option<&AwsClients>,
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
    if let Some(aws) = aws {
        match sealed_case(&cases, &key_arn, &aws.kms).await {
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
fn http_client(pin: Option<&str>, timeout: Duration) -> Result<reqwest::Client> {
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
