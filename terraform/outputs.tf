# The contract read by the xtask (target/xtask/<env>/outputs.json) and the service's
# configuration. Renaming or removing an output breaks `cargo xtask deploy`; the list the
# xtask requires is REQUIRED_OUTPUTS in xtask/src/outputs.rs.

output "region" {
  description = "Region of every resource."
  value       = var.region
}

output "initial_bucket_name" {
  description = "Bucket holding raw files as received or retrieved."
  value       = module.initial_bucket.bucket_name
}

output "initial_bucket_arn" {
  description = "ARN of the initial bucket."
  value       = module.initial_bucket.bucket_arn
}

output "final_bucket_name" {
  description = "Bucket holding decrypted and processed files."
  value       = module.final_bucket.bucket_name
}

output "final_bucket_arn" {
  description = "ARN of the final bucket."
  value       = module.final_bucket.bucket_arn
}

output "kms_key_arn" {
  description = "ARN of the customer-managed key encrypting both buckets."
  value       = module.kms.key_arn
}

output "kms_key_alias" {
  description = "Alias of the key (alias/<name_prefix>-data)."
  value       = module.kms.alias_name
}

output "service_role_arn" {
  description = "IAM role the service's EC2 instance assumes."
  value       = module.iam.role_arn
}

output "instance_profile_name" {
  description = "Instance profile to attach to the service's EC2 instance."
  value       = module.iam.instance_profile_name
}

output "initial_bucket_policy_json" {
  description = "Bucket policy of the initial bucket (rendered even when not attached)."
  value       = module.initial_bucket.policy_json
}

output "final_bucket_policy_json" {
  description = "Bucket policy of the final bucket (rendered even when not attached)."
  value       = module.final_bucket.policy_json
}

output "user_data" {
  description = "EC2 user-data script installing and starting the service (templates/user-data.sh.tpl)."
  value = templatefile("${path.module}/templates/user-data.sh.tpl", {
    region                = var.region
    initial_bucket        = module.initial_bucket.bucket_name
    final_bucket          = module.final_bucket.bucket_name
    kms_key_arn           = module.kms.key_arn
    listen_address        = var.service_listen_address
    processor             = var.service_processor
    service_binary_url    = var.service_binary_url
    service_binary_sha256 = var.service_binary_sha256
  })
}
