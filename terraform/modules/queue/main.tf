# The processing queue: the initial bucket's raw/ object-created events go to an SQS queue
# that every service instance consumes; a message delivered max_receive_count times goes to
# the dead-letter queue. Both are encrypted with the stack's key. The policies come from
# modules/policy-documents: only the initial bucket sends, TLS only.

resource "aws_sqs_queue" "dead_letter" {
  name                              = "${var.name}-dead-letter"
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  # The longest SQS keeps a message: time for an operator to look and redrive.
  message_retention_seconds = 1209600
}

resource "aws_sqs_queue" "work" {
  name                              = var.name
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  visibility_timeout_seconds        = var.visibility_timeout_seconds
  message_retention_seconds         = var.message_retention_seconds
  receive_wait_time_seconds         = 20

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receive_count
  })
}

# Only the work queue may move messages into the dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.work.arn]
  })
}

resource "aws_sqs_queue_policy" "work" {
  queue_url = aws_sqs_queue.work.id
  policy    = var.policy_json["work"]
}

resource "aws_sqs_queue_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id
  policy    = var.policy_json["dead_letter"]
}

# S3 checks that it may send to the queue when the notification is configured: after the
# queue policy.
resource "aws_s3_bucket_notification" "raw_files" {
  bucket = var.bucket_name

  queue {
    id            = "raw-files-to-${var.name}"
    queue_arn     = aws_sqs_queue.work.arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = var.key_prefix
  }

  depends_on = [aws_sqs_queue_policy.work]
}
