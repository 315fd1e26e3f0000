"""moto server, corrected where it differs from AWS (authorization, object bodies, checksums).

`cargo xtask local start` runs this instead of moto's own `moto_server` script. Every
correction of the emulator lives here, each with the AWS documentation it follows, and each is
tested (most in xtask/src/integration_tests/emulator_iam.rs; those of S3's bodies in
service/tests/emulator_s3.rs). Policies are never bent to fit moto.
"""

import base64
import hashlib
import json
import os
import sys
import threading
import zlib
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from flask import current_app, request
from moto.core.exceptions import AccessDeniedError
from moto.iam import access_control
from moto.kms import responses as kms
from moto.kms import utils as kms_utils
from moto.moto_server import werkzeug_app
from moto.s3 import exceptions as s3_exceptions
from werkzeug.datastructures import ImmutableMultiDict
from moto.s3 import models as s3_models
from moto.s3 import responses as s3
from moto.s3.exceptions import S3AccessDeniedError
from moto.ssm import responses as ssm

# Signature checks: a signed request's canonical URI and query string are URI-encoded ("the
# URI-encoded version of the absolute path", "URI-encode each parameter name and value", see
# "Create a canonical request" in
# https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html), so
# `/b/raw/a%20b?prefix=raw%2F` is what clients sign. moto recomputes the signature over the
# path and query as its web server decoded them (`/b/raw/a b?prefix=raw/`) and refuses such
# requests as SignatureDoesNotMatch.
_create_aws_request = access_control.IAMRequestBase._create_aws_request


def _canonical(part, safe="-_.~"):
    return quote(unquote(part), safe=safe)


def _create_aws_request_with_encoded_query(self):
    request = _create_aws_request(self)
    url = urlsplit(request.url)
    pairs = (pair.partition("=") for pair in url.query.split("&") if pair)
    query = "&".join(f"{_canonical(k)}={_canonical(v)}" for k, _, v in pairs)
    path = _canonical(url.path, safe="/-_.~")
    request.url = urlunsplit(url._replace(path=path, query=query))
    return request


access_control.IAMRequestBase._create_aws_request = _create_aws_request_with_encoded_query

# Signature checks, again: the payload hash covers the body as sent. For form-encoded requests
# (IAM, STS) moto's web framework parses the body and forgets it; moto then re-encodes the
# parsed form with Python's encoder, whose escaping differs from other SDKs' (aws-sdk-rust),
# and refuses their requests. Keeping the raw body lets the check hash what was signed.
#
# Object bodies, likewise: a PutObject or UploadPart body is the object's bytes, whatever its
# Content-Type ("Content-Type: A standard MIME type describing the format of the contents",
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html). moto's web framework
# parses a PUT with `application/x-www-form-urlencoded` or `multipart/form-data` as a form, and
# moto then stores an empty object (or a form field) with a 200. For S3 PUTs the body is never
# taken for a form. Tested by object_bodies_are_stored_whatever_their_content_type
# (service/tests/emulator_s3.rs) and service/tests/integrity.rs.
_before_request = werkzeug_app.decompress_request_body


def _keep_raw_body():
    if current_app.service == "s3":
        if request.method == "PUT":
            request.__dict__["form"] = ImmutableMultiDict()
            request.__dict__["files"] = ImmutableMultiDict()
    elif request.content_encoding != "gzip":
        request.get_data(cache=True)
    return _before_request()


werkzeug_app.decompress_request_body = _keep_raw_body

# HeadBucket needs s3:ListBucket: "To use this operation, you must have permissions to perform
# the s3:ListBucket action." (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadBucket.html)
# moto checks an action that does not exist, s3:HeadBucket.
s3.ACTION_MAP["BUCKET"]["HEAD"]["DEFAULT"] = "ListBucket"

# HeadObject of a version needs s3:GetObjectVersion: "If you specify a version ID, you need
# the s3:GetObjectVersion permission" (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html).
# moto checks s3:GetObject whatever the query.
s3.ACTION_MAP["KEY"]["HEAD"]["versionId"] = "GetObjectVersion"

