"""moto server, corrected where it differs from AWS (authorization, object bodies, checksums).

`cargo xtask local start` runs this instead of moto's own `moto_server` script. Every
correction of the emulator lives here, each with the AWS documentation it follows, and each is
tested (most in xtask/tests/integration/emulator_iam.rs; those of S3's bodies in
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
            # moto hands the blob over decoded (bytes); older versions gave its base64.
            raw = blob if isinstance(blob, bytes) else base64.b64decode(blob)
            key_id = kms_utils._deserialize_ciphertext_blob(raw).key_id
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
# that apply; each is tested in xtask/tests/integration/emulator_fidelity.rs.

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

# --- Policies as AWS evaluates them ------------------------------------------------------------
# moto evaluates an identity policy's Action and Resource only, ignores every Condition, and
# reads a bucket policy's Deny as unconditional (so a TLS-only statement denies everything);
# it never reads key policies or queue policies. Here every request is decided as AWS decides
# it ("Policy evaluation logic",
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
# an explicit Deny in any applicable policy wins; otherwise, within one account, an Allow in
# the identity policies or in the resource's policy (bucket, queue) suffices, while across
# accounts both must allow; a KMS key's policy must allow either the principal itself or the
# account (which hands the decision to IAM; "Key policies in AWS KMS",
# https://docs.aws.amazon.com/kms/latest/developerguide/key-policies.html). Conditions follow
# "IAM JSON policy elements: Condition operators"
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html):
# keys are case-insensitive; several operators, and several keys under one, must all hold;
# several values of one key are alternatives; a key missing from the request makes a positive
# operator false and a negated one (StringNotEquals, NotIpAddress, ...) true, ...IfExists true,
# and Null tests exactly that. An operator, a key or a policy element this file cannot
# evaluate fails the request loudly (501), never allows it.
# Tested by xtask/tests/integration/policy_enforcement.rs, with the stack's own policies.

import datetime  # noqa: E402
import fnmatch  # noqa: E402
import ipaddress  # noqa: E402
import re  # noqa: E402

from flask import g  # noqa: E402
from moto.core.exceptions import JsonRESTError  # noqa: E402
from moto.iam.access_control import IAMPolicy, PermissionResult  # noqa: E402
from moto.kms import exceptions as kms_exceptions  # noqa: E402
from moto.kms.models import kms_backends  # noqa: E402
from moto.s3 import notifications as s3_notifications  # noqa: E402
from moto.s3.models import s3_backends  # noqa: E402
from moto.sqs.models import sqs_backends  # noqa: E402


class Unevaluable(Exception):
    """A policy this emulator cannot evaluate faithfully."""


def _unevaluable_response(service, message):
    sys.stderr.write(f"moto_server_fidelity: cannot evaluate a policy: {message}\n")
    text = f"The emulator cannot evaluate this policy (moto_server_fidelity.py): {message}"
    if service == "s3":
        error = s3_exceptions.S3ClientError("NotImplemented", text)
        error.code = 501
        return error
    error = JsonRESTError("NotImplemented", text)
    error.code = 501
    return error


# Condition keys this file supplies whenever AWS would (a key absent from a request is then
# truly absent). No request here comes through a VPC endpoint, so aws:SourceVpce is never
# present, as on AWS for requests from outside one.
_KNOWN_KEYS = {
    "aws:securetransport",
    "aws:sourceip",
    "aws:sourcevpce",
    "aws:principalarn",
    "aws:principalaccount",
    "aws:sourcearn",
    "aws:sourceaccount",
    "s3:tlsversion",
    "s3:x-amz-server-side-encryption",
    "s3:x-amz-server-side-encryption-aws-kms-key-id",
    "s3:x-amz-server-side-encryption-customer-algorithm",
    "kms:viaservice",
}
_KNOWN_PREFIXES = ("kms:encryptioncontext:",)


def _glob(pattern, value, case_sensitive=True):
    if "${" in pattern:
        raise Unevaluable(f"policy variable in {pattern!r}")
    if not case_sensitive:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern)


def _arn_like(value, pattern):
    # "Each of the six colon-delimited components of the ARN is checked separately"
    parts, wanted = value.split(":", 5), pattern.split(":", 5)
    return len(parts) == 6 and len(wanted) == 6 and all(map(_glob, wanted, parts))


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise Unevaluable(f"{text!r} is not a number")


def _in_network(value, cidr):
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


_POSITIVE = {
    "StringEquals": lambda v, e: v == e,
    "StringEqualsIgnoreCase": lambda v, e: v.lower() == e.lower(),
    "StringLike": lambda v, e: _glob(e, v),
    "ArnEquals": _arn_like,
    "ArnLike": _arn_like,
    "NumericEquals": lambda v, e: _number(v) == _number(e),
    "NumericLessThan": lambda v, e: _number(v) < _number(e),
    "NumericLessThanEquals": lambda v, e: _number(v) <= _number(e),
    "NumericGreaterThan": lambda v, e: _number(v) > _number(e),
    "NumericGreaterThanEquals": lambda v, e: _number(v) >= _number(e),
    "Bool": lambda v, e: v.lower() == e.lower(),
    "IpAddress": _in_network,
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
    "NumericNotEquals": "NumericEquals",
    "NotIpAddress": "IpAddress",
}


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _as_text(value):
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _condition_holds(operator, key, expected, context):
    if ":" in operator:
        raise Unevaluable(f"set operator {operator} (multivalued keys are not supplied)")
    key = key.lower()
    if key not in _KNOWN_KEYS and not key.startswith(_KNOWN_PREFIXES):
        raise Unevaluable(f"condition key {key}")
    values = context.get(key)
    expected = [_as_text(e) for e in _as_list(expected)]
    if operator == "Null":
        return (values is None) == (expected[0].lower() == "true")
    if_exists = operator.endswith("IfExists")
    base = operator[: -len("IfExists")] if if_exists else operator
    negated = base in _NEGATED
    test = _POSITIVE.get(_NEGATED.get(base, base))
    if test is None:
        raise Unevaluable(f"condition operator {operator}")
    if values is None:
        return if_exists or negated
    matched = any(test(v, e) for v in values for e in expected)
    return not matched if negated else matched


def _conditions_hold(conditions, context):
    return all(
        _condition_holds(operator, key, expected, context)
        for operator, tests in (conditions or {}).items()
        for key, expected in tests.items()
    )


class Caller:
    """Who makes a request: an IAM identity (user, or a role's session) or a service."""

    def __init__(self, account, arn=None, principal_arn=None, service=None, identity_policies=()):
        self.account = account
        self.arn = arn
        self.principal_arn = principal_arn
        self.service = service
        self.identity_policies = list(identity_policies)


# How a resource policy's Principal names a caller: the caller itself, or its account (which
# then needs an identity policy's Allow too).
_ITSELF, _ACCOUNT = "itself", "account"


def _principal_match(principal, caller):
    if principal == "*":
        return _ITSELF
    if not isinstance(principal, dict):
        raise Unevaluable(f"Principal {principal!r}")
    for kind, names in principal.items():
        names = _as_list(names)
        if kind == "Service" and caller.service in names:
            return _ITSELF
        if kind != "AWS":
            continue
        if "*" in names:
            return _ITSELF
        if caller.service is None:
            if caller.principal_arn in names or caller.arn in names:
                return _ITSELF
            if caller.account in names or f"arn:aws:iam::{caller.account}:root" in names:
                return _ACCOUNT
    return None


def _statement_matches(statement, action, resource, context):
    if "NotPrincipal" in statement:
        raise Unevaluable("NotPrincipal")
    if "NotAction" in statement:
        if any(_glob(a, action, False) for a in _as_list(statement["NotAction"])):
            return False
    elif not any(_glob(a, action, False) for a in _as_list(statement.get("Action", []))):
        return False
    if "NotResource" in statement:
        if any(_glob(r, resource) for r in _as_list(statement["NotResource"])):
            return False
    elif "Resource" in statement:
        if not any(_glob(r, resource) for r in _as_list(statement["Resource"])):
            return False
    return _conditions_hold(statement.get("Condition"), context)


def _statements(document):
    if document is None:
        return []
    if isinstance(document, (str, bytes)):
        document = json.loads(document)
    return _as_list(document.get("Statement", []))


def decide(caller, action, resource, context, resource_policy=None, resource_account=None, kms=False):
    """None when AWS would allow the request, else why it would not."""
    identity_allows = False
    for document in caller.identity_policies:
        for statement in _statements(document):
            if _statement_matches(statement, action, resource, context):
                if statement.get("Effect") == "Deny":
                    return f"an explicit deny in an identity policy ({statement.get('Sid', 'no Sid')})"
                identity_allows = True
    named = set()
    for statement in _statements(resource_policy):
        match = _principal_match(statement.get("Principal"), caller)
        if match and _statement_matches(statement, action, resource, context):
            if statement.get("Effect") == "Deny":
                return f"an explicit deny in the resource's policy ({statement.get('Sid', 'no Sid')})"
            named.add(match)
    if caller.service is not None or kms:
        allowed = _ITSELF in named or (_ACCOUNT in named and identity_allows)
    elif resource_policy is not None and resource_account != caller.account:
        allowed = identity_allows and bool(named)
    else:
        allowed = identity_allows or _ITSELF in named
    if allowed:
        return None
    if kms:
        return "no statement of the key policy allows it"
    return "no policy allows it"


def _tls_version():
    sock = request.environ.get("werkzeug.socket")
    version = sock.version() if hasattr(sock, "version") else None
    return {"TLSv1": "1.0", "TLSv1.1": "1.1", "TLSv1.2": "1.2", "TLSv1.3": "1.3"}.get(version)


def _request_context(caller, service):
    context = {
        "aws:securetransport": ["true" if request.scheme == "https" else "false"],
        "aws:sourceip": [request.remote_addr],
        "aws:principalarn": [caller.principal_arn],
        "aws:principalaccount": [caller.account],
    }
    if service == "s3":
        version = _tls_version()
        if version:
            context["s3:tlsversion"] = [version]
        for header in (
            "x-amz-server-side-encryption",
            "x-amz-server-side-encryption-aws-kms-key-id",
            "x-amz-server-side-encryption-customer-algorithm",
        ):
            if header in request.headers:
                context[f"s3:{header}"] = [request.headers[header]]
    if service == "kms":
        try:
            body = json.loads(request.get_data(cache=True) or b"{}")
        except ValueError:
            body = {}
        for key, value in (body.get("EncryptionContext") or {}).items():
            context[f"kms:encryptioncontext:{key.lower()}"] = [value]
    return context


def _caller(iam_request):
    key = iam_request._access_key
    owner_role = getattr(key, "_owner_role_name", None)
    principal_arn = key.arn
    if owner_role:
        principal_arn = iam_request.backend.get_role(owner_role).arn
    return Caller(
        account=iam_request.account_id,
        arn=key.arn,
        principal_arn=principal_arn,
        identity_policies=[IAMPolicy(p)._policy_json for p in key.collect_policies()],
    )


def _bucket(name):
    located = s3_backends.bucket_accounts.get(name)
    if not located:
        return None
    partition, account = located
    return s3_backends[account][partition].buckets.get(name)


def _resource_policy(service, region, resource):
    """The resource's own policy and the account that owns the resource."""
    if service == "s3" and resource.startswith("arn:aws:s3:::"):
        bucket = _bucket(resource[len("arn:aws:s3:::") :].split("/", 1)[0])
        if bucket is not None:
            return (bucket.policy.decode() if bucket.policy else None), bucket.account_id
    if service == "sqs" and resource.startswith("arn:aws:sqs:"):
        _, _, _, queue_region, account, name = resource.split(":", 5)
        queue = sqs_backends[account][queue_region].queues.get(name)
        if queue is not None:
            return getattr(queue, "policy", None), account
    if service == "kms" and resource.startswith("arn:aws:kms:"):
        _, _, _, key_region, account, key_id = resource.split(":", 5)
        key = kms_backends[account][key_region].keys.get(key_id.split("/", 1)[-1])
        if key is not None:
            return key.policy, account
    return None, None


def _check_action_permitted(self, resource):
    if self._action == "sts:GetCallerIdentity":
        return
    caller = _caller(self)
    context = _request_context(caller, self._service)
    policy, account = _resource_policy(self._service, self._region, resource)
    try:
        # A KMS action on a key is decided by its key policy; one on no key (CreateKey,
        # ListKeys) by IAM alone.
        on_key = self._service == "kms" and account is not None
        refusal = decide(caller, self._action, resource, context, policy, account, on_key)
        if refusal is None and self._service == "s3":
            refusal = _s3_key_use_refusal(caller, resource, context)
    except Unevaluable as error:
        raise _unevaluable_response(self._service, str(error))
    g.filepipe_caller = (caller, context)
    if refusal is None and self._is_assuming_role_operation(resource):
        if not self._check_role_trust_relationship(resource):
            refusal = "the role's trust policy does not allow it"
    if refusal is not None:
        sys.stderr.write(f"denied {self._action} on {resource} for {caller.arn}: {refusal}\n")
        self._raise_access_denied()


access_control.IAMRequestBase.check_action_permitted = _check_action_permitted


# SSE-KMS: S3 uses the KMS key on the requester's behalf, and the key policy must allow the
# requester to: kms:GenerateDataKey to write an object, kms:Decrypt to read one (GetObject;
# not HeadObject, which returns no data and needs s3:GetObject alone), with
# kms:ViaService `s3.<region>.amazonaws.com` and the encryption context `aws:s3:arn` (the
# bucket's ARN with an S3 Bucket Key, else the object's): "Using server-side encryption with
# AWS KMS keys (SSE-KMS)", https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html
# and "Reducing the cost of SSE-KMS with Amazon S3 Bucket Keys" (bucket-key.html). An object
# under the AWS-managed aws/s3 key (no key id) needs nothing: that key's policy admits the
# account's principals through S3. moto never asks the key.
def _bucket_default_kms(bucket):
    """Whether the bucket encrypts with SSE-KMS by default, with which key, and a Bucket Key."""
    rule = (bucket.encryption or {}).get("Rule") or {}
    default = rule.get("ApplyServerSideEncryptionByDefault") or {}
    bucket_key = str(rule.get("BucketKeyEnabled", "false")).lower() == "true"
    return default.get("SSEAlgorithm") == "aws:kms", default.get("KMSMasterKeyID"), bucket_key


# Subresources of an object (its tags, ACL, ...) are not its data: S3 does not use the key.
_NOT_OBJECT_DATA = {"tagging", "acl", "attributes", "retention", "legal-hold", "torrent", "restore"}


def _s3_key_use_refusal(caller, resource, context):
    path = resource[len("arn:aws:s3:::") :]
    if "/" not in path or _NOT_OBJECT_DATA & set(request.args):
        return None
    bucket_name, key_name = path.split("/", 1)
    bucket = _bucket(bucket_name)
    if bucket is None:
        return None
    by_default, default_key, bucket_key = _bucket_default_kms(bucket)
    method = request.method
    # The SDKs name the operation in the query (`?x-id=PutObject`); it is not a subresource.
    args = {name for name in request.args if name != "x-id"}
    if method == "GET" and "uploadId" not in args:
        backend = s3_backends[bucket.account_id][bucket.partition]
        stored = backend.get_object(bucket_name, key_name, version_id=request.args.get("versionId"))
        if stored is None or stored.encryption != "aws:kms":
            return None
        action, key_id = "kms:Decrypt", stored.kms_key_id
        if stored.bucket_key_enabled is not None:
            bucket_key = str(stored.bucket_key_enabled).lower() == "true"
    elif (method == "PUT" and not args) or (method == "POST" and "uploads" in args):
        algorithm = request.headers.get("x-amz-server-side-encryption")
        if algorithm != "aws:kms" and not (algorithm is None and by_default):
            return None
        action = "kms:GenerateDataKey"
        key_id = request.headers.get("x-amz-server-side-encryption-aws-kms-key-id") or default_key
        enabled = request.headers.get("x-amz-server-side-encryption-bucket-key-enabled")
        if enabled is not None:
            bucket_key = enabled.lower() == "true"
    else:
        return None
    if not key_id:
        return None
    region = bucket.region_name
    backend = kms_backends[bucket.account_id][region]
    try:
        key = backend.describe_key(key_id)
    except Exception:
        return f"the KMS key {key_id} does not exist"
    arn_context = f"arn:aws:s3:::{bucket_name}" if bucket_key else f"arn:aws:s3:::{bucket_name}/{key_name}"
    kms_context = {
        "aws:securetransport": ["true"],
        "aws:principalarn": context["aws:principalarn"],
        "aws:principalaccount": context["aws:principalaccount"],
        "kms:viaservice": [f"s3.{region}.amazonaws.com"],
        "kms:encryptioncontext:aws:s3:arn": [arn_context],
    }
    refusal = decide(caller, action, key.arn, kms_context, key.policy, key.account_id, kms=True)
    return None if refusal is None else f"{action} on {key.arn} through S3: {refusal}"


# moto's own bucket-policy check, which reads every Deny as unconditional, gives way to the
# decision above. DeleteObjects is authorized per object, as on AWS ("you must have the
# s3:DeleteObject permission" for each key, API_DeleteObjects.html), with the same caller.
def _object_permission(self, action, resource):
    remembered = getattr(g, "filepipe_caller", None)
    if remembered is None or not (request.method == "POST" and "delete" in request.args):
        return PermissionResult.NEUTRAL
    caller, context = remembered
    policy = self.policy.decode() if self.policy else None
    if decide(caller, action, resource, context, policy, self.account_id) is not None:
        return PermissionResult.DENIED
    return PermissionResult.NEUTRAL


s3_models.FakeBucket.get_permission = _object_permission


# Event notifications: "Amazon S3 sends a test message to the destination when you add a
# configuration", and refuses the configuration unless the destination's policy lets S3
# send to it ("Unable to validate the following destination configurations"; "Granting
# permissions to publish event notification messages to a destination",
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/grant-destinations-permissions-to-s3.html),
# with aws:SourceArn the bucket and aws:SourceAccount its owner; an encrypted queue's key
# policy must let S3 use the key as well. Events are delivered under the same rule.
class InvalidDestination(s3_exceptions.S3ClientError):
    code = 400

    def __init__(self, arn, reason):
        super().__init__(
            "InvalidArgument",
            f"Unable to validate the following destination configurations: {arn} ({reason})",
        )


