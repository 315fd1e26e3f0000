resource "aws_kms_key" "this" {
  description              = "${var.name_prefix}: encrypts the initial and final buckets"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  deletion_window_in_days  = var.deletion_window_days
  policy                   = var.policy_json
  # Never bypass the lockout safety check: AWS rejects a policy that would lock the account out.
  bypass_policy_lockout_safety_check = false
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name_prefix}-data"
  target_key_id = aws_kms_key.this.key_id
}
