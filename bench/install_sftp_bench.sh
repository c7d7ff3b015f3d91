#!/usr/bin/env bash
# What bench/bench_sftp.py needs (not run by CI): OpenSSH's sshd, Debian's rclone, paramiko.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps/31-sftp.sh
. scripts/deps/lib.sh
need_debs rclone
python3 -m pip install -q -r requirements/sftp.txt