# KMS authorizes an operation on a key against the key's ARN, so an identity policy names the
# key ("Resource": the key ARN; see the Resources column of
# https://docs.aws.amazon.com/kms/latest/developerguide/kms-api-permissions-reference.html).
# moto checks every KMS action against "*", which only a wildcard grant matches.
def _kms_key_arn(self):
    key_id = self._get_param("KeyId")
    blob = self._get_param("CiphertextBlob")
    try:
        if not key_id and blob:
            key_id = kms_utils._deserialize_ciphertext_blob(base64.b64decode(blob)).key_id
        return self.kms_backend.describe_key(key_id).arn if key_id else "*"
    except Exception:
        return "*"


kms.KmsResponse._determine_resource = _kms_key_arn

# SSM authorizes GetParameter, PutParameter and the like against the parameter's ARN
# (`arn:aws:ssm:<region>:<account>:parameter/<name without its leading slash>`; the Resource
# types column of https://docs.aws.amazon.com/service-authorization/latest/reference/list_awssystemsmanager.html),
# so an identity policy names the parameter. moto checks every SSM action against "*".
def _ssm_parameter_arn(self):
    name = self._get_param("Name")
    if not name:
        return "*"
    if name.startswith("arn:"):
        return name
    return f"arn:aws:ssm:{self.region}:{self.current_account}:parameter/{name.lstrip('/')}"


ssm.SimpleSystemManagerResponse._determine_resource = _ssm_parameter_arn

# Anonymous requests: AWS refuses a request without a signature with 403 AccessDenied (see
# "Authenticating requests", https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html).
# moto fails with a 500 on the missing Authorization header.
_init_request = access_control.IAMRequestBase.__init__


def _init_request_or_deny_anonymous(self, *args, **kwargs):
    headers = kwargs.get("headers", args[5] if len(args) > 5 else {})
    if "Authorization" not in headers:
        if isinstance(self, access_control.S3IAMRequest):
            raise S3AccessDeniedError()
        raise AccessDeniedError(user_arn="anonymous", action=kwargs.get("action", "*"))
    _init_request(self, *args, **kwargs)


access_control.IAMRequestBase.__init__ = _init_request_or_deny_anonymous

# Trust policies: a statement whose principal is a service (`{"Service": ...}`) does not
# admit an IAM user or role; moto crashes on it (500) instead of denying
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html).
_check_principal = access_control.IAMPolicyStatement._check_principal


def _check_principal_without_aws_key(self, principal):
    expected = self._statement.get("Principal")
    if isinstance(expected, dict) and "AWS" not in expected:
        return False
    return _check_principal(self, principal)


access_control.IAMPolicyStatement._check_principal = _check_principal_without_aws_key

# The instance profile. On EC2 the EC2 service assumes the instance's role (its trust policy
# admits `ec2.amazonaws.com`) and the metadata service hands the instance the role's
# temporary credentials. Locally the operator stands in for the EC2 service, and only for
# roles that trust it: the local service gets the role's credentials through the operator's
# profile (`role_arn` + `source_profile`), and the role's trust policy stays as deployed.
EC2_STAND_IN = os.environ.get("FILEPIPE_EC2_STAND_IN_ARN")
_check_trust = access_control.IAMRequestBase._check_role_trust_relationship


def _trusts_ec2(role):
    document = role.assume_role_policy_document
    if isinstance(document, str):
        document = json.loads(document)
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for statement in statements:
        services = (statement.get("Principal") or {}).get("Service", [])
        if isinstance(services, str):
            services = [services]
        if statement.get("Effect") == "Allow" and "ec2.amazonaws.com" in services:
            return True
    return False


def _check_trust_or_instance_profile(self, role_arn):
    if EC2_STAND_IN and self._access_key.arn == EC2_STAND_IN:
        return _trusts_ec2(self.backend.get_role_by_arn(role_arn))
    return _check_trust(self, role_arn)


access_control.IAMRequestBase._check_role_trust_relationship = _check_trust_or_instance_profile

