terraform {
  # No provider: the documents are plain HCL, so `cargo xtask up` can render exactly these
  # documents with the terraform binary on a machine that cannot install the AWS provider.
  required_version = ">= 1.10"
}
