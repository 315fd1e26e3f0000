variable "name_prefix" {
  description = "Prefix of the role, policy and instance profile names."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters of a-z, 0-9 and '-'."
  }
}

variable "bucket_arns" {
  description = "ARNs of the buckets the service reads and writes."
  type        = list(string)

  validation {
    condition     = length(var.bucket_arns) > 0 && alltrue([for arn in var.bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]+$", arn))])
    error_message = "bucket_arns must be a non-empty list of bucket ARNs (no wildcards, no object paths)."
  }
}

variable "kms_key_arn" {
  description = "ARN of the key the service encrypts and decrypts with."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (not an alias, not a wildcard)."
  }
}
