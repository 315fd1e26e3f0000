#!/bin/bash
# EC2 user-data for the file-pipeline service on Amazon Linux 2023.
# Rendered by Terraform's templatefile() (output `user_data`); every value below was validated
# by a variable rule, so none can contain a quote.
#
# The binary comes from the stack's artifact bucket (downloaded with the instance role, which
# may read exactly its content-addressed prefix) or from a pinned HTTPS URL, and must match a
# pinned SHA-256: a tampered download is refused.
set -euo pipefail
umask 077

readonly SERVICE_USER="filepipe"
readonly BINARY_S3_URI='${service_binary_s3_uri}'
readonly BINARY_URL='${service_binary_url}'
readonly BINARY_SHA256='${service_binary_sha256}'
# Both unset on EC2. `cargo xtask up` and the user-data test run this script in a throwaway
# root (FILEPIPE_ROOT) with systemd, user management and the metadata service stood in for,
# and give up on the first failed download.
readonly ROOT="$${FILEPIPE_ROOT:-}"
readonly DOWNLOAD_ATTEMPTS="$${FILEPIPE_DOWNLOAD_ATTEMPTS:-30}"
readonly BINARY_PATH="$ROOT/usr/local/bin/filepipe-service"
readonly CONFIG_DIR="$ROOT/etc/filepipe"
readonly UNIT_DIR="$ROOT/etc/systemd/system"

log() { echo "filepipe user-data: $*" | systemd-cat -t filepipe-user-data -p info || true; echo "filepipe user-data: $*"; }

# IMDSv2 only: every metadata read carries a session token.
imds_token=$(curl -fsS --retry 5 -X PUT "http://169.254.169.254/latest/api/token" \
  -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
imds() {
  curl -fsS --retry 5 -H "X-aws-ec2-metadata-token: $imds_token" "http://169.254.169.254/latest/meta-data/$1"
}
instance_region=$(imds placement/region)
if [ "$instance_region" != '${region}' ]; then
  log "instance runs in $instance_region but the stack is in ${region}; refusing to start"
  exit 1
fi
log "configuring instance $(imds instance-id)"

if ! id "$SERVICE_USER" >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /sbin/nologin "$SERVICE_USER"
fi

download=$(mktemp)
trap 'rm -f "$download"' EXIT
download_binary() {
  if [ -n "$BINARY_S3_URI" ]; then
    # The instance role's credentials, from IMDSv2 (AL2023 ships the AWS CLI v2).
    aws s3 cp --only-show-errors --region '${region}' "$BINARY_S3_URI" "$download"
  else
    curl -fsSL --proto '=https' --tlsv1.2 --retry 5 -o "$download" "$BINARY_URL"
  fi
}
# Right after boot the Elastic IP may not be associated yet: retry for a few minutes.
attempt=1
until download_binary; do
  if [ "$attempt" -ge "$DOWNLOAD_ATTEMPTS" ]; then
    log "could not download the service binary after $attempt attempts; refusing to start"
    exit 1
  fi
  log "downloading the service binary failed (attempt $attempt); retrying in 10 s"
  attempt=$((attempt + 1))
  sleep 10
done
if ! echo "$BINARY_SHA256  $download" | sha256sum --check --status; then
  log "downloaded binary does not match the pinned SHA-256; refusing to install"
  exit 1
fi
install -D -o root -g root -m 0755 "$download" "$BINARY_PATH"

install -d -o root -g "$SERVICE_USER" -m 0750 "$CONFIG_DIR"
cat > "$CONFIG_DIR/service.env" <<ENV
AWS_REGION=${region}
INITIAL_BUCKET=${initial_bucket}
FINAL_BUCKET=${final_bucket}
KMS_KEY_ARN=${kms_key_arn}
LISTEN_ADDR=${listen_address}
PROCESSOR=${processor}
ENV
chown root:"$SERVICE_USER" "$CONFIG_DIR/service.env"
chmod 0640 "$CONFIG_DIR/service.env"

install -d -o root -g root -m 0755 "$UNIT_DIR"
cat > "$UNIT_DIR/filepipe.service" <<'UNIT'
[Unit]
Description=filepipe: encrypted file pipeline service
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=filepipe
Group=filepipe
EnvironmentFile=/etc/filepipe/service.env
ExecStart=/usr/local/bin/filepipe-service
Restart=on-failure
RestartSec=2
TimeoutStopSec=60
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
LockPersonality=yes
MemoryDenyWriteExecute=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
UMask=0077
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl enable --now filepipe.service
log "filepipe.service started"
