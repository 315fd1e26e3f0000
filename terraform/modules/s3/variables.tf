variable "bucket_name" {
  description = "Globally unique name of the bucket."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed key for default SSE-KMS; uploads naming another key are denied."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn must be a full KMS key ARN (S3 reports key ids as ARNs)."
  }
}

variable "force_destroy" {
  description = "Allow destroying the bucket while it holds objects."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent object versions are deleted."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "current_version_expiration_days" {
  description = "Days after which current objects expire; null keeps them."
  type        = number
  default     = null

  validation {
    condition     = var.current_version_expiration_days == null || try(var.current_version_expiration_days >= 1, false)
    error_message = "current_version_expiration_days must be null or at least 1."
  }
}

variable "policy_json" {
  description = "Bucket policy (modules/policy-documents bucket_policy_json[<purpose>])."
  type        = string

  validation {
    condition     = can(jsondecode(var.policy_json).Statement)
    error_message = "policy_json must be a policy document."
  }
}

variable "access_logs" {
  description = "Where this bucket's server access logs go: { bucket = <name> } of modules/access-logs; null: no access logging. An object, so whether logging is on is known while the name is not."
  type = object({
    bucket = string
  })
  default = null
}
