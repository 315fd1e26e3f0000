variable "name_prefix" {
  description = "Prefix of the names and Name tags of the host's resources."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters of a-z, 0-9 and '-'."
  }
}

variable "region" {
  description = "Region of the stack (names the S3 gateway endpoint's service)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like eu-west-1."
  }
}

variable "subnet_id" {
  description = "Subnet of the instance; it needs a route to an internet gateway (for the Elastic IP). Null picks the first default subnet of the default VPC."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null || can(regex("^subnet-[0-9a-f]{8,17}$", var.subnet_id))
    error_message = "subnet_id must be null or an id like subnet-0123456789abcdef0."
  }
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach the service port. At least one; a /0 block is refused."
  type        = list(string)

  validation {
    condition     = length(var.client_cidrs) > 0
    error_message = "client_cidrs must name at least one CIDR: nobody could reach the service otherwise."
  }

  validation {
    condition     = alltrue([for cidr in var.client_cidrs : can(cidrhost(cidr, 0)) && !endswith(cidr, "/0")])
    error_message = "client_cidrs must contain only valid IPv4 CIDR blocks, none of them /0."
  }
}

variable "service_port" {
  description = "TCP port the service listens on (the port of service_listen_address)."
  type        = number

  validation {
    condition     = var.service_port >= 1024 && var.service_port <= 65535 && floor(var.service_port) == var.service_port
    error_message = "service_port must be a whole number from 1024 to 65535."
  }
}

variable "instance_type" {
  description = "EC2 instance type; x86_64, because the AMI and the delivered binary are."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type)) && !can(regex("^[a-z]+[0-9]+[a-z-]*g[a-z-]*\\.", var.instance_type))
    error_message = "instance_type must be an x86_64 type such as t3.small; Graviton (arm64) types like t4g.small cannot run the x86_64 binary."
  }
}

variable "instance_profile_name" {
  description = "Instance profile of the service role (modules/iam)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9+=,.@_-]{1,128}$", var.instance_profile_name))
    error_message = "instance_profile_name must be a valid instance profile name."
  }
}

variable "user_data" {
  description = "The rendered user-data script (templates/user-data.sh.tpl)."
  type        = string

  validation {
    condition     = startswith(var.user_data, "#!/bin/bash\n") && length(var.user_data) <= 16384
    error_message = "user_data must be a bash script of at most 16 KiB (the EC2 limit)."
  }
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics for the instance (billed)."
  type        = bool
  default     = true
}

variable "root_volume_size_gib" {
  description = "Size of the encrypted gp3 root volume in GiB."
  type        = number
  default     = 16

  validation {
    condition     = var.root_volume_size_gib >= 8 && var.root_volume_size_gib <= 1024 && floor(var.root_volume_size_gib) == var.root_volume_size_gib
    error_message = "root_volume_size_gib must be a whole number from 8 (the AMI's size) to 1024."
  }
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter holding the AMI id (Amazon Linux 2023, x86_64)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

  validation {
    condition     = startswith(var.ami_ssm_parameter, "/aws/service/ami-amazon-linux-latest/al2023-ami-") && endswith(var.ami_ssm_parameter, "-x86_64")
    error_message = "ami_ssm_parameter must name an Amazon Linux 2023 x86_64 AMI parameter."
  }
}

variable "s3_gateway_endpoint_route_table_ids" {
  description = "Route tables of the instance's subnet to attach a new S3 gateway endpoint to; the bucket policies then admit the endpoint instead of the Elastic IP. Empty: no endpoint."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.s3_gateway_endpoint_route_table_ids : can(regex("^rtb-[0-9a-f]{8,17}$", id))])
    error_message = "s3_gateway_endpoint_route_table_ids must contain ids like rtb-0123456789abcdef0."
  }
}

variable "instance_count" {
  description = "Instances running the service. 1: one instance with an Elastic IP, no load balancer. More: an Auto Scaling group of this desired size behind a network load balancer; it needs s3_gateway_endpoint_route_table_ids (the bucket policies admit the endpoint, not addresses)."
  type        = number
  default     = 1

  validation {
    condition     = var.instance_count >= 1 && var.instance_count <= 50 && floor(var.instance_count) == var.instance_count
    error_message = "instance_count must be a whole number from 1 to 50."
  }

  validation {
    condition     = var.instance_count == 1 || length(var.s3_gateway_endpoint_route_table_ids) > 0
    error_message = "instance_count > 1 needs s3_gateway_endpoint_route_table_ids: a fleet's instances have no fixed addresses, so the bucket policies admit them by their S3 gateway endpoint (aws:SourceVpce)."
  }
}

variable "instance_count_min" {
  description = "Smallest size of the fleet's Auto Scaling group; null: instance_count."
  type        = number
  default     = null

  validation {
    condition     = var.instance_count_min == null || try(var.instance_count_min >= 1 && var.instance_count_min <= var.instance_count, false)
    error_message = "instance_count_min must be from 1 to instance_count."
  }
}

variable "instance_count_max" {
  description = "Largest size of the fleet's Auto Scaling group; null: instance_count."
  type        = number
  default     = null

  validation {
    condition     = var.instance_count_max == null || try(var.instance_count_max >= var.instance_count && var.instance_count_max <= 100, false)
    error_message = "instance_count_max must be from instance_count to 100."
  }
}

variable "subnet_ids" {
  description = "Subnets of the fleet (instance_count > 1), in at least two availability zones for the load balancer; they need public IPs on launch or a NAT for AWS APIs other than S3. Empty: the default subnets of the default VPC."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", id))])
    error_message = "subnet_ids must contain ids like subnet-0123456789abcdef0."
  }
}

variable "load_balancer_deletion_protection" {
  description = "Protect the fleet's load balancer from deletion (destroy then fails until it is turned off)."
  type        = bool
  default     = false
}
