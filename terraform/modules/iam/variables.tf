variable "role_name" {
  description = "Name of the role and its instance profile."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9+=,.@_-]{1,64}$", var.role_name))
    error_message = "role_name must be a valid IAM role name."
  }
}

variable "assume_role_policy_json" {
  description = "Trust policy (modules/policy-documents assume_role_policy_json)."
  type        = string

  validation {
    condition     = can(jsondecode(var.assume_role_policy_json).Statement)
    error_message = "assume_role_policy_json must be a policy document."
  }
}

variable "policy_json" {
  description = "The role's inline permissions (modules/policy-documents service_role_policy_json)."
  type        = string

  validation {
    condition     = can(jsondecode(var.policy_json).Statement)
    error_message = "policy_json must be a policy document."
  }
}
