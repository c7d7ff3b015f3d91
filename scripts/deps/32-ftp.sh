#!/usr/bin/env bash
# FTP transporter tests: the server is pyftpdlib with TLS (requirements/ftp.txt, installed into
# the venv by scripts/test.sh) and its certificates are generated with the cryptography package,
# so no Debian package is needed. Kept as a step so the list of test servers stays in one place.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
