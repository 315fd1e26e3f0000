output "instance_id" {
  description = "Id of the service's instance."
  value       = aws_instance.service.id
}

output "public_ip" {
  description = "The Elastic IP of the instance."
  value       = aws_eip.service.public_ip
}

output "service_url" {
  description = "Base URL of the service."
  value       = "https://${aws_eip.service.public_ip}:${var.service_port}"
}

output "security_group_id" {
  description = "Security group of the instance."
  value       = aws_security_group.service.id
}

output "s3_vpc_endpoint_id" {
  description = "The S3 gateway endpoint, or null without one."
  value       = one(aws_vpc_endpoint.s3[*].id)
}

output "bucket_access" {
  description = "What the bucket policies must admit for this host: the Elastic IP as a /32, or the S3 gateway endpoint when there is one."
  value = {
    cidrs            = length(aws_vpc_endpoint.s3) > 0 ? [] : ["${aws_eip.service.public_ip}/32"]
    vpc_endpoint_ids = aws_vpc_endpoint.s3[*].id
  }
}
