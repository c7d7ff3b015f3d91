#!/usr/bin/env bash
# Pre-compressed copies (issue 11, original #3): the end-to-end test serves the siblings that
# precompress.Gzip / precompress.Brotli make with nginx's gzip_static and (Debian's module)
# brotli_static to a client that sends Accept-Encoding. The Python side (brotli) comes from
# requirements/processors.txt.
# nginx's package would start a server on port 80 when installed; the tests start their own on a
# loopback port, so the service start is refused for the length of the install.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ "$(id -u)" -eq 0 ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && made_policy=1
fi
trap '[ "$made_policy" -eq 1 ] && rm -f "$policy"' EXIT
need_debs nginx libnginx-mod-http-brotli-static
