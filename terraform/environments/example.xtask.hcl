# Optional settings only the xtask reads for the `example` environment.
aws_profile = "acme-platform"
# state_bucket   = "acme-files-tfstate"  # default: <name_prefix>-tfstate-<account id>-<region>
# state_kms_key_id = "arn:aws:kms:eu-west-1:111122223333:key/..."  # default: AWS-managed aws/s3 key