def _s3_may_send(bucket, queue_arn):
    s3 = Caller(account=bucket.account_id, service="s3.amazonaws.com")
    context = {
        "aws:securetransport": ["true"],
        "aws:sourcearn": [f"arn:aws:s3:::{bucket.name}"],
        "aws:sourceaccount": [bucket.account_id],
    }
    _, _, _, region, account, name = queue_arn.split(":", 5)
    queue = sqs_backends[account][region].queues.get(name)
    if queue is None:
        return "the queue does not exist"
    refusal = decide(s3, "sqs:SendMessage", queue_arn, context, getattr(queue, "policy", None), account)
    key_id = (queue.attributes or {}).get("KmsMasterKeyId") if hasattr(queue, "attributes") else None
    if refusal is None and key_id:
        try:
            key = kms_backends[account][region].describe_key(key_id)
        except Exception:
            return f"the queue's KMS key {key_id} does not exist"
        context["kms:encryptioncontext:aws:sqs:arn"] = [queue_arn]
        refusal = decide(s3, "kms:GenerateDataKey", key.arn, context, key.policy, account, kms=True)
    return refusal


_set_notification_configuration = s3_models.FakeBucket.set_notification_configuration


def _set_notification_configuration_validated(self, notification_config):
    for queue in _as_list((notification_config or {}).get("QueueConfiguration") or []):
        arn = queue.get("Queue") or queue.get("QueueArn")
        try:
            refusal = _s3_may_send(self, arn)
        except Unevaluable as error:
            raise _unevaluable_response("s3", str(error))
        if refusal:
            raise InvalidDestination(arn, refusal)
    return _set_notification_configuration(self, notification_config)


