variable "bucket_name" {
  description = "Globally unique name of the log bucket."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "retention_days" {
  description = "Days a log object is kept."
  type        = number
  default     = 365

  validation {
    condition     = var.retention_days >= 1 && floor(var.retention_days) == var.retention_days
    error_message = "retention_days must be a whole number of at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent versions of log objects are deleted."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of at least 1."
  }
}

variable "force_destroy" {
  description = "Allow destroying the bucket while it holds logs."
  type        = bool
  default     = false
}

variable "policy_json" {
  description = "Bucket policy (modules/policy-documents access_log_bucket_policy_json): log delivery from the data buckets, TLS only."
  type        = string

  validation {
    condition     = can(jsondecode(var.policy_json).Statement)
    error_message = "policy_json must be a policy document."
  }
}
