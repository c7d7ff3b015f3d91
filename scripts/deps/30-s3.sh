#!/usr/bin/env bash
# s3/cf transporters: everything is Python (boto3, moto[server] in requirements/s3.txt); the
# Debian side only needs the CA bundle boto3 uses against real AWS. The benchmark's tools
# (s3rver, awscli, s5cmd, rclone) are NOT installed here: see bench/install_s3_bench.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_debs ca-certificates
