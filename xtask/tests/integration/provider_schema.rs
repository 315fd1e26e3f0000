//! The whole Terraform tree against the AWS provider's schema (offline, from the
//! `@cdktf/provider-aws` package `cargo xtask test` caches), and a copy with seeded errors
//! that proves the check finds each kind of mistake, with file and line.

use std::path::PathBuf;

use super::{copy_dir, temp_dir};
use xtask::context::workspace_root;
use xtask::provider_schema::{self, SCHEMA_VAR, Schema};
use xtask::terraform::schema_check::check_tree;

fn schema() -> Schema {
    let path = match std::env::var(SCHEMA_VAR) {
        Ok(path) if !path.trim().is_empty() => PathBuf::from(path),
        _ => panic!(
            "{SCHEMA_VAR} is not set: this test needs the AWS provider's schema. Run the tests with \
             `cargo xtask test`, which downloads it once (npm registry) and sets {SCHEMA_VAR}."
        ),
    };
    provider_schema::load(&path).unwrap()
}

#[test]
fn every_aws_block_of_the_tree_matches_the_provider_schema() {
    let schema = schema();
    let (checked, findings) = check_tree(&workspace_root().join("terraform"), &schema).unwrap();
    let listed: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(listed.is_empty(), "{}", listed.join("\n"));
    // Every module's resources: a walk that silently found nothing would pass above.
    assert!(checked >= 30, "only {checked} aws_* blocks checked");
}

#[test]
fn seeded_errors_are_each_found_with_file_and_line() {
    let schema = schema();
    let dir = temp_dir("schema-seeded");
    copy_dir(&workspace_root().join("terraform/modules/s3"), &dir);
    let main = dir.join("main.tf");
    let text = std::fs::read_to_string(&main).unwrap();
    let seeded = text
        // An unknown argument.
        .replacen(
            "  force_destroy = var.force_destroy\n",
            "  force_destroy = var.force_destroy\n  force_destory = true\n",
            1,
        )
        // A required argument left out.
        .replacen(
            "resource \"aws_s3_bucket_versioning\" \"this\" {\n  bucket = aws_s3_bucket.this.id\n",
            "resource \"aws_s3_bucket_versioning\" \"this\" {\n",
            1,
        )
        // An attribute written as a block.
        .replacen(
            "  block_public_acls       = true\n",
            "  block_public_acls {\n  }\n",
            1,
        )
        // A block written as an attribute.
        .replacen(
            "  rule {\n    object_ownership = \"BucketOwnerEnforced\"\n  }\n",
            "  rule = { object_ownership = \"BucketOwnerEnforced\" }\n",
            1,
        )
        // A reference to an attribute the resource does not have.
        .replacen(
            "  bucket = aws_s3_bucket.this.id\n\n  rule {\n    apply_server_side_encryption_by_default",
            "  bucket = aws_s3_bucket.this.bucket_id\n\n  rule {\n    apply_server_side_encryption_by_default",
            1,
        );
    std::fs::write(&main, &seeded).unwrap();
    let line_of = |needle: &str| {
        seeded
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("seed `{needle}` missing"))
            + 1
    };

    let (_, findings) = check_tree(&dir, &schema).unwrap();
    let listed: Vec<String> = findings.iter().map(ToString::to_string).collect();
    let expect = [
        (
            line_of("force_destory"),
            "aws_s3_bucket.this: unknown argument `force_destory`",
        ),
        (
            line_of("resource \"aws_s3_bucket_versioning\""),
            "aws_s3_bucket_versioning.this: the required argument `bucket` is missing",
        ),
        (
            line_of("block_public_acls {"),
            "`block_public_acls` is an argument: write `block_public_acls = ...`, not a block",
        ),
        (
            line_of("rule = { object_ownership"),
            "`rule` is a block: write `rule { ... }`, not `rule = ...`",
        ),
        (
            line_of("aws_s3_bucket.this.bucket_id"),
            "`aws_s3_bucket.this` has no attribute `bucket_id`",
        ),
    ];
    for (line, message) in expect {
        let wanted = format!("{}:{line}: ", main.display());
        assert!(
            listed
                .iter()
                .any(|f| f.starts_with(&wanted) && f.contains(message)),
            "not found: line {line}: {message}\nfound:\n{}",
            listed.join("\n")
        );
    }
    assert_eq!(findings.len(), expect.len(), "{}", listed.join("\n"));
}
