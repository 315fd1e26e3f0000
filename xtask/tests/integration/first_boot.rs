//! The rendered user-data, executed: in a throwaway root against the emulator, as the stack's
//! instance role, with only systemd, user management and the metadata service stood in for
//! (first_boot.rs). It downloads the deployed build from the artifact bucket, checks its
//! digest, installs it and its configuration, and enables the unit; a tampered build or one
//! outside the role's prefix is refused and nothing is installed.
//!
//! Longer than 400 lines: each test boots the rendered user-data once and checks everything that
//! boot did; split, each file would boot it again.

use std::os::unix::fs::PermissionsExt;

use aws_clients::{AwsSettings, CredentialsSource};

use super::stack::stack;
use super::{service_binary, temp_dir};
use xtask::context::{block_on, workspace_root};
use xtask::local::first_boot::{self, STAND_INS_DIR};
use xtask::secrets::Secrets;

/// The instance role, assumed through the operator as the instance profile gives it (a
/// configuration file per test: the tests share the stack's state directory).
fn instance_role(cx: &xtask::context::Context, role_arn: &str, test: &str) -> AwsSettings {
    let config = cx.state_dir().join(format!("aws-config-{test}"));
    xtask::local::identities::write_aws_config_at(&workspace_root(), &config, Some(role_arn))
        .unwrap();
    AwsSettings {
        credentials: CredentialsSource::ProfileFile {
            config_file: config,
            profile: xtask::local::emulator::SERVICE_PROFILE.into(),
        },
        ..cx.env.aws.clone()
    }
}

