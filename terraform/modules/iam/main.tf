resource "aws_iam_role" "service" {
  name                 = var.role_name
  description          = "Role of the file-pipeline service's EC2 instance"
  assume_role_policy   = var.assume_role_policy_json
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "service" {
  name   = "${var.role_name}-pipeline"
  role   = aws_iam_role.service.id
  policy = var.policy_json
}

resource "aws_iam_instance_profile" "service" {
  name = var.role_name
  role = aws_iam_role.service.name
}
