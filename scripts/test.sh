#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (Debian packages, a virtualenv with
# the package and its test dependencies, test servers), then runs the whole suite.
# Extra arguments go to pytest, e.g.: bash scripts/test.sh -k inotify
set -euo pipefail
cd "$(dirname "$0")/.."
for step in scripts/deps/[0-9]*.sh; do
    bash "$step"
done
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
reqs=(); for f in requirements/*.txt; do reqs+=(-r "$f"); done
.venv/bin/python -m pip install -q -e ".[all]" "${reqs[@]}"
# As root everything above was installed, so a skip for a missing tool or privilege is a failure.
if [ "$(id -u)" -eq 0 ]; then
    export FILECONVEYOR_STRICT_SKIPS=1
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