#[test]
fn the_user_data_installs_the_deployed_build_as_the_instance_role_and_refuses_any_other() {
    let stack = stack();
    let cx = stack.cx();
    // The real service: the user-data runs its `gen-cert`.
    let binary = service_binary();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&binary).unwrap(),
    ));
    let outputs = &stack.outputs;
    let user_data = outputs.string("user_data").unwrap();
    assert!(user_data.contains(&format!("BINARY_SHA256='{sha256}'")));
    // `deploy` made the token the instance fetches, after the apply; another call keeps it.
    let operator =
        block_on(aws_clients::AwsClients::connect(&cx.env.aws)).expect("building AWS clients");
    let secrets = Secrets::new(outputs, &operator).unwrap();
    assert!(!block_on(secrets.ensure_token(&cx)).unwrap(), "kept");
    let token = block_on(secrets.token()).unwrap();

    let instance_role = instance_role(&cx, outputs.string("service_role_arn").unwrap(), "single");

    let root = temp_dir("instance-root");
    let installed = first_boot::run(&cx, user_data, &root, &instance_role, "eu-west-1")
        .expect("the user-data runs");
    assert_eq!(
        std::fs::read(&installed.binary).unwrap(),
        std::fs::read(&binary).unwrap(),
        "the deployed build, byte for byte"
    );
    assert_eq!(
        std::fs::metadata(&installed.binary)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    let env: std::collections::BTreeMap<_, _> = installed.environment.iter().cloned().collect();
    for (key, output) in [
        ("INITIAL_BUCKET", "initial_bucket_name"),
        ("FINAL_BUCKET", "final_bucket_name"),
        ("KMS_KEY_ARN", "kms_key_arn"),
        ("AWS_REGION", "region"),
    ] {
        assert_eq!(env[key], outputs.string(output).unwrap(), "{key}");
    }
    assert_eq!(env["LISTEN_ADDR"], "0.0.0.0:8080");
    let env_file = root.join("etc/filepipe/service.env");
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o640,
        "readable by root and the service's group only"
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/filepipe.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/filepipe-service"));
    assert!(unit.contains("EnvironmentFile=/etc/filepipe/service.env"));
    assert!(unit.contains("User=filepipe") && unit.contains("NoNewPrivileges=yes"));

    let calls = std::fs::read_to_string(root.join(STAND_INS_DIR).join("calls.log")).unwrap();
    for expected in [
        // IMDSv2: a token first, then every read with it (the stand-in refuses reads without).
        "curl -fsS --retry 5 -X PUT http://169.254.169.254/latest/api/token",
        "useradd --system --no-create-home --home-dir /nonexistent --shell /sbin/nologin filepipe",
        "install -D -o root -g root -m 0755",
        &format!("chown root:filepipe {}", env_file.display()),
        "systemctl daemon-reload",
        "systemctl enable --now filepipe.service",
    ] {
        assert!(calls.contains(expected), "`{expected}` not in:\n{calls}");
    }
    assert!(
        !calls.contains("meta-data/iam"),
        "the script reads no credentials itself"
    );
    assert!(
        root.join("root/.aws/cli/cache").is_dir(),
        "the AWS CLI's credential cache is the root's own, not this machine's"
    );

    // The secrets: the token from SSM in a file only root and the service's group read; a key
    // made here and its certificate published, the key nowhere else.
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let token_file = root.join("etc/filepipe/auth-token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    assert_eq!(mode(&token_file), 0o440);
    assert_eq!(env["AUTH_TOKEN_FILE"], token_file.display().to_string());
    let key_file = root.join("etc/filepipe/tls/key.pem");
    assert_eq!(mode(&key_file), 0o440);
    let cert = std::fs::read_to_string(root.join("etc/filepipe/tls/cert.pem")).unwrap();
    assert_eq!(
        block_on(secrets.certificate())
            .unwrap()
            .as_deref()
            .map(str::trim),
        Some(cert.trim()),
        "published for clients to pin"
    );
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(key_body.len() > 40);
    for (what, text) in leak_candidates(&cx, &root, user_data) {
        assert!(!text.contains(&token), "the token is in {what}");
        assert!(
            !text.replace('\n', "").contains(&key_body),
            "the private key is in {what}"
        );
    }

    // Rotation, as the instance's timer runs it: the new token taken, the service reloaded.
    block_on(secrets.rotate_token()).unwrap();
    let rotated = block_on(secrets.token()).unwrap();
    assert_ne!(rotated, token);
    first_boot::refresh(&cx, &root, &instance_role).expect("refresh");
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        rotated
    );
    let calls = std::fs::read_to_string(root.join(STAND_INS_DIR).join("calls.log")).unwrap();
    assert!(
        calls.contains("systemctl reload filepipe.service"),
        "{calls}"
    );
    first_boot::refresh(&cx, &root, &instance_role).expect("refresh again");
    let calls_after = std::fs::read_to_string(root.join(STAND_INS_DIR).join("calls.log")).unwrap();
    assert_eq!(
        calls_after.matches("systemctl reload").count(),
        1,
        "no reload when nothing changed"
    );
    // A new key and certificate when asked.
    block_on(secrets.request_new_certificate()).unwrap();
    first_boot::refresh(&cx, &root, &instance_role).expect("refresh after a rotation request");
    assert_ne!(
        std::fs::read_to_string(&key_file).unwrap(),
        key,
        "a new key"
    );
    let new_cert = std::fs::read_to_string(root.join("etc/filepipe/tls/cert.pem")).unwrap();
    assert_ne!(new_cert, cert);
    assert_eq!(
        block_on(secrets.certificate())
            .unwrap()
            .as_deref()
            .map(str::trim),
        Some(new_cert.trim())
    );

    // A build whose bytes differ from the pinned digest: refused, nothing installed. (The
    // pin changed rather than the build: other tests download the same build.)
    let mispinned = user_data.replace(
        &format!("BINARY_SHA256='{sha256}'"),
        &format!("BINARY_SHA256='{}'", "0".repeat(64)),
    );
    assert_ne!(mispinned, user_data);
    let tampered = temp_dir("instance-root-tampered");
    let err = format!(
        "{:#}",
        first_boot::run(&cx, &mispinned, &tampered, &instance_role, "eu-west-1").unwrap_err()
    );
    assert!(
        err.contains("does not match the pinned SHA-256; refusing to install"),
        "{err}"
    );
    assert!(!tampered.join("usr/local/bin/filepipe-service").exists());

    // A build outside the prefix the role may read: the download itself is denied.
    let elsewhere = user_data.replace(
        &format!("/service/{sha256}/"),
        &format!("/service/{}/", "2".repeat(64)),
    );
    assert_ne!(elsewhere, user_data);
    let denied = temp_dir("instance-root-denied");
    let err = format!(
        "{:#}",
        first_boot::run(&cx, &elsewhere, &denied, &instance_role, "eu-west-1").unwrap_err()
    );
    assert!(
        err.contains("could not download the service binary after 1 attempts"),
        "{err}"
    );
    assert!(err.contains("AccessDenied") || err.contains("403"), "{err}");

    // An instance in another region than the stack's refuses to start.
    let wrong_region = temp_dir("instance-root-region");
    let err = format!(
        "{:#}",
        first_boot::run(&cx, user_data, &wrong_region, &instance_role, "us-east-2").unwrap_err()
    );
    assert!(err.contains("instance runs in us-east-2"), "{err}");
}

