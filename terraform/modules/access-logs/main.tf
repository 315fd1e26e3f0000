# The bucket that receives the S3 server access logs of the initial and final buckets.
#
# Encrypted with SSE-S3, not the stack's key: S3's log delivery writes only to destination
# buckets with SSE-S3 default encryption. The logs hold request metadata (who, when, which
# key, the result), never file contents.

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_145:S3 server access log delivery writes only to SSE-S3 destination buckets; the logs hold request metadata, not file contents
  #checkov:skip=CKV_AWS_18:the log bucket itself; logging its own reads into itself would log every log delivery
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket = aws_s3_bucket.this.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# ACLs disabled: log delivery is granted by the bucket policy, not by the LogDelivery group.
resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# The same two rules as the data buckets (modules/s3), with logs expiring after the retention.
resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "housekeeping"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    id     = "expire-current-objects"
    status = "Enabled"

    filter {}

    expiration {
      days = var.retention_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# Attached everywhere, the local emulator included: nothing there reads or writes log objects,
# so its conditioned Deny statements (which the emulator applies to everything) block nothing,
# and the emulator checks that it admits log delivery before accepting a logging rule.
resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = var.policy_json

  depends_on = [
    aws_s3_bucket_public_access_block.this,
    aws_s3_bucket_ownership_controls.this,
  ]
}
