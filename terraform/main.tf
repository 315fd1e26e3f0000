data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id          = data.aws_caller_identity.current.account_id
  initial_bucket_name = coalesce(var.initial_bucket_name, "${var.name_prefix}-initial-${local.account_id}")
  final_bucket_name   = coalesce(var.final_bucket_name, "${var.name_prefix}-final-${local.account_id}")

  # Known before the buckets exist, so the role policy does not wait for them.
  initial_bucket_arn = "arn:${data.aws_partition.current.partition}:s3:::${local.initial_bucket_name}"
  final_bucket_arn   = "arn:${data.aws_partition.current.partition}:s3:::${local.final_bucket_name}"

  # Principals that may reach objects from any network: operators and the service itself.
  exempt_principal_arns = concat(var.admin_principal_arns, [module.iam.role_arn])
}

module "iam" {
  source = "./modules/iam"

  name_prefix = var.name_prefix
  bucket_arns = [local.initial_bucket_arn, local.final_bucket_arn]
  kms_key_arn = module.kms.key_arn
}

module "kms" {
  source = "./modules/kms"

  name_prefix          = var.name_prefix
  deletion_window_days = var.kms_deletion_window_days
  service_role_arn     = module.iam.role_arn
}

module "initial_bucket" {
  source = "./modules/s3"

  bucket_name                        = local.initial_bucket_name
  kms_key_arn                        = module.kms.key_arn
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  current_version_expiration_days    = var.raw_object_expiration_days
  allowed_cidrs                      = var.allowed_cidrs
  allowed_vpc_endpoint_ids           = var.allowed_vpc_endpoint_ids
  exempt_principal_arns              = local.exempt_principal_arns
  attach_policy                      = var.attach_bucket_policies
}

module "final_bucket" {
  source = "./modules/s3"

  bucket_name                        = local.final_bucket_name
  kms_key_arn                        = module.kms.key_arn
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  current_version_expiration_days    = null
  allowed_cidrs                      = var.allowed_cidrs
  allowed_vpc_endpoint_ids           = var.allowed_vpc_endpoint_ids
  exempt_principal_arns              = local.exempt_principal_arns
  attach_policy                      = var.attach_bucket_policies
}

check "bucket_access_is_network_restricted" {
  assert {
    condition     = length(var.allowed_cidrs) + length(var.allowed_vpc_endpoint_ids) > 0
    error_message = "Neither allowed_cidrs nor allowed_vpc_endpoint_ids is set: object access to both buckets is NOT restricted by source network (IAM, TLS and encryption rules still apply)."
  }
}

check "bucket_policies_are_attached" {
  assert {
    condition     = var.attach_bucket_policies || var.environment == "local"
    error_message = "attach_bucket_policies is false outside the local emulator environment: TLS-only, encryption and network rules are NOT enforced on the buckets."
  }
}
