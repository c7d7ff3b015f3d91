#!/usr/bin/env bash
# cloudfiles transporter tests: an all-in-one OpenStack Swift from Debian's packages (proxy with
# tempauth, account, container and object servers), configured and started under a temporary
# directory by tests/servers/swift.py, plus the memcached that tempauth keeps its tokens in.
# The packages' own services are not used (there is no init system in CI); they stay stopped.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_debs swift swift-proxy swift-account swift-container swift-object python3-swiftclient memcached
