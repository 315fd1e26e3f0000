# Partial configuration: `cargo xtask deploy` supplies bucket, key, region and
# use_lockfile = true from the environment (see target/xtask/<env>/backend.hcl).
terraform {
  backend "s3" {}
}
