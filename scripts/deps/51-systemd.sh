#!/usr/bin/env bash
# The unit file and logrotate snippet in contrib/ are checked by tests/test_contrib.py with
# `systemd-analyze verify` (Debian's systemd package) and `logrotate -d`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_debs systemd logrotate
