variable "region" {
  description = "AWS region of every resource. The only place the region is set."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region code such as eu-west-1."
  }
}

variable "environment" {
  description = "Environment name (the <env> of terraform/environments/<env>.tfvars); used in tags."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,31}$", var.environment))
    error_message = "environment must be 1-32 characters of a-z, 0-9 and '-'."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name: buckets, key alias, role, instance profile."
  type        = string

  validation {
    # Same rule as the xtask's validate_name_prefix: derived bucket names stay within 63 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters of a-z, 0-9 and '-', start with a letter and not end with '-'."
  }
}

variable "initial_bucket_name" {
  description = "Name of the bucket for raw files; default <name_prefix>-initial-<account id>."
  type        = string
  default     = null

  validation {
    condition     = var.initial_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.initial_bucket_name))
    error_message = "initial_bucket_name must be a valid S3 bucket name."
  }
}

variable "final_bucket_name" {
  description = "Name of the bucket for processed files; default <name_prefix>-final-<account id>."
  type        = string
  default     = null

  validation {
    condition     = var.final_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.final_bucket_name))
    error_message = "final_bucket_name must be a valid S3 bucket name."
  }
}

variable "allowed_cidrs" {
  description = "Source CIDRs (aws:SourceIp) allowed to read and write objects. Empty with allowed_vpc_endpoint_ids empty means no network restriction (a check warns)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.allowed_cidrs : can(cidrhost(cidr, 0))])
    error_message = "allowed_cidrs must contain only valid CIDR blocks."
  }

  validation {
    condition     = !anytrue([for cidr in var.allowed_cidrs : endswith(cidr, "/0")])
    error_message = "allowed_cidrs must not contain a /0 block: that admits the whole internet."
  }
}

variable "allowed_vpc_endpoint_ids" {
  description = "S3 gateway/interface VPC endpoint ids (aws:SourceVpce) allowed to read and write objects."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.allowed_vpc_endpoint_ids : can(regex("^vpce-[0-9a-f]{8,17}$", id))])
    error_message = "allowed_vpc_endpoint_ids must contain ids like vpce-0123456789abcdef0."
  }
}

variable "admin_principal_arns" {
  description = "IAM roles or users (Terraform's, the operators') exempt from the network restriction on objects, so they can empty and manage the buckets from anywhere. Role ARNs, not assumed-role session ARNs: the policy matches aws:PrincipalArn, which is the role's ARN."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/", arn))])
    error_message = "admin_principal_arns must contain IAM role or user ARNs (arn:aws:iam::<account>:role/<name>); an assumed-role ARN (arn:aws:sts::...:assumed-role/...) never matches aws:PrincipalArn."
  }
}

variable "kms_deletion_window_days" {
  description = "Days a scheduled key deletion waits before the key is gone (7-30)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30 && floor(var.kms_deletion_window_days) == var.kms_deletion_window_days
    error_message = "kms_deletion_window_days must be a whole number from 7 to 30."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent object versions are deleted in both buckets."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of at least 1."
  }
}

variable "raw_object_expiration_days" {
  description = "Days after which current raw objects in the initial bucket expire; null keeps them. An expired file is no longer served: GET and status answer 404, although its processed output stays in the final bucket until deleted."
  type        = number
  default     = null

  validation {
    condition     = var.raw_object_expiration_days == null || try(var.raw_object_expiration_days >= 1 && floor(var.raw_object_expiration_days) == var.raw_object_expiration_days, false)
    error_message = "raw_object_expiration_days must be null or a whole number of at least 1."
  }
}

variable "force_destroy" {
  description = "Allow destroying buckets that still hold objects. Keep false outside throwaway environments."
  type        = bool
  default     = false
}

variable "service_artifact" {
  description = "The service binary in the artifact bucket, as `cargo xtask deploy` uploads it: bucket, key (service/<sha256>/filepipe-service), SHA-256, and the bucket's KMS key (null: the AWS-managed aws/s3 key). The instance role may read exactly that prefix."
  type = object({
    bucket      = string
    key         = string
    sha256      = string
    kms_key_arn = optional(string)
  })
  default = null

  validation {
    condition     = var.service_artifact == null || try(can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.service_artifact.bucket)) && can(regex("^[0-9a-f]{64}$", var.service_artifact.sha256)) && var.service_artifact.key == "service/${var.service_artifact.sha256}/filepipe-service", false)
    error_message = "service_artifact needs a bucket name, a 64-hex-digit sha256 and the key service/<sha256>/filepipe-service."
  }

  validation {
    condition     = var.service_artifact == null || try(var.service_artifact.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.service_artifact.kms_key_arn)), false)
    error_message = "service_artifact.kms_key_arn must be null or a full KMS key ARN."
  }

  validation {
    condition     = (var.service_artifact == null) != (var.service_binary_url == null)
    error_message = "Set exactly one of service_artifact (what `cargo xtask deploy` uploads) and service_binary_url (a release published elsewhere)."
  }
}

