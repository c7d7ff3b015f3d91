#!/usr/bin/env bash
# Long soak of the model-based torture suite (tests/torture/, issue 7): rounds of random changes to
# two source trees and random faults (kill -9, sshd/S3 outages, a full destination file system, an
# inotify overflow) against a real daemon; after each round every destination, synced_files row
# and queue is checked against a model. Prints the seed; a violation is reported with its seed,
# round and operations, and the run goes on in a fresh world. Exit status 1 if any violation.
#
#   scripts/torture.sh --rounds 200 --seed 12345
#   scripts/torture.sh --rounds 50 --faults kill9,s3_outage --findings /tmp/findings.md
#   scripts/torture.sh --rounds 20 --commit HEAD   # a snapshot of a commit, not the edited tree
#   scripts/torture.sh --help
#
# Needs root (sshd, the tmpfs, /proc/sys/fs/inotify) and what scripts/test.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "torture: no .venv here; run scripts/test.sh once (it installs sshd, moto and the venv)" >&2
    exit 2
fi
exec .venv/bin/python -m tests.torture.runner "$@"
