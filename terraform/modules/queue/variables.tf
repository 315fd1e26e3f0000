variable "name" {
  description = "Name of the work queue; the dead-letter queue is <name>-dead-letter."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,68}$", var.name))
    error_message = "name must be 1-68 letters, digits, '-' or '_' (SQS names are at most 80 characters, and the dead-letter queue adds 12)."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed key both queues are encrypted with; its policy must admit S3 (the sender) and the service role through SQS (see modules/policy-documents)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.kms_key_arn))
    error_message = "kms_key_arn must be a full KMS key ARN."
  }
}

variable "bucket_name" {
  description = "The bucket whose object-created events go to the queue (the initial bucket)."
  type        = string
}

variable "key_prefix" {
  description = "Only objects under this prefix are announced."
  type        = string
  default     = "raw/"
}

variable "visibility_timeout_seconds" {
  description = "How long a received message stays hidden; the service extends it every third of it while a file is processed, so it bounds how soon a file of an instance that died is processed by another."
  type        = number
  default     = 120

  validation {
    condition     = var.visibility_timeout_seconds >= 30 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be between 30 and 43200 (12 hours)."
  }
}

variable "max_receive_count" {
  description = "Deliveries of a message before it goes to the dead-letter queue: the retry budget of a file that keeps failing."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 2 && var.max_receive_count <= 1000 && floor(var.max_receive_count) == var.max_receive_count
    error_message = "max_receive_count must be a whole number between 2 and 1000."
  }
}

variable "message_retention_seconds" {
  description = "How long an unprocessed message is kept (the scan of the initial bucket catches files whose message expired)."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 3600 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 3600 (1 hour) and 1209600 (14 days)."
  }
}

variable "policy_json" {
  description = "Queue policies by purpose (work, dead_letter): the queue_policy_json output of modules/policy-documents."
  type        = map(string)

  validation {
    condition     = alltrue([for purpose in ["work", "dead_letter"] : contains(keys(var.policy_json), purpose)])
    error_message = "policy_json needs a work and a dead_letter policy."
  }
}
