#!/usr/bin/env bash
# The status page's tests (tests/e2e/test_http_status.py) load it in Debian's headless Chromium
# and read the DOM it rendered (--dump-dom) and a screenshot; chromium-driver is not needed for that.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_debs chromium fonts-dejavu-core
