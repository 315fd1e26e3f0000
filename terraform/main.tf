data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id          = data.aws_caller_identity.current.account_id
  partition           = data.aws_partition.current.partition
  initial_bucket_name = coalesce(var.initial_bucket_name, "${var.name_prefix}-initial-${local.account_id}")
  final_bucket_name   = coalesce(var.final_bucket_name, "${var.name_prefix}-final-${local.account_id}")
  log_bucket_name     = coalesce(var.access_log_bucket_name, "${var.name_prefix}-access-logs-${local.account_id}")

  # Known before the buckets exist, so the policies do not wait for them.
  bucket_arns = {
    initial = "arn:${local.partition}:s3:::${local.initial_bucket_name}"
    final   = "arn:${local.partition}:s3:::${local.final_bucket_name}"
  }

  # The host's Elastic IP (or its S3 gateway endpoint) joins the networks the bucket
  # policies admit; the address is allocated before the instance, so there is no cycle.
  allowed_cidrs            = distinct(concat(var.allowed_cidrs, flatten(module.host[*].bucket_access.cidrs)))
  allowed_vpc_endpoint_ids = distinct(concat(var.allowed_vpc_endpoint_ids, flatten(module.host[*].bucket_access.vpc_endpoint_ids)))

  service_port = tonumber(split(":", var.service_listen_address)[1])

  # Known before the queues exist, so the key policy does not wait for them.
  queue_name = "${var.name_prefix}-work"
  queue_arns = {
    work        = "arn:${local.partition}:sqs:${var.region}:${local.account_id}:${local.queue_name}"
    dead_letter = "arn:${local.partition}:sqs:${var.region}:${local.account_id}:${local.queue_name}-dead-letter"
  }

  # SSM parameters of the service's doors. The token is a SecureString under the stack's key
  # that `cargo xtask deploy` creates with the SDK (never in Terraform's state or plans);
  # the certificate is published by the instance, which made its key (never leaves it); a
  # new value of the rotation parameter asks the instance for a new key and certificate.
  # A fleet's instances share one key and certificate, which `cargo xtask deploy` makes for
  # the load balancer's name and keeps in SSM (the key a SecureString under the stack's key);
  # only a fleet's role reads the key.
  fleet = var.enable_host && var.instance_count > 1
  parameter_names = {
    auth_token      = "/${var.name_prefix}/auth-token"
    tls_certificate = "/${var.name_prefix}/tls-certificate"
    tls_rotation    = "/${var.name_prefix}/tls-rotation"
    tls_key         = "/${var.name_prefix}/tls-key"
  }
  parameter_arns = {
    for purpose, name in local.parameter_names :
    purpose => "arn:${local.partition}:ssm:${var.region}:${local.account_id}:parameter${name}"
    if purpose != "tls_key" || local.fleet
  }

  # Content-addressed in the artifact bucket `cargo xtask deploy` uploads to.
  artifact_key_prefix = var.service_artifact == null ? null : "service/${var.service_artifact.sha256}/"

  user_data = templatefile("${path.module}/templates/user-data.sh.tpl", {
    region                = var.region
    initial_bucket        = module.initial_bucket.bucket_name
    final_bucket          = module.final_bucket.bucket_name
    kms_key_arn           = module.kms.key_arn
    listen_address        = var.service_listen_address
    processor             = var.service_processor
    queue_url             = module.queue.queue_url
    service_binary_s3_uri = var.service_artifact == null ? "" : "s3://${var.service_artifact.bucket}/${var.service_artifact.key}"
    service_binary_url    = var.service_binary_url == null ? "" : var.service_binary_url
    service_binary_sha256 = var.service_artifact == null ? var.service_binary_sha256 : var.service_artifact.sha256
    token_parameter       = local.parameter_names.auth_token
    certificate_parameter = local.parameter_names.tls_certificate
    rotation_parameter    = local.parameter_names.tls_rotation
    tls_key_parameter     = local.fleet ? local.parameter_names.tls_key : ""
    # The address the certificate names; without a host, the server's own (from IMDS).
    # (A fleet has no such address: coalesce fails on null, and try gives "".)
    tls_ip = try(coalesce(module.host[0].public_ip), "")
  })
}

# The documents that do not depend on the key: the key policy needs the role to exist first
# (KMS rejects unknown principals), so the role is created before the key.
module "key_policies" {
  source = "./modules/policy-documents"

