# The EC2 instances that run the service: Amazon Linux 2023 with the stack's instance
# profile, IMDSv2 only, an encrypted root volume, the rendered user-data, and a security group
# that admits only the service port from the client CIDRs and lets out only HTTPS. Two shapes:
#
# - instance_count = 1: one instance (a new user-data replaces it) with an Elastic IP, whose
#   address the bucket policies admit;
# - instance_count > 1: an Auto Scaling group behind a network load balancer (TCP passthrough:
#   TLS ends on the instances, which share one key and certificate), rolled over to a new
#   launch template version (a new user-data: a new binary, new settings); the bucket policies
#   admit the S3 gateway endpoint the instances reach S3 through.

locals {
  fleet = var.instance_count > 1
  # Without subnets, the default subnets of the default VPC (sorted, so the choice is stable):
  # the first for one instance, all of them for a fleet.
  default_subnets = local.fleet ? length(var.subnet_ids) == 0 : var.subnet_id == null
}

data "aws_vpc" "default" {
  count   = local.default_subnets ? 1 : 0
  default = true
}

data "aws_subnets" "default" {
  count = local.default_subnets ? 1 : 0

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
  subnet_ids = (
    local.fleet
    ? (length(var.subnet_ids) > 0 ? var.subnet_ids : sort(data.aws_subnets.default[0].ids))
    : [var.subnet_id != null ? var.subnet_id : sort(data.aws_subnets.default[0].ids)[0]]
  )
}

data "aws_subnet" "selected" {
  id = local.subnet_ids[0]
}

data "aws_vpc" "selected" {
  id = data.aws_subnet.selected.vpc_id
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

# The load balancer's health checks come from its own addresses in the VPC.
resource "aws_vpc_security_group_ingress_rule" "health_checks" {
  count = local.fleet ? 1 : 0

  security_group_id = aws_security_group.service.id
  description       = "load balancer health checks from the VPC"
  ip_protocol       = "tcp"
  from_port         = var.service_port
  to_port           = var.service_port
  cidr_ipv4         = data.aws_vpc.selected.cidr_block
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
  count = local.fleet ? 0 : 1

  ami                    = data.aws_ssm_parameter.ami.insecure_value
  instance_type          = var.instance_type
  subnet_id              = local.subnet_ids[0]
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
  count = local.fleet ? 0 : 1

  domain = "vpc"
  tags   = { Name = "${var.name_prefix}-service" }
}

resource "aws_eip_association" "service" {
  count = local.fleet ? 0 : 1

  allocation_id = aws_eip.service[0].id
  instance_id   = aws_instance.service[0].id
}

# Addresses from before the fleet shape existed.
moved {
  from = aws_instance.service
  to   = aws_instance.service[0]
}

moved {
  from = aws_eip.service
  to   = aws_eip.service[0]
}

moved {
  from = aws_eip_association.service
  to   = aws_eip_association.service[0]
}

# The fleet: what aws_instance.service is, as a launch template.
resource "aws_launch_template" "service" {
  count = local.fleet ? 1 : 0

  name_prefix            = "${var.name_prefix}-service-"
  image_id               = data.aws_ssm_parameter.ami.insecure_value
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.service.id]
  ebs_optimized          = true
  user_data              = base64encode(var.user_data)
  update_default_version = true

  iam_instance_profile {
    name = var.instance_profile_name
  }

  monitoring {
    enabled = var.detailed_monitoring
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      encrypted             = true
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gib
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${var.name_prefix}-service" }
  }
}

# TCP passthrough: the instances end TLS with the stack's certificate, so clients pin one
# certificate whichever instance answers. Client addresses are preserved, so the security
# group's client_cidrs rules apply as for one instance.
resource "aws_lb" "service" {
  count = local.fleet ? 1 : 0

  name                             = "${var.name_prefix}-service"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = local.subnet_ids
  enable_cross_zone_load_balancing = true
  #checkov:skip=CKV_AWS_150:destroy must run unattended, and the load balancer holds no data (deletion_protection turns it on)
  enable_deletion_protection = var.load_balancer_deletion_protection
  #checkov:skip=CKV_AWS_91:a network load balancer logs TLS listeners only, and this one passes TCP through (the instances log every request)
}

resource "aws_lb_target_group" "service" {
  count = local.fleet ? 1 : 0

  name                 = "${var.name_prefix}-service"
  port                 = var.service_port
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = data.aws_subnet.selected.vpc_id
  deregistration_delay = 60

  # /readyz answers 200 once the buckets and the key answer; no token needed.
  health_check {
    protocol            = "HTTPS"
    path                = "/readyz"
    port                = "traffic-port"
    healthy_threshold   = 3
    unhealthy_threshold = 3
    interval            = 15
  }
}

resource "aws_lb_listener" "service" {
  count = local.fleet ? 1 : 0

  load_balancer_arn = aws_lb.service[0].arn
  port              = var.service_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.service[0].arn
  }
}

# A new launch template version (a new binary, new settings) rolls over the group: instances
# are replaced a part at a time, each new one in service (healthy behind the load balancer)
# before the next old one goes.
resource "aws_autoscaling_group" "service" {
  count = local.fleet ? 1 : 0

  name_prefix               = "${var.name_prefix}-service-"
  min_size                  = coalesce(var.instance_count_min, var.instance_count)
  max_size                  = coalesce(var.instance_count_max, var.instance_count)
  desired_capacity          = var.instance_count
  vpc_zone_identifier       = local.subnet_ids
  target_group_arns         = [aws_lb_target_group.service[0].arn]
  health_check_type         = "ELB"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.service[0].id
    version = aws_launch_template.service[0].latest_version
  }

  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name_prefix}-service"
    propagate_at_launch = true
  }
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
