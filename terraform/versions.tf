terraform {
  # 1.10 brings S3-native state locking (use_lockfile), so no DynamoDB lock table is needed.
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.100 is the oldest release the modules are applied with (against the emulator, on
      # every `up` and in CI); 6.x is checked offline against its schema. See README.md.
      version = ">= 5.100, < 7.0"
    }
  }
}
