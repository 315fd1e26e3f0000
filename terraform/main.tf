data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id          = data.aws_caller_identity.current.account_id
  partition           = data.aws_partition.current.partition
  initial_bucket_name = coalesce(var.initial_bucket_name, "${var.name_prefix}-initial-${local.account_id}")
  final_bucket_name   = coalesce(var.final_bucket_name, "${var.name_prefix}-final-${local.account_id}")

  # Known before the buckets exist, so the policies do not wait for them.
  bucket_arns = {
    initial = "arn:${local.partition}:s3:::${local.initial_bucket_name}"
    final   = "arn:${local.partition}:s3:::${local.final_bucket_name}"
  }
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
}

module "access_policies" {
  source = "./modules/policy-documents"

  region                   = var.region
  partition                = local.partition
  account_id               = local.account_id
  service_role_arn         = module.iam.role_arn
  kms_key_arn              = module.kms.key_arn
  bucket_arns              = local.bucket_arns
  allowed_cidrs            = var.allowed_cidrs
  allowed_vpc_endpoint_ids = var.allowed_vpc_endpoint_ids
  # Operators may reach objects from any network; the service role may not.
  exempt_principal_arns = var.admin_principal_arns
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
  attach_policy                      = var.attach_bucket_policies
}

module "final_bucket" {
  source = "./modules/s3"

  bucket_name                        = local.final_bucket_name
  kms_key_arn                        = module.kms.key_arn
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  current_version_expiration_days    = null
  policy_json                        = module.access_policies.bucket_policy_json["final"]
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