  region           = var.region
  partition        = local.partition
  account_id       = local.account_id
  service_role_arn = module.iam.role_arn
  bucket_arns      = local.bucket_arns
  parameter_arns   = local.parameter_arns
  queue_arns       = local.queue_arns
}

module "access_policies" {
  source = "./modules/policy-documents"

  region                   = var.region
  partition                = local.partition
  account_id               = local.account_id
  service_role_arn         = module.iam.role_arn
  kms_key_arn              = module.kms.key_arn
  bucket_arns              = local.bucket_arns
  allowed_cidrs            = local.allowed_cidrs
  allowed_vpc_endpoint_ids = local.allowed_vpc_endpoint_ids
  # Operators may reach objects from any network; the service role may not.
  exempt_principal_arns = var.admin_principal_arns
  access_log_bucket_arn = "arn:${local.partition}:s3:::${local.log_bucket_name}"
  parameter_arns        = local.parameter_arns
  queue_arns            = local.queue_arns
  service_artifact = var.service_artifact == null ? null : {
    bucket_arn  = "arn:${local.partition}:s3:::${var.service_artifact.bucket}"
    key_prefix  = local.artifact_key_prefix
    kms_key_arn = var.service_artifact.kms_key_arn
  }
}

module "iam" {
  source = "./modules/iam"

  role_name               = "${var.name_prefix}-service"
  assume_role_policy_json = module.key_policies.assume_role_policy_json
  policy_json             = module.access_policies.service_role_policy_json
}

module "kms" {
  source = "./modules/kms"

  name_prefix          = var.name_prefix
  deletion_window_days = var.kms_deletion_window_days
  policy_json          = module.key_policies.key_policy_json
}

module "initial_bucket" {
  source = "./modules/s3"

  bucket_name                        = local.initial_bucket_name
  kms_key_arn                        = module.kms.key_arn
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  current_version_expiration_days    = var.raw_object_expiration_days
  policy_json                        = module.access_policies.bucket_policy_json["initial"]
  access_logs                        = { bucket = module.access_logs.bucket_name }
}

module "final_bucket" {
  source = "./modules/s3"

  bucket_name                        = local.final_bucket_name
  kms_key_arn                        = module.kms.key_arn
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  current_version_expiration_days    = null
  policy_json                        = module.access_policies.bucket_policy_json["final"]
  access_logs                        = { bucket = module.access_logs.bucket_name }
}

module "queue" {
  source = "./modules/queue"

  name                       = local.queue_name
  kms_key_arn                = module.kms.key_arn
  bucket_name                = module.initial_bucket.bucket_name
  visibility_timeout_seconds = var.queue_visibility_timeout_seconds
  max_receive_count          = var.queue_max_receive_count
  policy_json                = module.access_policies.queue_policy_json
}

module "access_logs" {
  source = "./modules/access-logs"

  bucket_name                        = local.log_bucket_name
  retention_days                     = var.access_log_retention_days
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  force_destroy                      = var.force_destroy
  policy_json                        = module.access_policies.access_log_bucket_policy_json
}

module "host" {
  source = "./modules/host"
  count  = var.enable_host ? 1 : 0

  name_prefix                         = var.name_prefix
  region                              = var.region
  subnet_id                           = var.subnet_id
  client_cidrs                        = var.client_cidrs
  service_port                        = local.service_port
  instance_type                       = var.instance_type
  instance_profile_name               = module.iam.instance_profile_name
  user_data                           = local.user_data
  detailed_monitoring                 = var.detailed_monitoring
  root_volume_size_gib                = var.root_volume_size_gib
  s3_gateway_endpoint_route_table_ids = var.s3_gateway_endpoint_route_table_ids
  instance_count                      = var.instance_count
  instance_count_min                  = var.instance_count_min
  instance_count_max                  = var.instance_count_max
  subnet_ids                          = var.subnet_ids
  load_balancer_deletion_protection   = var.load_balancer_deletion_protection
}

check "bucket_access_is_network_restricted" {
  assert {
    condition     = length(local.allowed_cidrs) + length(local.allowed_vpc_endpoint_ids) > 0
    error_message = "No host, and neither allowed_cidrs nor allowed_vpc_endpoint_ids is set: object access to both buckets is NOT restricted by source network (IAM, TLS and encryption rules still apply)."
  }
}

