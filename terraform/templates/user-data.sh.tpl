#!/bin/bash
# EC2 user-data for the file-pipeline service on Amazon Linux 2023.
# Rendered by Terraform's templatefile() (output `user_data`); every value below was validated
# by a variable rule, so none can contain a quote.
#
# The binary comes from the stack's artifact bucket (downloaded with the instance role, which
# may read exactly its content-addressed prefix) or from a pinned HTTPS URL, and must match a
# pinned SHA-256: a tampered download is refused. The service serves HTTPS with a key made
# here and a bearer token from SSM; neither is in this script.
set -euo pipefail
umask 077

readonly SERVICE_USER="filepipe"
readonly BINARY_S3_URI='${service_binary_s3_uri}'
readonly BINARY_URL='${service_binary_url}'
readonly BINARY_SHA256='${service_binary_sha256}'
readonly TLS_IP='${tls_ip}'
# Both unset on EC2. `cargo xtask up` and the user-data test run this script in a throwaway
# root (FILEPIPE_ROOT) with systemd, user management and the metadata service stood in for,
# and give up on the first failed download.
readonly ROOT="$${FILEPIPE_ROOT:-}"
readonly DOWNLOAD_ATTEMPTS="$${FILEPIPE_DOWNLOAD_ATTEMPTS:-30}"
readonly BINARY_PATH="$ROOT/usr/local/bin/filepipe-service"
readonly CONFIG_DIR="$ROOT/etc/filepipe"
readonly UNIT_DIR="$ROOT/etc/systemd/system"
readonly REFRESH_PATH="$ROOT/usr/local/libexec/filepipe-refresh"

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
instance_id=$(imds instance-id)
log "configuring instance $instance_id"
# The address the certificate names: the Elastic IP, or (a server of your own) its own.
tls_ip="$TLS_IP"
if [ -z "$tls_ip" ]; then
  tls_ip=$(imds public-ipv4 || imds local-ipv4)
fi

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

install -d -o root -g "$SERVICE_USER" -m 0750 "$CONFIG_DIR" "$CONFIG_DIR/tls"
cat > "$CONFIG_DIR/service.env" <<ENV
AWS_REGION=${region}
INITIAL_BUCKET=${initial_bucket}
FINAL_BUCKET=${final_bucket}
KMS_KEY_ARN=${kms_key_arn}
LISTEN_ADDR=${listen_address}
PROCESSOR=${processor}
QUEUE_URL=${queue_url}
INSTANCE_ID=$instance_id
AUTH_TOKEN_FILE=$CONFIG_DIR/auth-token
TLS_CERT_FILE=$CONFIG_DIR/tls/cert.pem
TLS_KEY_FILE=$CONFIG_DIR/tls/key.pem
ENV
chown root:"$SERVICE_USER" "$CONFIG_DIR/service.env"
chmod 0640 "$CONFIG_DIR/service.env"

# The bearer token (an SSM SecureString under the stack's key, made by `cargo xtask deploy`)
# and the TLS key and certificate (made here, so the key never leaves the instance; only the
# certificate is published, for clients to pin), kept current by filepipe-refresh.timer.
cat > "$CONFIG_DIR/refresh.env" <<ENV
REGION=${region}
TOKEN_PARAMETER=${token_parameter}
CERT_PARAMETER=${certificate_parameter}
ROTATION_PARAMETER=${rotation_parameter}
TLS_KEY_PARAMETER=${tls_key_parameter}
SERVICE_USER=$SERVICE_USER
TOKEN_FILE=$CONFIG_DIR/auth-token
TLS_DIR=$CONFIG_DIR/tls
TLS_IP=$tls_ip
BINARY=$BINARY_PATH
ENV
install -d -o root -g root -m 0755 "$(dirname "$REFRESH_PATH")"
cat > "$REFRESH_PATH" <<'REFRESH'
#!/bin/bash
# Keeps the bearer token and the TLS certificate current: run by the user-data at first boot,
# then every minute by filepipe-refresh.timer. The token never appears in a command line.
set -euo pipefail
umask 077
# shellcheck source=/dev/null
. "$${FILEPIPE_ROOT:-}/etc/filepipe/refresh.env"
changed=0

token=$(aws ssm get-parameter --region "$REGION" --name "$TOKEN_PARAMETER" --with-decryption \
  --query Parameter.Value --output text)
if [ "$${#token}" -lt 16 ]; then
  echo "filepipe-refresh: $TOKEN_PARAMETER holds no usable token" >&2
  exit 1
