# Copy to <env>.tfvars and run `cargo xtask bootstrap --env <env>` then `deploy --env <env>`.
# The xtask reads region and name_prefix from here too: the region is written only here.
region      = "eu-west-1"
name_prefix = "acme-files"

# Who may read and write objects (at least one of the two; /0 is refused).
allowed_cidrs            = ["203.0.113.0/24"]
allowed_vpc_endpoint_ids = ["vpce-0123456789abcdef0"]

# Roles Terraform and operators use; exempt from the network restriction on objects.
admin_principal_arns = ["arn:aws:iam::111122223333:role/platform-terraform"]

service_binary_url    = "https://artifacts.example.com/filepipe/service-0.1.0-x86_64-linux"
service_binary_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

# After 30 days a file is no longer served (GET and status answer 404); leave unset to keep
# files servable for as long as they exist.
raw_object_expiration_days = 30
