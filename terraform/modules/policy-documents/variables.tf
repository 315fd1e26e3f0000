variable "region" {
  description = "Region of the stack (the key policy admits S3 of this region)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like eu-west-1."
  }
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, aws-us-gov)."
  type        = string

  validation {
    condition     = contains(["aws", "aws-cn", "aws-us-gov"], var.partition)
    error_message = "partition must be aws, aws-cn or aws-us-gov."
  }
}

variable "account_id" {
  description = "Account that owns the key (its root keeps the key manageable)."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be 12 digits."
  }
}

variable "service_role_arn" {
  description = "The service's EC2 role."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/", var.service_role_arn))
    error_message = "service_role_arn must be an IAM role ARN."
  }
}

variable "kms_key_arn" {
  description = "The data key. Null renders only the documents that do not need it (key policy, trust policy)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn must be a full KMS key ARN."
  }
}

variable "bucket_arns" {
  description = "Bucket ARNs by purpose (initial, final); a bucket policy is rendered for each."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.bucket_arns) : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]+$", arn))])
    error_message = "bucket_arns must hold bucket ARNs without wildcards."
  }
}

variable "allowed_cidrs" {
  description = "Source CIDRs allowed to reach objects."
  type        = list(string)
  default     = []
}

variable "allowed_vpc_endpoint_ids" {
  description = "VPC endpoints allowed to reach objects."
  type        = list(string)
  default     = []
}

variable "exempt_principal_arns" {
  description = "IAM roles or users that may reach objects from any network (operators, Terraform). Never the service role."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.exempt_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/", arn))])
    error_message = "exempt_principal_arns must be IAM role or user ARNs; an assumed-role ARN (arn:aws:sts::...:assumed-role/...) never matches aws:PrincipalArn."
  }
}

variable "service_artifact" {
  description = "Where the instance downloads the service binary with its role: bucket ARN, key prefix (service/<sha256>/) and the bucket's KMS key (null: the AWS-managed aws/s3 key). Null: the binary comes from elsewhere."
  type = object({
    bucket_arn  = string
    key_prefix  = string
    kms_key_arn = optional(string)
  })
  default = null

  validation {
    condition     = var.service_artifact == null || try(can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]+$", var.service_artifact.bucket_arn)) && can(regex("^service/[0-9a-f]{64}/$", var.service_artifact.key_prefix)), false)
    error_message = "service_artifact needs a bucket ARN and a key prefix service/<sha256>/."
  }
}

variable "access_log_bucket_arn" {
  description = "The bucket receiving the data buckets' server access logs; null renders no log bucket policy."
  type        = string
  default     = null

  validation {
    condition     = var.access_log_bucket_arn == null || can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]+$", var.access_log_bucket_arn))
    error_message = "access_log_bucket_arn must be a bucket ARN."
  }
}

variable "parameter_arns" {
  description = "SSM parameters of the service's doors by purpose: auth_token (SecureString under the stack key, read by the role), tls_certificate (written by the role), tls_rotation (read by the role), tls_key (a fleet's shared key, SecureString; with it the certificate is read, not written). Empty: no grants."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.parameter_arns) : can(regex("^arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/", arn))]) && alltrue([for purpose in keys(var.parameter_arns) : contains(["auth_token", "tls_certificate", "tls_rotation", "tls_key"], purpose)])
    error_message = "parameter_arns maps auth_token, tls_certificate, tls_rotation and (a fleet's) tls_key to SSM parameter ARNs."
  }
}

variable "queue_arns" {
  description = "The processing queues by purpose: work (receives the initial bucket's raw/ events; the role consumes it) and dead_letter (where its poison messages end). Empty: no queue grants or policies."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.queue_arns) : can(regex("^arn:aws[a-z-]*:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,80}$", arn))]) && alltrue([for purpose in keys(var.queue_arns) : contains(["work", "dead_letter"], purpose)])
    error_message = "queue_arns maps work and dead_letter to SQS queue ARNs."
  }
}
