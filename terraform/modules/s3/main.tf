resource "aws_s3_bucket" "this" {
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

# ACLs disabled: the bucket owner owns every object, whoever wrote it.
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
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # One data key per bucket instead of one KMS call per object: cheaper and avoids KMS throttling.
    bucket_key_enabled = true
  }
}

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
  }

  dynamic "rule" {
    for_each = var.current_version_expiration_days == null ? [] : [var.current_version_expiration_days]

    content {
      id     = "expire-current-objects"
      status = "Enabled"

      filter {}

      expiration {
        days = rule.value
      }
    }
  }

  # Versioning must be on before noncurrent-version rules mean anything.
  depends_on = [aws_s3_bucket_versioning.this]
}

locals {
  bucket_arn  = aws_s3_bucket.this.arn
  objects_arn = "${aws_s3_bucket.this.arn}/*"

  network_restricted = length(var.allowed_cidrs) + length(var.allowed_vpc_endpoint_ids) > 0

  # All condition operators of one statement must hold for it to deny: a request is refused
  # when it comes from none of the CIDRs, through none of the endpoints, and from no exempt
  # principal. Empty lists are left out (an empty condition list is not valid).
  network_condition = {
    for operator, test in {
      NotIpAddress    = { "aws:SourceIp" = var.allowed_cidrs }
      StringNotEquals = { "aws:SourceVpce" = var.allowed_vpc_endpoint_ids }
      ArnNotEquals    = { "aws:PrincipalArn" = var.exempt_principal_arns }
    } : operator => test if length(values(test)[0]) > 0
  }

  network_statement = {
    Sid       = "DenyObjectAccessOutsideAllowedNetworks"
    Effect    = "Deny"
    Principal = "*"
    # Object actions only, so the bucket itself stays manageable from anywhere by IAM admins.
    Action = [
      "s3:GetObject",
      "s3:GetObjectVersion",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:DeleteObjectVersion",
    ]
    Resource  = local.objects_arn
    Condition = local.network_condition
  }

  policy_json = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [local.bucket_arn, local.objects_arn]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyOutdatedTls"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [local.bucket_arn, local.objects_arn]
        Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
      },
      # UploadPart is authorized as s3:PutObject but carries no SSE headers, so the encryption
      # statements use ...IfExists: a header that is sent must be right, and a request without
      # one falls back to the bucket default (SSE-KMS with this key). A plain StringNotEquals or
      # Null=true statement would deny every multipart upload.
      {
        Sid       = "DenyIncorrectEncryptionHeader"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = local.objects_arn
        Condition = { StringNotEqualsIfExists = { "s3:x-amz-server-side-encryption" = "aws:kms" } }
      },
      {
        Sid       = "DenyIncorrectKmsKey"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = local.objects_arn
        Condition = { StringNotEqualsIfExists = { "s3:x-amz-server-side-encryption-aws-kms-key-id" = var.kms_key_arn } }
      },
      {
        Sid       = "DenyCustomerProvidedKeys"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = local.objects_arn
        Condition = { Null = { "s3:x-amz-server-side-encryption-customer-algorithm" = "false" } }
      },
    ], [for statement in [local.network_statement] : statement if local.network_restricted])
  })
}

resource "aws_s3_bucket_policy" "this" {
  count = var.attach_policy ? 1 : 0

  bucket = aws_s3_bucket.this.id
  policy = local.policy_json

  # Putting a policy while the public access block is still being applied fails with
  # "OperationAborted: A conflicting conditional operation is currently in progress".
  depends_on = [
    aws_s3_bucket_public_access_block.this,
    aws_s3_bucket_ownership_controls.this,
  ]
}
