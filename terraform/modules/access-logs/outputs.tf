output "bucket_name" {
  description = "Name of the log bucket, once its policy admits log delivery (a logging rule set before may be refused)."
  value       = aws_s3_bucket.this.id
  depends_on  = [aws_s3_bucket_policy.this]
}

output "bucket_arn" {
  description = "ARN of the log bucket."
  value       = aws_s3_bucket.this.arn
}

output "policy_json" {
  description = "The bucket policy document (attached)."
  value       = var.policy_json
}
