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
  description = "Bucket policy of the initial bucket, as attached."
  value       = module.initial_bucket.policy_json
}

output "final_bucket_policy_json" {
  description = "Bucket policy of the final bucket, as attached."
  value       = module.final_bucket.policy_json
}

output "user_data" {
  description = "EC2 user-data script installing and starting the service (templates/user-data.sh.tpl)."
  value       = local.user_data
}

output "access_log_bucket_name" {
  description = "Bucket receiving the server access logs of the initial and final buckets."
  value       = module.access_logs.bucket_name
}

output "access_log_bucket_policy_json" {
  description = "Bucket policy of the access log bucket."
  value       = module.access_logs.policy_json
}

output "service_url" {
  description = "Base URL of the deployed service (HTTPS, with the certificate of tls_certificate_parameter); null with enable_host = false."
  value       = one(module.host[*].service_url)
}

output "instance_id" {
  description = "EC2 instance running the service; null with enable_host = false."
  value       = one(module.host[*].instance_id)
}

output "public_ip" {
  description = "Elastic IP of the instance (admitted by the bucket policies); null with enable_host = false."
  value       = one(module.host[*].public_ip)
}

output "auth_token_parameter" {
  description = "SSM SecureString holding the bearer token (created and rotated by `cargo xtask`, never by Terraform)."
  value       = local.parameter_names.auth_token
}

output "tls_certificate_parameter" {
  description = "SSM parameter where the instance publishes its self-signed certificate, for clients to pin."
  value       = local.parameter_names.tls_certificate
}

output "tls_rotation_parameter" {
  description = "SSM parameter whose new value asks the instance for a new key and certificate (`cargo xtask rotate-cert`)."
  value       = local.parameter_names.tls_rotation
}

output "queue_url" {
  description = "The work queue: the initial bucket's raw/ events, consumed by every instance."
  value       = module.queue.queue_url
}

output "dead_letter_queue_url" {
  description = "Where messages of files that kept failing end (after queue_max_receive_count deliveries)."
  value       = module.queue.dead_letter_queue_url
}

output "tls_key_parameter" {
  description = "SSM SecureString with a fleet's shared TLS key, made by `cargo xtask deploy` for load_balancer_dns_name; null for one instance (it makes its own key)."
  value       = local.fleet ? local.parameter_names.tls_key : null
}

output "load_balancer_dns_name" {
  description = "DNS name of a fleet's load balancer; null for one instance."
  value       = one(module.host[*].load_balancer_dns_name)
}

output "autoscaling_group_name" {
  description = "A fleet's Auto Scaling group; null for one instance."
  value       = one(module.host[*].autoscaling_group_name)
}
