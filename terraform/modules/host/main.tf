# The EC2 instance that runs the service: Amazon Linux 2023 with the stack's instance profile,
# IMDSv2 only, an encrypted root volume, the rendered user-data (a change replaces the
# instance), a security group that admits only the service port from the client CIDRs and
# lets out only HTTPS, and an Elastic IP whose address the bucket policies admit.

# Without a subnet, the first default subnet of the default VPC (sorted, so the choice is stable).
data "aws_vpc" "default" {
  count   = var.subnet_id == null ? 1 : 0
  default = true
}

data "aws_subnets" "default" {
  count = var.subnet_id == null ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default[0].id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

locals {
  subnet_id = var.subnet_id != null ? var.subnet_id : sort(data.aws_subnets.default[0].ids)[0]
}

data "aws_subnet" "selected" {
  id = local.subnet_id
}

# AWS publishes the current AMI id of each Amazon Linux release as a public SSM parameter.
data "aws_ssm_parameter" "ami" {
  name = var.ami_ssm_parameter
}

resource "aws_security_group" "service" {
  name_prefix = "${var.name_prefix}-service-"
  description = "filepipe service: the service port from client CIDRs in, HTTPS out"
  vpc_id      = data.aws_subnet.selected.vpc_id

  tags = { Name = "${var.name_prefix}-service" }

  # A replacement group exists before the instance leaves the old one.
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "service_port" {
  for_each = toset(var.client_cidrs)

  security_group_id = aws_security_group.service.id
  description       = "filepipe API from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = var.service_port
  to_port           = var.service_port
  cidr_ipv4         = each.value
}

# Everything the instance talks to (S3, KMS, STS, the package repositories) is HTTPS. DNS, NTP
# and the metadata service are link-local and not filtered by security groups.
resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.service.id
  description       = "HTTPS to AWS APIs and package repositories"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_instance" "service" {
  ami                    = data.aws_ssm_parameter.ami.insecure_value
  instance_type          = var.instance_type
  subnet_id              = local.subnet_id
  vpc_security_group_ids = [aws_security_group.service.id]
  iam_instance_profile   = var.instance_profile_name
  monitoring             = var.detailed_monitoring
  ebs_optimized          = true

  user_data                   = var.user_data
  user_data_replace_on_change = true

  # IMDSv2 only, and one hop: a container on the host cannot reach the role's credentials.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    encrypted             = true
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gib
    delete_on_termination = true
  }

  tags = { Name = "${var.name_prefix}-service" }

  lifecycle {
    # A newer AMI alone does not replace a running instance; a new user-data (new binary,
    # new settings) does, through user_data_replace_on_change.
    ignore_changes = [ami]
  }
}

# Allocated apart from the instance, so its address is known before the instance exists: the
# bucket policies admit it without waiting for the instance, and without a cycle.
resource "aws_eip" "service" {
  domain = "vpc"
  tags   = { Name = "${var.name_prefix}-service" }
}

resource "aws_eip_association" "service" {
  allocation_id = aws_eip.service.id
  instance_id   = aws_instance.service.id
}

# Optional: S3 traffic from these route tables goes through a gateway endpoint, and the bucket
# policies admit the endpoint (aws:SourceVpce) instead of the Elastic IP.
resource "aws_vpc_endpoint" "s3" {
  count = length(var.s3_gateway_endpoint_route_table_ids) > 0 ? 1 : 0

  vpc_id            = data.aws_subnet.selected.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.s3_gateway_endpoint_route_table_ids

  tags = { Name = "${var.name_prefix}-s3" }
}