variable "service_binary_url" {
  description = "Instead of service_artifact: an HTTPS URL of a service binary published elsewhere, pinned by service_binary_sha256 (see templates/user-data.sh.tpl)."
  type        = string
  default     = null

  validation {
    condition     = var.service_binary_url == null || try(can(regex("^https://[A-Za-z0-9._~:/?#@!$&()*+,;=%-]+$", var.service_binary_url)) && !strcontains(var.service_binary_url, "'"), false)
    error_message = "service_binary_url must be an https:// URL without quotes or spaces."
  }
}

variable "service_binary_sha256" {
  description = "SHA-256 (hex) of the binary at service_binary_url; the instance refuses any other file."
  type        = string
  default     = null

  validation {
    condition     = var.service_binary_url == null || can(regex("^[0-9a-f]{64}$", var.service_binary_sha256))
    error_message = "service_binary_sha256 must be 64 lowercase hex characters when service_binary_url is set."
  }
}

variable "service_listen_address" {
  description = "host:port the service listens on (unprivileged port, so the unit needs no capabilities)."
  type        = string
  default     = "0.0.0.0:8080"

  validation {
    condition     = can(regex("^[0-9.]+:[0-9]{4,5}$", var.service_listen_address)) && try(tonumber(split(":", var.service_listen_address)[1]) >= 1024 && tonumber(split(":", var.service_listen_address)[1]) <= 65535, false)
    error_message = "service_listen_address must be IPv4:port with a port from 1024 to 65535."
  }
}

variable "service_processor" {
  description = "Processor the service applies between the initial and final bucket."
  type        = string
  default     = "identity"

  validation {
    condition     = contains(["identity", "gunzip", "jsonl"], var.service_processor)
    error_message = "service_processor must be one of identity, gunzip, jsonl."
  }
}

variable "tags" {
  description = "Extra tags on every resource (merged into the provider's default_tags)."
  type        = map(string)
  default     = {}
}

variable "access_log_bucket_name" {
  description = "Name of the bucket receiving the data buckets' server access logs; default <name_prefix>-access-logs-<account id>."
  type        = string
  default     = null

  validation {
    condition     = var.access_log_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.access_log_bucket_name))
    error_message = "access_log_bucket_name must be a valid S3 bucket name."
  }
}

variable "access_log_retention_days" {
  description = "Days the server access logs are kept."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_retention_days >= 1 && floor(var.access_log_retention_days) == var.access_log_retention_days
    error_message = "access_log_retention_days must be a whole number of at least 1."
  }
}

variable "enable_host" {
  description = "Run the service on an EC2 instance of the stack (modules/host). False keeps the seed's shape: attach instance_profile_name to a server of your own, and pass it the user_data output."
  type        = bool
  default     = true
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach the service port on the instance. Required (at least one) with enable_host; /0 is refused. Validated by modules/host."
  type        = list(string)
  default     = []
}

variable "subnet_id" {
  description = "Subnet of the instance, with a route to an internet gateway. Null: the first default subnet of the default VPC. Validated by modules/host."
  type        = string
  default     = null
}

variable "instance_type" {
  description = "EC2 instance type of the host (x86_64). Validated by modules/host."
  type        = string
  default     = "t3.small"
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics for the instance (billed)."
  type        = bool
  default     = true
}

variable "root_volume_size_gib" {
  description = "Size of the instance's encrypted gp3 root volume in GiB (8-1024). Validated by modules/host."
  type        = number
  default     = 16
}

variable "s3_gateway_endpoint_route_table_ids" {
  description = "Route tables to attach a new S3 gateway VPC endpoint to. Set: the bucket policies admit that endpoint (aws:SourceVpce) instead of the Elastic IP. Empty: no endpoint. Validated by modules/host."
  type        = list(string)
  default     = []
}

variable "queue_visibility_timeout_seconds" {
  description = "Seconds a received queue message stays hidden (the service extends it while a file is processed): how soon a file of an instance that died is processed by another. Validated by modules/queue."
  type        = number
  default     = 120
}

variable "queue_max_receive_count" {
  description = "Deliveries of a file's message before it goes to the dead-letter queue (the retry budget of a file that keeps failing). Validated by modules/queue."
  type        = number
  default     = 5
}

variable "instance_count" {
  description = "Instances running the service (with enable_host). 1: one instance with an Elastic IP. More: an Auto Scaling group behind a network load balancer, which needs s3_gateway_endpoint_route_table_ids. Validated by modules/host."
  type        = number
  default     = 1
}

variable "instance_count_min" {
  description = "Smallest size of the fleet's Auto Scaling group; null: instance_count."
  type        = number
  default     = null
}

variable "instance_count_max" {
  description = "Largest size of the fleet's Auto Scaling group; null: instance_count."
  type        = number
  default     = null
}

variable "subnet_ids" {
  description = "Subnets of a fleet (instance_count > 1), in two or more availability zones; empty: the default VPC's default subnets. One instance uses subnet_id."
  type        = list(string)
  default     = []
}

variable "load_balancer_deletion_protection" {
  description = "Protect a fleet's load balancer from deletion."
  type        = bool
  default     = false
}
