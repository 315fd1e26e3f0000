# Optional settings only the xtask reads for the `example` environment.
aws_profile = "acme-platform"
# state_bucket     = "acme-files-tfstate"      # default: <name_prefix>-tfstate-<account id>-<region>
# artifact_bucket  = "acme-files-artifacts"    # default: <name_prefix>-artifacts-<account id>-<region>
# state_kms_key_id = "arn:aws:kms:eu-west-1:111122223333:key/..."  # state and artifact buckets; default: AWS-managed aws/s3 key