s3_models.FakeBucket.set_notification_configuration = _set_notification_configuration_validated

_send_sqs_message = s3_notifications._send_sqs_message


def _send_sqs_message_if_allowed(account_id, event_body, queue_name, region_name):
    arn = f"arn:aws:sqs:{region_name}:{account_id}:{queue_name}"
    bucket_name = (event_body.get("Records") or [{}])[0].get("s3", {}).get("bucket", {}).get("name")
    bucket = _bucket(bucket_name) if bucket_name else None
    if bucket is not None and _s3_may_send(bucket, arn):
        sys.stderr.write(f"event of {bucket_name} not sent to {arn}: refused by its policies\n")
        return
    return _send_sqs_message(account_id, event_body, queue_name, region_name)


s3_notifications._send_sqs_message = _send_sqs_message_if_allowed


# --- KMS and S3 answers ------------------------------------------------------------------------
# Decrypt of a ciphertext that names no key this account has (a corrupted blob): KMS answers
# InvalidCiphertextException ("the specified ciphertext ... is corrupted, missing, or otherwise
# invalid", https://docs.aws.amazon.com/kms/latest/APIReference/API_Decrypt.html). moto
# authorizes it against "*" and answers AccessDenied, which a caller takes for a deployment
# error and retries. Tested by a_corrupted_ciphertext_is_invalid_not_denied
# (xtask/tests/integration/emulator_iam.rs).
def _kms_key_arn_or_invalid_ciphertext(self):
    resource = _kms_key_arn(self)
    if resource == "*" and not self._get_param("KeyId") and self._get_param("CiphertextBlob"):
        raise kms_exceptions.InvalidCiphertextException()
    return resource


