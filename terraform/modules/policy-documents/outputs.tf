output "key_policy_json" {
  description = "Key policy of the data key."
  value       = jsonencode(local.key_policy)
}

output "assume_role_policy_json" {
  description = "Trust policy of the service role (EC2 only)."
  value       = jsonencode(local.assume_role_policy)
}

output "service_role_policy_json" {
  description = "Permission policy of the service role; null without kms_key_arn."
  value       = var.kms_key_arn == null ? null : jsonencode(local.service_role_policy)
}

output "bucket_policy_json" {
  description = "Bucket policy by purpose; empty without kms_key_arn."
  value       = var.kms_key_arn == null ? {} : { for purpose, policy in local.bucket_policies : purpose => jsonencode(policy) }
}

output "access_log_bucket_policy_json" {
  description = "Bucket policy of the access log bucket; null without access_log_bucket_arn."
  value       = local.access_log_bucket_policy == null ? null : jsonencode(local.access_log_bucket_policy)
}

output "queue_policy_json" {
  description = "Queue policy by purpose (work, dead_letter); empty without queue_arns."
  value       = { for purpose, policy in local.queue_policies : purpose => jsonencode(policy) }
}
