#!/usr/bin/env bash
# SFTP transporter tests: OpenSSH's sshd (started by tests/servers/sshd.py on a loopback port) and
# ssh-keygen for its throwaway host and user keys. sshd needs its privilege separation directory.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_debs openssh-server openssh-client
if [ "$(id -u)" -eq 0 ]; then
    mkdir -p /run/sshd
fi