kms.KmsResponse._determine_resource = _kms_key_arn_or_invalid_ciphertext

# ListMultipartUploads answers when each upload was initiated ("Initiated: Date and time at
# which the multipart upload was initiated", https://docs.aws.amazon.com/AmazonS3/latest/API/API_MultipartUpload.html).
# moto answers 2010-11-10 for every upload, so an age rule sees each one as ancient.
# Tested by multipart_uploads_report_when_they_were_initiated (service/tests/emulator_s3.rs).
_multipart_init = s3_models.FakeMultipart.__init__


def _multipart_init_with_time(self, *args, **kwargs):
    _multipart_init(self, *args, **kwargs)
    self.initiated_iso = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


s3_models.FakeMultipart.__init__ = _multipart_init_with_time
assert "<Initiated>2010-11-10T20:48:33.000Z</Initiated>" in s3.S3_ALL_MULTIPARTS, "moto's template changed"
s3.S3_ALL_MULTIPARTS = s3.S3_ALL_MULTIPARTS.replace(
    "<Initiated>2010-11-10T20:48:33.000Z</Initiated>", "<Initiated>{{ upload.initiated_iso }}</Initiated>"
)


# --- The server: TLS, as AWS endpoints are, and a plain-HTTP port ------------------------------
# AWS endpoints speak TLS 1.2 or later ("TLS 1.2 to become the minimum TLS protocol level for
# all AWS API endpoints", AWS Security Blog, 2022). The emulator serves its API over TLS with a
# certificate it makes at start for 127.0.0.1, signed by a CA of its own that lives only in
# memory; the CA's certificate is written to --ca-bundle for clients to trust. The plain-HTTP
# port serves the same emulator: for the emulator's control API (/moto-api, not an AWS API)
# and for requests that prove the TLS-only statements refuse plain HTTP.
def _certificate(ca_bundle_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    lifetime = datetime.timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "filepipe local emulator CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    partial = f"{ca_bundle_path}.partial"
    with open(partial, "wb") as out:
        out.write(ca.public_bytes(pem))
    os.replace(partial, ca_bundle_path)
    key_pem = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return leaf.public_bytes(pem), key_pem


def _tls_context(ca_bundle_path):
    import ssl
    import tempfile

    certificate, key = _certificate(ca_bundle_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: the key exists on disk, private, for this call alone.
    with tempfile.NamedTemporaryFile(suffix=".pem") as chain:
        chain.write(key + certificate)
        chain.flush()
        context.load_cert_chain(chain.name)
    return context


def serve(argv):
    import argparse
    import signal

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True, help="the TLS port")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--ca-bundle", required=True, help="where to write the CA certificate")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    https = make_server(args.host, args.port, app, threaded=True, ssl_context=_tls_context(args.ca_bundle))
    http = make_server(args.host, args.http_port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    threading.Thread(target=https.serve_forever, daemon=True).start()
    sys.stderr.write(f"moto: https://{args.host}:{args.port} and http://{args.host}:{args.http_port}\n")
    http.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1:])