/// Everything the xtask or the instance wrote that someone might read: the outputs, the
/// rendered user-data, and everything under the stand-ins (the script's output, the journal,
/// every command line it ran).
fn leak_candidates(
    cx: &xtask::context::Context,
    root: &std::path::Path,
    user_data: &str,
) -> Vec<(String, String)> {
    let mut found = vec![
        ("the user-data".to_string(), user_data.to_string()),
        (
            "outputs.json".to_string(),
            std::fs::read_to_string(xtask::outputs::outputs_file(cx)).unwrap(),
        ),
    ];
    for entry in std::fs::read_dir(root.join(STAND_INS_DIR)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            found.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    for config in ["service.env", "refresh.env"] {
        let path = root.join("etc/filepipe").join(config);
        found.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    found
}

/// A fleet's instance: it serves the key and certificate the xtask made for the load
/// balancer's name (from SSM, the key a SecureString), publishes nothing, and takes a new
/// pair at its next refresh.
#[test]
fn a_fleet_instance_serves_the_shared_key_and_certificate_and_follows_a_rotation() {
    use serde_json::json;
    let stack = stack();
    let cx = stack.cx();
    let outputs = &stack.outputs;
    let prefix = &cx.env.name_prefix;
    // The stack is one instance's; its user-data differs from a fleet's in the key's line. The
    // fleet's key and certificate get names of their own here, the single instance's test
    // publishing its certificate on the same stack.
    let key_parameter = format!("/{prefix}/fleet-test/tls-key");
    let certificate_parameter = format!("/{prefix}/fleet-test/tls-certificate");
    let dns_name = "fleet-0123456789abcdef.elb.eu-west-1.amazonaws.com";
    let user_data = outputs
        .string("user_data")
        .unwrap()
        .replace(
            "TLS_KEY_PARAMETER=\n",
            &format!("TLS_KEY_PARAMETER={key_parameter}\n"),
        )
        .replace(
            &format!("CERT_PARAMETER=/{prefix}/tls-certificate\n"),
            &format!("CERT_PARAMETER={certificate_parameter}\n"),
        );
    assert!(user_data.contains(&format!("TLS_KEY_PARAMETER={key_parameter}\n")));
    assert!(user_data.contains(&format!("CERT_PARAMETER={certificate_parameter}\n")));

    let operator =
        block_on(aws_clients::AwsClients::connect(&cx.env.aws)).expect("building AWS clients");
    let mut secrets = Secrets::new(outputs, &operator).unwrap();
    secrets.certificate_parameter = certificate_parameter.clone();
    secrets.fleet = Some(xtask::secrets::FleetTls {
        key_parameter: key_parameter.clone(),
        dns_name: dns_name.to_string(),
    });
    block_on(secrets.ensure_token(&cx)).unwrap();
    assert!(
        block_on(secrets.ensure_fleet_certificate(&cx)).unwrap(),
        "made"
    );
    assert!(
        !block_on(secrets.ensure_fleet_certificate(&cx)).unwrap(),
        "kept"
    );

    // The fleet's grant on the secrets, as policy-documents renders it for a fleet.
    let role_arn = outputs.string("service_role_arn").unwrap();
    let account = role_arn.split(':').nth(4).unwrap();
    let parameter_arns: serde_json::Map<String, serde_json::Value> =
        xtask::secrets::parameter_names(prefix)
            .into_iter()
            .map(|(purpose, name)| match purpose {
                "tls_key" => (purpose, key_parameter.clone()),
                "tls_certificate" => (purpose, certificate_parameter.clone()),
                _ => (purpose, name),
            })
            .map(|(purpose, name)| {
                (
                    purpose.to_string(),
                    json!(format!("arn:aws:ssm:eu-west-1:{account}:parameter{name}")),
                )
            })
            .collect();
    let rendered = super::policy_documents::render(
        &cx,
        json!({
            "region": "eu-west-1",
            "partition": "aws",
            "account_id": account,
            "service_role_arn": role_arn,
            "kms_key_arn": outputs.string("kms_key_arn").unwrap(),
            "bucket_arns": {
                "initial": outputs.string("initial_bucket_arn").unwrap(),
                "final": outputs.string("final_bucket_arn").unwrap(),
            },
            "parameter_arns": parameter_arns,
        }),
    )
    .unwrap();
    let role_policy: serde_json::Value =
        serde_json::from_str(rendered["service_role_policy_json"].as_str().unwrap()).unwrap();
    let read_secrets = role_policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "ReadServiceSecrets")
        .unwrap()
        .clone();
    let iam = aws_sdk_iam::Client::new(&operator.sdk_config);
    let role_name = outputs.string("instance_profile_name").unwrap();
    block_on(
        iam.put_role_policy()
            .role_name(role_name)
            .policy_name(format!("{role_name}-fleet-doors"))
            .policy_document(
                json!({"Version": "2012-10-17", "Statement": [read_secrets]}).to_string(),
            )
            .send(),
    )
    .unwrap();

    let instance_role = instance_role(&cx, role_arn, "fleet");
    let root = temp_dir("fleet-instance-root");
    first_boot::run(&cx, &user_data, &root, &instance_role, "eu-west-1")
        .expect("the user-data runs");

    let ssm = aws_sdk_ssm::Client::new(&operator.sdk_config);
    let parameter = |name: String, decrypt: bool| {
        block_on(
            ssm.get_parameter()
                .name(name)
                .with_decryption(decrypt)
                .send(),
        )
        .unwrap()
        .parameter()
        .unwrap()
        .value()
        .unwrap()
        .trim()
        .to_string()
    };
    let key_file = root.join("etc/filepipe/tls/key.pem");
    let cert_file = root.join("etc/filepipe/tls/cert.pem");
    let served = |file: &std::path::Path| std::fs::read_to_string(file).unwrap().trim().to_string();
    let key = parameter(key_parameter.clone(), true);
    let cert = parameter(secrets.certificate_parameter.clone(), false);
    assert_eq!(served(&key_file), key, "the shared key");
    assert_eq!(served(&cert_file), cert, "the shared certificate");
    assert!(certificates::names_host(&cert, dns_name));
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o440
    );
    assert!(
        !root.join("etc/filepipe/tls/published").exists(),
        "a fleet's instance publishes nothing"
    );

    // rotate-cert for a fleet: a new pair in SSM, taken at the next refresh, then a reload.
    block_on(secrets.request_new_certificate()).unwrap();
    let new_key = parameter(key_parameter, true);
    assert_ne!(new_key, key);
    first_boot::refresh(&cx, &root, &instance_role).expect("refresh");
    assert_eq!(served(&key_file), new_key);
    assert_eq!(
        served(&cert_file),
        parameter(secrets.certificate_parameter.clone(), false)
    );
    let calls = std::fs::read_to_string(root.join(STAND_INS_DIR).join("calls.log")).unwrap();
    assert!(
        calls.contains("systemctl reload filepipe.service"),
        "{calls}"
    );
}
