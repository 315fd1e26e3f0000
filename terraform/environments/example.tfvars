# Copy to <env>.tfvars and run `cargo xtask bootstrap --env <env>` then `deploy --env <env>`.
# The xtask reads region and name_prefix from here too: the region is written only here.
region      = "eu-west-1"
name_prefix = "acme-files"

# Who may reach the service on its instance (at least one; /0 is refused).
client_cidrs = ["198.51.100.0/24"]

# Networks besides the instance's Elastic IP that may read and write objects (/0 is refused).
allowed_cidrs            = ["203.0.113.0/24"]
allowed_vpc_endpoint_ids = ["vpce-0123456789abcdef0"]

# Roles Terraform and operators use; exempt from the network restriction on objects.
admin_principal_arns = ["arn:aws:iam::111122223333:role/platform-terraform"]

# The instance: the default VPC's first default subnet unless a subnet is given.
# subnet_id     = "subnet-0123456789abcdef0"
# instance_type = "t3.small"

# `cargo xtask deploy` builds and uploads the binary itself. To ship a release published
# elsewhere instead, name it here (deploy then builds and uploads nothing):
# service_binary_url    = "https://artifacts.example.com/filepipe/service-0.1.0-x86_64-linux"
# service_binary_sha256 = "<64 hex digits>"

# After 30 days a file is no longer served (GET and status answer 404); leave unset to keep
# files servable for as long as they exist.
raw_object_expiration_days = 30