fi
if [ ! -f "$TOKEN_FILE" ] || [ "$token" != "$(cat "$TOKEN_FILE")" ]; then
  printf '%s\n' "$token" > "$TOKEN_FILE.new"
  chown root:"$SERVICE_USER" "$TOKEN_FILE.new"
  chmod 0440 "$TOKEN_FILE.new"
  mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
  changed=1
fi

install_tls() {
  chown root:"$SERVICE_USER" "$TLS_DIR/cert.pem.new" "$TLS_DIR/key.pem.new"
  chmod 0440 "$TLS_DIR/key.pem.new"
  chmod 0444 "$TLS_DIR/cert.pem.new"
  mv -f "$TLS_DIR/key.pem.new" "$TLS_DIR/key.pem"
  mv -f "$TLS_DIR/cert.pem.new" "$TLS_DIR/cert.pem"
}

if [ -n "$TLS_KEY_PARAMETER" ]; then
  # A fleet behind a load balancer: every instance serves the one key and certificate that
  # `cargo xtask deploy` made for the load balancer's name (and `rotate-cert` renews), so
  # clients pin one certificate whichever instance answers.
  aws ssm get-parameter --region "$REGION" --name "$TLS_KEY_PARAMETER" --with-decryption \
    --query Parameter.Value --output text > "$TLS_DIR/key.pem.new"
  aws ssm get-parameter --region "$REGION" --name "$CERT_PARAMETER" \
    --query Parameter.Value --output text > "$TLS_DIR/cert.pem.new"
  if cmp -s "$TLS_DIR/key.pem.new" "$TLS_DIR/key.pem" && cmp -s "$TLS_DIR/cert.pem.new" "$TLS_DIR/cert.pem"; then
    rm -f "$TLS_DIR/key.pem.new" "$TLS_DIR/cert.pem.new"
  else
    install_tls
    changed=1
  fi
else
  # One instance: a new key and certificate made here, at first boot, when asked (a new value
  # of the rotation parameter), and 30 days before the current one expires.
  wanted=$(aws ssm get-parameter --region "$REGION" --name "$ROTATION_PARAMETER" \
    --query Parameter.Value --output text 2>/dev/null || echo initial)
  have=$(cat "$TLS_DIR/rotation" 2>/dev/null || echo none)
  if [ ! -f "$TLS_DIR/key.pem" ] || [ "$wanted" != "$have" ] \
    || ! openssl x509 -checkend 2592000 -noout -in "$TLS_DIR/cert.pem" >/dev/null 2>&1; then
    "$BINARY" gen-cert --ip "$TLS_IP" --ip 127.0.0.1 --dns localhost --days 90 \
      --cert-out "$TLS_DIR/cert.pem.new" --key-out "$TLS_DIR/key.pem.new" >/dev/null
    install_tls
    printf '%s\n' "$wanted" > "$TLS_DIR/rotation"
    rm -f "$TLS_DIR/published"
    changed=1
  fi
  if [ ! -f "$TLS_DIR/published" ]; then
    aws ssm put-parameter --region "$REGION" --name "$CERT_PARAMETER" --type String --overwrite \
      --value "file://$TLS_DIR/cert.pem" >/dev/null
    touch "$TLS_DIR/published"
  fi
fi

if [ "$changed" = 1 ] && systemctl is-active --quiet filepipe.service; then
  systemctl reload filepipe.service
fi
REFRESH
chmod 0755 "$REFRESH_PATH"
# The token is made by `cargo xtask deploy` right after Terraform's apply: wait for it.
attempt=1
until "$REFRESH_PATH"; do
  if [ "$attempt" -ge "$DOWNLOAD_ATTEMPTS" ]; then
    log "no bearer token or certificate after $attempt attempts; refusing to start"
    exit 1
  fi
  log "the bearer token is not there yet (attempt $attempt); retrying in 10 s"
  attempt=$((attempt + 1))
  sleep 10
done

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
# Reads the token and the certificate again (filepipe-refresh.timer sends it on a change).
ExecReload=/bin/kill -HUP $MAINPID
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

cat > "$UNIT_DIR/filepipe-refresh.service" <<'UNIT'
[Unit]
Description=filepipe: keep the bearer token and the TLS certificate current
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/filepipe-refresh
NoNewPrivileges=yes
ProtectHome=yes
PrivateTmp=yes
UMask=0077
UNIT

cat > "$UNIT_DIR/filepipe-refresh.timer" <<'UNIT'
[Unit]
Description=filepipe: refresh the bearer token and the TLS certificate every minute

[Timer]
OnBootSec=2min
OnUnitActiveSec=1min

[Install]
WantedBy=timers.target
UNIT

systemctl daemon-reload
systemctl enable --now filepipe.service filepipe-refresh.timer
log "filepipe.service started"