# Conditional writes: CompleteMultipartUpload takes If-Match and If-None-Match, and so does
# CopyObject for its destination key ("How to prevent object overwrites with conditional
# writes", https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html; the
# request headers of https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html
# and https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html): 412
# PreconditionFailed when they do not hold, 404 NoSuchKey for If-Match on a missing key. moto
# checks them on PutObject only (and If-None-Match on a completion), so of two writers racing
# on one key the later would silently overwrite. Checked after authorization, as AWS does.
# And atomically, as on AWS: moto serves requests on threads, and its check-then-write lets
# two writers racing on one key both pass (seen as two outputs of one file version), so
# every conditional write holds one lock from its check to its write.
# Tested by a_stale_writer_cannot_overwrite_a_newer_output and
# three_instances_process_a_thousand_files_exactly_once (service/tests/queue.rs).
_conditional_writes = threading.Lock()


def _is_conditional():
    return bool(request.headers.get("If-Match") or request.headers.get("If-None-Match"))


def _check_write_conditions(backend, bucket_name, key_name):
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if not if_match and not if_none_match:
        return
    current = backend.get_object(bucket_name, key_name)
    if if_match:
        if current is None:
            raise s3_exceptions.MissingKey(key=key_name)
        if if_match.replace('"', "") != current.etag.replace('"', ""):
            raise s3_exceptions.PreconditionFailed("If-Match")
    if if_none_match == "*" and current is not None:
        raise s3_exceptions.PreconditionFailed("If-None-Match")


_complete_multipart_upload = s3_models.S3Backend.complete_multipart_upload


def _complete_multipart_upload_if(self, bucket_name, multipart_id, body):
    if not _is_conditional():
        return _complete_multipart_upload(self, bucket_name, multipart_id, body)
    with _conditional_writes:
        multipart = self.get_bucket(bucket_name).multiparts.get(multipart_id)
        if multipart is not None:
            _check_write_conditions(self, bucket_name, multipart.key_name)
        return _complete_multipart_upload(self, bucket_name, multipart_id, body)


s3_models.S3Backend.complete_multipart_upload = _complete_multipart_upload_if

_copy_object = s3.S3Response.copy_object


def _copy_object_if(self):
    if not _is_conditional():
        return _copy_object(self)
    with _conditional_writes:
        _check_write_conditions(self.backend, self.bucket_name, self.parse_key_name())
        return _copy_object(self)


s3.S3Response.copy_object = _copy_object_if

# PutObject checks its own conditions (moto does); only the lock is added.
_put_object = s3.S3Response.put_object


def _put_object_atomically(self):
    if not _is_conditional():
        return _put_object(self)
    with _conditional_writes:
        return _put_object(self)


s3.S3Response.put_object = _put_object_atomically

# Checksums of object bodies: "When you upload an object, you can specify a checksum ...
# Amazon S3 calculates the checksum of the data it receives and compares it with the value
# you provided. If the two values don't match, Amazon S3 rejects the request" ("Checking object
# integrity", https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html),
# with 400 BadDigest ("The Content-MD5 or checksum value that you specified did not match what
# the server received", https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
# moto stores whatever arrives and echoes the value sent. The algorithms it cannot compute
# (CRC32C, CRC64NVME) are refused loudly rather than passed unverified.
# A multipart upload's SHA-256 is composite: the digest of its parts' digests followed by
# `-<number of parts>` ("Using part-level checksums for multipart uploads", same page), and
# CompleteMultipartUpload answers it (ChecksumSHA256 in
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html); moto
# leaves off the part count and does not answer it.
# Tested by object_checksums_are_verified_and_multipart_ones_are_composite
# (service/tests/emulator_s3.rs) and by service/tests/integrity.rs.
class BadDigest(s3_exceptions.S3ClientError):
    code = 400

    def __init__(self, algorithm):
        super().__init__(
            "BadDigest",
            f"The {algorithm} you specified did not match the calculated checksum.",
        )


class UnverifiableChecksum(s3_exceptions.S3ClientError):
    code = 501

    def __init__(self, algorithm):
        super().__init__(
            "NotImplemented",
            f"The emulator cannot verify a {algorithm} checksum (moto_server_fidelity.py); use SHA256, SHA1 or CRC32",
        )


