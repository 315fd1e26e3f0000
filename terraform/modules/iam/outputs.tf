output "role_arn" {
  description = "ARN of the service role."
  value       = aws_iam_role.service.arn
}

output "role_name" {
  description = "Name of the service role."
  value       = aws_iam_role.service.name
}

output "instance_profile_name" {
  description = "Instance profile wrapping the service role."
  value       = aws_iam_instance_profile.service.name
}

output "policy_json" {
  description = "The role's inline policy document."
  value       = aws_iam_role_policy.service.policy
}
