#!/usr/bin/env bash
# Core: sqlite3 (audits in tests), rsync (tests compare with it), python venv support.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_debs sqlite3 rsync