_CHECKSUMS = {
    "sha256": lambda body: hashlib.sha256(body).digest(),
    "sha1": lambda body: hashlib.sha1(body).digest(),
    "crc32": lambda body: zlib.crc32(body).to_bytes(4, "big"),
}
_NOT_CHECKSUMS = {"x-amz-checksum-algorithm", "x-amz-checksum-type", "x-amz-checksum-mode"}


def _verify_body_checksums(self):
    for header, sent in self.headers.items():
        header = header.lower()
        if not header.startswith("x-amz-checksum-") or header in _NOT_CHECKSUMS:
            continue
        algorithm = header[len("x-amz-checksum-") :]
        compute = _CHECKSUMS.get(algorithm)
        if compute is None:
            raise UnverifiableChecksum(algorithm.upper())
        if base64.b64encode(compute(self.body or b"")).decode() != sent:
            raise BadDigest(algorithm.upper())


def _verifying(write):
    def verified(self):
        _verify_body_checksums(self)
        return write(self)

    return verified


s3.S3Response.put_object = _verifying(s3.S3Response.put_object)
s3.S3Response.upload_part = _verifying(s3.S3Response.upload_part)

_complete = s3_models.FakeMultipart.complete


def _complete_with_part_count(self, body):
    parts = list(body)
    total, etag, checksum = _complete(self, iter(parts))
    if checksum:
        checksum = f"{checksum}-{len(parts)}"
    return total, etag, checksum


s3_models.FakeMultipart.complete = _complete_with_part_count

_key_response_post = s3.S3Response._key_response_post


def _key_response_post_with_checksum(self, request, body, bucket_name, query, key_name):
    status, headers, response = _key_response_post(
        self, request, body, bucket_name, query, key_name
    )
    if status == 200 and "uploadId" in query and "</CompleteMultipartUploadResult>" in response:
        key = self.backend.get_object(bucket_name, key_name)
        if key is not None and key.checksum_value and key.checksum_algorithm:
            element = f"Checksum{key.checksum_algorithm.upper()}"
            response = response.replace(
                "</CompleteMultipartUploadResult>",
                f"<{element}>{key.checksum_value}</{element}></CompleteMultipartUploadResult>",
            )
    return status, headers, response


s3.S3Response._key_response_post = _key_response_post_with_checksum

# --- What the AWS provider for Terraform reads back -------------------------------------------
# `up` applies terraform/ with the real hashicorp/aws provider against this emulator, and a plan
# right after must be empty. Each correction below was found as a hang or as a perpetual diff of
# that apply; each is tested in xtask/src/integration_tests/emulator_fidelity.rs.

from moto.core.responses import ActionResult  # noqa: E402
from moto.ec2.models import launch_templates as ec2_launch_templates  # noqa: E402
from moto.ec2.responses import monitoring as ec2_monitoring  # noqa: E402
from moto.sqs import models as sqs_models  # noqa: E402


# MonitorInstances / UnmonitorInstances turn detailed monitoring on and off and answer each
# instance's monitoring state ("Enables detailed monitoring for a running instance",
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_MonitorInstances.html and
# API_UnmonitorInstances.html: InstanceMonitorings, each InstanceId and Monitoring.State).
# moto answers 500 NotImplemented, and the provider retries an aws_instance with
# `monitoring = true` until its timeout.
def _set_monitoring(state):
    def handler(self):
        instance_ids = self._get_param("InstanceIds", [])
        self.error_on_dryrun()
        instances = self.ec2_backend.get_multi_instances_by_id(instance_ids)
        for instance in instances:
            instance.monitoring_state = state
        return ActionResult(
            {
                "InstanceMonitorings": [
                    {"InstanceId": i.id, "Monitoring": {"State": state}} for i in instances
                ]
            }
        )

    return handler


ec2_monitoring.Monitoring.monitor_instances = _set_monitoring("enabled")
ec2_monitoring.Monitoring.unmonitor_instances = _set_monitoring("disabled")

# A queue's RedriveAllowPolicy is one of its attributes: SetQueueAttributes stores it and
# GetQueueAttributes returns it ("RedriveAllowPolicy – The string that includes the parameters
# for the permissions for the dead-letter queue redrive permission",
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_GetQueueAttributes.html).
# moto stores it but never returns it, and refuses its name in GetQueueAttributes. Set to
# the empty string, it is removed (as the provider deletes it, waiting until it is gone).
sqs_models.Queue.BASE_ATTRIBUTES.append("RedriveAllowPolicy")
sqs_models.Queue.redrive_allow_policy = None

