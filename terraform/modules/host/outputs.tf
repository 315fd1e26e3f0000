output "instance_id" {
  description = "Id of the service's instance; null for a fleet (see autoscaling_group_name)."
  value       = one(aws_instance.service[*].id)
}

output "public_ip" {
  description = "The Elastic IP of the instance; null for a fleet."
  value       = one(aws_eip.service[*].public_ip)
}

output "service_url" {
  description = "Base URL of the service: the Elastic IP, or the fleet's load balancer."
  value = (
    local.fleet
    ? "https://${one(aws_lb.service[*].dns_name)}:${var.service_port}"
    : "https://${one(aws_eip.service[*].public_ip)}:${var.service_port}"
  )
}

output "load_balancer_dns_name" {
  description = "DNS name of the fleet's load balancer (the name its certificate carries); null for one instance."
  value       = one(aws_lb.service[*].dns_name)
}

output "autoscaling_group_name" {
  description = "The fleet's Auto Scaling group; null for one instance."
  value       = one(aws_autoscaling_group.service[*].name)
}

output "security_group_id" {
  description = "Security group of the instances."
  value       = aws_security_group.service.id
}

output "s3_vpc_endpoint_id" {
  description = "The S3 gateway endpoint, or null without one."
  value       = one(aws_vpc_endpoint.s3[*].id)
}

output "bucket_access" {
  description = "What the bucket policies must admit for this host: the S3 gateway endpoint when there is one (always for a fleet), or else the Elastic IP as a /32."
  value = {
    cidrs            = length(aws_vpc_endpoint.s3) > 0 ? [] : ["${one(aws_eip.service[*].public_ip)}/32"]
    vpc_endpoint_ids = aws_vpc_endpoint.s3[*].id
  }
}
