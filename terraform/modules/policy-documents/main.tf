# Every policy document of the stack, in one place: the KMS key policy, the service role's
# trust and permission policies, and the bucket policies. terraform/main.tf passes them to
# the kms, iam, s3 and queue modules; the policy tests render it alone.

locals {
  account_root_arn = "arn:${var.partition}:iam::${var.account_id}:root"

  # In a key policy "Resource": "*" means this key and nothing else.
  key_policy = {
    Version = "2012-10-17"
    Statement = concat([
      {
        # Keeps the key manageable through IAM: without it the key could be locked out for good.
        Sid       = "AccountRootFullAccess"
        Effect    = "Allow"
        Principal = { AWS = local.account_root_arn }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        # SSE-KMS: S3 uses the key on the role's behalf, for the pipeline's buckets only. With
        # an S3 Bucket Key the encryption context is the bucket ARN, without one the object
        # ARN. No aws:SourceIp condition: S3 calls KMS from AWS's own network.
        Sid       = "ServiceRoleUseThroughS3"
        Effect    = "Allow"
        Principal = { AWS = var.service_role_arn }
        Action    = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource  = "*"
        Condition = {
          StringEquals = { "kms:ViaService" = "s3.${var.region}.amazonaws.com" }
          StringLike   = { "kms:EncryptionContext:aws:s3:arn" = flatten([for arn in values(var.bucket_arns) : [arn, "${arn}/*"]]) }
        }
      },
      {
        # The Encryption SDK's keyring unwraps data keys itself, not through a service.
        Sid       = "ServiceRoleDecryptEnvelopes"
        Effect    = "Allow"
        Principal = { AWS = var.service_role_arn }
        Action    = "kms:Decrypt"
        Resource  = "*"
        Condition = { Null = { "kms:ViaService" = "true" } }
      },
      {
        # Readiness checks the key.
        Sid       = "ServiceRoleDescribeKey"
        Effect    = "Allow"
        Principal = { AWS = var.service_role_arn }
        Action    = "kms:DescribeKey"
        Resource  = "*"
      },
      ], [
      # The bearer token (and a fleet's shared TLS key) are SecureStrings under this key: SSM
      # decrypts them for the role, for those parameters only.
      for statement in [{
        Sid       = "ServiceRoleDecryptAuthTokenThroughSsm"
        Effect    = "Allow"
        Principal = { AWS = var.service_role_arn }
        Action    = "kms:Decrypt"
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:ViaService"                      = "ssm.${var.region}.amazonaws.com"
            "kms:EncryptionContext:PARAMETER_ARN" = [for purpose in ["auth_token", "tls_key"] : var.parameter_arns[purpose] if contains(keys(var.parameter_arns), purpose)]
          }
        }
      }] : statement if contains(keys(var.parameter_arns), "auth_token")
    ], local.queue_key_statements)
  }

  # A fleet (tls_key given) reads the certificate the xtask made; one instance publishes its own.
  readable_parameters = contains(keys(var.parameter_arns), "tls_key") ? ["auth_token", "tls_rotation", "tls_key", "tls_certificate"] : ["auth_token", "tls_rotation"]

  work_queue_arn = lookup(var.queue_arns, "work", "")
  has_queue      = contains(keys(var.queue_arns), "work")

  # The queue is encrypted with this key (SQS's encryption context names the queue): S3
  # encrypts the initial bucket's events into it, and the role reads them and sends the
  # scan's own. Both through SQS only.
  queue_key_statements = [for statement in [
    {
      Sid       = "S3SendsInitialBucketEventsToTheQueue"
      Effect    = "Allow"
      Principal = { Service = "s3.amazonaws.com" }
      Action    = ["kms:GenerateDataKey", "kms:Decrypt"]
      Resource  = "*"
      Condition = {
        StringEquals = {
          "aws:SourceAccount"                 = var.account_id
          "kms:EncryptionContext:aws:sqs:arn" = local.work_queue_arn
        }
        ArnEquals = { "aws:SourceArn" = lookup(var.bucket_arns, "initial", "") }
      }
    },
    {
      Sid       = "ServiceRoleUseThroughSqs"
      Effect    = "Allow"
      Principal = { AWS = var.service_role_arn }
      Action    = ["kms:GenerateDataKey", "kms:Decrypt"]
      Resource  = "*"
      Condition = {
        StringEquals = {
          "kms:ViaService"                    = "sqs.${var.region}.amazonaws.com"
          "kms:EncryptionContext:aws:sqs:arn" = local.work_queue_arn
        }
      }
    },
  ] : statement if local.has_queue]

  # Only the initial bucket sends events to the work queue, and only over TLS; the
  # dead-letter queue takes messages only by redrive (its redrive-allow policy), and over TLS.
  queue_policies = {
    for purpose, queue_arn in var.queue_arns : purpose => {
      Version = "2012-10-17"
      Statement = concat([
        for statement in [{
          Sid       = "InitialBucketSendsEvents"
          Effect    = "Allow"
          Principal = { Service = "s3.amazonaws.com" }
          Action    = "sqs:SendMessage"
          Resource  = queue_arn
          Condition = {
            ArnEquals    = { "aws:SourceArn" = lookup(var.bucket_arns, "initial", "") }
            StringEquals = { "aws:SourceAccount" = var.account_id }
          }
        }] : statement if purpose == "work"
        ], [{
          Sid       = "DenyInsecureTransport"
          Effect    = "Deny"
          Principal = "*"
          Action    = "sqs:*"
          Resource  = queue_arn
          Condition = { Bool = { "aws:SecureTransport" = "false" } }
      }])
    }
  }

  assume_role_policy = {
    Version = "2012-10-17"
    Statement = [{
      Sid       = "Ec2AssumeRole"
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  }

  # Exactly what the service does: list the two buckets (and, at start-up, the multipart
  # uploads a killed run left open), read/write/delete their objects (multipart included),
  # and use the one key. No wildcard resources.
  service_role_policy = {
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid      = "ListPipelineBuckets"
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
        Resource = values(var.bucket_arns)
      },
      {
        Sid    = "ReadWritePipelineObjects"
        Effect = "Allow"
        # GetObjectVersion: processing reads the raw object by version id, and copies the
        # processed output from a version.
        Action = [
          "s3:GetObject",
          "s3:GetObjectVersion",
          "s3:PutObject",
          "s3:DeleteObject",
          "s3:AbortMultipartUpload",
        ]
        Resource = [for arn in values(var.bucket_arns) : "${arn}/*"]
      },
      {
        Sid    = "UsePipelineKey"
        Effect = "Allow"
        Action = [
          "kms:Decrypt",
          "kms:GenerateDataKey",
          "kms:DescribeKey",
        ]
        Resource = [var.kms_key_arn]
      },
    ], local.queue_statements, local.artifact_statements)
  }

  # The service takes its work from the queue, hides a message while its file is processed,
  # deletes it once settled, and sends a file's message itself when a scan finds its event
  # lost. Nothing on the dead-letter queue: operators redrive it.
  queue_statements = [for statement in [{
    Sid    = "ConsumeWorkQueue"
    Effect = "Allow"
    Action = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:SendMessage",
    ]
    Resource = local.work_queue_arn
  }] : statement if local.has_queue]

  # The user-data downloads the service binary with the instance role: exactly the
  # content-addressed prefix of the deployed build, and its bucket's key through S3 only (the
  # AWS-managed aws/s3 key needs no grant). One-element lists filtered, as the network
  # statement below is: a conditional between [] and these would not type-check.
  artifact_statements = concat(
    [for statement in [{
      Sid      = "ReadServiceArtifact"
      Effect   = "Allow"
      Action   = "s3:GetObject"
      Resource = "${try(var.service_artifact.bucket_arn, "")}/${try(var.service_artifact.key_prefix, "")}*"
    }] : statement if var.service_artifact != null],
    [for statement in [{
      Sid       = "DecryptServiceArtifact"
      Effect    = "Allow"
      Action    = "kms:Decrypt"
      Resource  = try(var.service_artifact.kms_key_arn, "")
      Condition = { StringEquals = { "kms:ViaService" = "s3.${var.region}.amazonaws.com" } }
    }] : statement if try(var.service_artifact.kms_key_arn, null) != null],
    # The doors: the token, the rotation request and (a fleet's) the shared key and its
    # certificate read; one instance's certificate published.
    [for statement in [{
      Sid      = "ReadServiceSecrets"
      Effect   = "Allow"
      Action   = "ssm:GetParameter"
      Resource = [for purpose in local.readable_parameters : var.parameter_arns[purpose] if contains(keys(var.parameter_arns), purpose)]
    }] : statement if length(setintersection(keys(var.parameter_arns), local.readable_parameters)) > 0],
    [for statement in [{
      Sid      = "PublishCertificate"
      Effect   = "Allow"
      Action   = "ssm:PutParameter"
      Resource = lookup(var.parameter_arns, "tls_certificate", "")
    }] : statement if contains(keys(var.parameter_arns), "tls_certificate") && !contains(keys(var.parameter_arns), "tls_key")],
  )

  # S3's log delivery writes the data buckets' access logs, for this account's buckets only.
  access_log_bucket_policy = var.access_log_bucket_arn == null ? null : {
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AllowServerAccessLogDelivery"
        Effect    = "Allow"
        Principal = { Service = "logging.s3.amazonaws.com" }
        Action    = "s3:PutObject"
        Resource  = "${var.access_log_bucket_arn}/*"
        Condition = {
          StringEquals = { "aws:SourceAccount" = var.account_id }
          ArnLike      = { "aws:SourceArn" = values(var.bucket_arns) }
        }
      },
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [var.access_log_bucket_arn, "${var.access_log_bucket_arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyOutdatedTls"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [var.access_log_bucket_arn, "${var.access_log_bucket_arn}/*"]
        Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
      },
    ]
  }

  network_restricted = length(var.allowed_cidrs) + length(var.allowed_vpc_endpoint_ids) > 0

  # All condition operators of one statement must hold for it to deny: a request is refused
  # when it comes from none of the CIDRs, through none of the endpoints, and from no exempt
  # admin. Empty lists are left out (an empty condition list is not valid).
  network_condition = {
    for operator, test in {
      NotIpAddress    = { "aws:SourceIp" = var.allowed_cidrs }
      StringNotEquals = { "aws:SourceVpce" = var.allowed_vpc_endpoint_ids }
      ArnNotEquals    = { "aws:PrincipalArn" = var.exempt_principal_arns }
    } : operator => test if length(values(test)[0]) > 0
  }

  bucket_policies = {
    for purpose, bucket_arn in var.bucket_arns : purpose => {
      Version = "2012-10-17"
      Statement = concat([
        {
          Sid       = "DenyInsecureTransport"
          Effect    = "Deny"
          Principal = "*"
          Action    = "s3:*"
          Resource  = [bucket_arn, "${bucket_arn}/*"]
          Condition = { Bool = { "aws:SecureTransport" = "false" } }
        },
        {
          Sid       = "DenyOutdatedTls"
          Effect    = "Deny"
          Principal = "*"
          Action    = "s3:*"
          Resource  = [bucket_arn, "${bucket_arn}/*"]
          Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
        },
        # A header that is sent must be right; a request without one (UploadPart, which is
        # authorized as s3:PutObject and carries no SSE headers, or a PutObject relying on
        # the bucket default, SSE-KMS with this key) is not denied. Hence Null = false
        # beside each test: StringNotEquals alone, and StringNotEqualsIfExists too, is TRUE
        # for a missing key ("evaluate the condition element as true", IAM's condition
        # operators reference), so either would deny every multipart upload.
        {
          Sid       = "DenyIncorrectEncryptionHeader"
          Effect    = "Deny"
          Principal = "*"
          Action    = "s3:PutObject"
          Resource  = "${bucket_arn}/*"
          Condition = {
            Null            = { "s3:x-amz-server-side-encryption" = "false" }
            StringNotEquals = { "s3:x-amz-server-side-encryption" = "aws:kms" }
          }
        },
        {
          Sid       = "DenyIncorrectKmsKey"
          Effect    = "Deny"
          Principal = "*"
          Action    = "s3:PutObject"
          Resource  = "${bucket_arn}/*"
          Condition = {
            Null            = { "s3:x-amz-server-side-encryption-aws-kms-key-id" = "false" }
            StringNotEquals = { "s3:x-amz-server-side-encryption-aws-kms-key-id" = var.kms_key_arn }
          }
        },
        {
          # `x-amz-server-side-encryption: aws:kms` without a key id passes both statements
          # above, and S3 would then encrypt with the AWS-managed aws/s3 key, not this one.
          # PutObject, CreateMultipartUpload and CopyObject carry the header; UploadPart
          # carries neither, so it is not denied.
          Sid       = "DenyKmsWithoutKeyId"
          Effect    = "Deny"
          Principal = "*"
          Action    = "s3:PutObject"
          Resource  = "${bucket_arn}/*"
          Condition = {
            StringEquals = { "s3:x-amz-server-side-encryption" = "aws:kms" }
            Null         = { "s3:x-amz-server-side-encryption-aws-kms-key-id" = "true" }
          }
        },
        {
          Sid       = "DenyCustomerProvidedKeys"
          Effect    = "Deny"
          Principal = "*"
          Action    = "s3:PutObject"
          Resource  = "${bucket_arn}/*"
          Condition = { Null = { "s3:x-amz-server-side-encryption-customer-algorithm" = "false" } }
        },
        ], [
        for statement in [{
          Sid       = "DenyObjectAccessOutsideAllowedNetworks"
          Effect    = "Deny"
          Principal = "*"
          # Every way to read, write, delete or list objects. The service role is not exempt:
          # its credentials, stolen from the instance, must not work from anywhere else.
          # Bucket configuration stays manageable by IAM admins from anywhere (the
          # cloudposse/terraform-aws-s3-bucket#269 lockout), and the exempt admins can
          # empty the buckets.
          Action = [
            "s3:GetObject*",
            "s3:PutObject*",
            "s3:DeleteObject*",
            "s3:RestoreObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
            "s3:ListBucket",
            "s3:ListBucketVersions",
            "s3:ListBucketMultipartUploads",
          ]
          Resource  = [bucket_arn, "${bucket_arn}/*"]
          Condition = local.network_condition
        }] : statement if local.network_restricted
      ])
    }
  }
}