# SetQueueAttributes changes the attributes it names and leaves the others as they are
# ("Sets the value of one or more queue attributes",
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SetQueueAttributes.html;
# an empty Policy removes the policy). moto sets Policy to whatever the request holds, so any
# SetQueueAttributes without it (a redrive allow policy, a visibility timeout) wipes the policy.
_set_queue_attributes = sqs_models.Queue._set_attributes


def _set_queue_attributes_keeping_policy(self, attributes, now=None):
    policy = getattr(self, "policy", None)
    _set_queue_attributes(self, attributes, now)
    if "Policy" not in attributes:
        self.policy = policy
    elif not attributes["Policy"]:
        self.policy = None
    if attributes.get("RedriveAllowPolicy") == "":
        self.redrive_allow_policy = None


sqs_models.Queue._set_attributes = _set_queue_attributes_keeping_policy

# RedrivePolicy is returned as compact JSON, as the documentation's examples show
# (`{"deadLetterTargetArn":"arn:aws:sqs:...","maxReceiveCount":1000}`,
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_GetQueueAttributes.html).
# moto re-encodes it with Python's default separators (", " and ": "); the provider compares
# the text and plans an in-place update of the queue on every run.
_queue_attributes = sqs_models.Queue.attributes.fget


def _queue_attributes_compact(self):
    result = _queue_attributes(self)
    if self.redrive_policy:
        result["RedrivePolicy"] = json.dumps(self.redrive_policy, separators=(",", ":"))
    return result


sqs_models.Queue.attributes = property(_queue_attributes_compact)

# GetBucketLogging returns the TargetObjectKeyFormat that PutBucketLogging set (SimplePrefix or
# PartitionedPrefix with its PartitionDateSource; LoggingEnabled in
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketLogging.html and
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_TargetObjectKeyFormat.html).
# moto keeps it but leaves it out of the answer: the provider plans to add it on every run.
s3.S3_LOGGING_CONFIG = s3.S3_LOGGING_CONFIG.replace(
    "  </LoggingEnabled>",
    """    {% set key_format = logging.get("TargetObjectKeyFormat") %}
    {% if key_format %}
    <TargetObjectKeyFormat>
      {% if key_format.get("PartitionedPrefix") %}
      <PartitionedPrefix>
        <PartitionDateSource>{{ key_format["PartitionedPrefix"].get("PartitionDateSource", "EventTime") }}</PartitionDateSource>
      </PartitionedPrefix>
      {% else %}
      <SimplePrefix></SimplePrefix>
      {% endif %}
    </TargetObjectKeyFormat>
    {% endif %}
  </LoggingEnabled>""",
)
assert "TargetObjectKeyFormat" in s3.S3_LOGGING_CONFIG, "moto's logging template changed"


# A launch template's own tags (CreateLaunchTemplate's TagSpecifications, resource type
# `launch-template`) tag the template; they are not part of its data, whose tag specifications
# are for what it launches (instance, volume, network-interface, spot-instances-request:
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateLaunchTemplate.html and
# API_LaunchTemplateTagSpecificationRequest.html). moto copies them into the data, and the
# provider then plans to remove them from the template data on every run.
_create_launch_template = ec2_launch_templates.LaunchTemplateBackend.create_launch_template


def _create_launch_template_own_tags(self, name, description, template_data, tag_spec):
    specs = template_data.get("TagSpecifications")
    if specs:
        kept = [s for s in specs if s.get("ResourceType") != "launch-template"]
        if kept:
            template_data["TagSpecifications"] = kept
        else:
            del template_data["TagSpecifications"]
    return _create_launch_template(self, name, description, template_data, tag_spec)


ec2_launch_templates.LaunchTemplateBackend.create_launch_template = (
    _create_launch_template_own_tags
)

from moto.server import main  # noqa: E402  (after the corrections, before any request)

if __name__ == "__main__":
    sys.exit(main())
