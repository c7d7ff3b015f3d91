#!/usr/bin/env bash
# bench/bench_swift.py: rclone (Debian's package) beside File Conveyor's cloudfiles transporter;
# the all-in-one Swift comes from scripts/deps/33-swift.sh.
set -euo pipefail
. "$(dirname "$0")/../scripts/deps/lib.sh"
bash "$(dirname "$0")/../scripts/deps/33-swift.sh"
need_debs rclone
