data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_root_arn = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
}

locals {
  # In a key policy "Resource": "*" means this key and nothing else. Written as a document
  # (not aws_iam_policy_document) because it is a resource policy, not an identity policy.
  key_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Keeps the key manageable through IAM: without it the key could be locked out for good.
        Sid       = "AccountRootFullAccess"
        Effect    = "Allow"
        Principal = { AWS = local.account_root_arn }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        # No aws:SourceIp condition: S3 calls KMS from AWS's own network on the caller's behalf.
        Sid       = "ServiceRoleUseOfKey"
        Effect    = "Allow"
        Principal = { AWS = var.service_role_arn }
        Action = [
          "kms:Encrypt",
          "kms:Decrypt",
          "kms:ReEncrypt*",
          "kms:GenerateDataKey*",
          "kms:DescribeKey",
        ]
        Resource = "*"
      },
    ]
  })
}

resource "aws_kms_key" "this" {
  description              = "${var.name_prefix}: encrypts the initial and final buckets"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  deletion_window_in_days  = var.deletion_window_days
  policy                   = local.key_policy
  # Never bypass the lockout safety check: AWS rejects a policy that would lock the account out.
  bypass_policy_lockout_safety_check = false
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name_prefix}-data"
  target_key_id = aws_kms_key.this.key_id
}
