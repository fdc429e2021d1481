#!/usr/bin/env bash
# Runs what scripts/build-static.sh built (DIST, default target/dist) the way the image runs
# it, without a container engine: the shipped binary with the shipped /etc/iotgate config,
# a throwaway secret where the image expects one mounted, in front of `iotgate mock`.
# Checks the HEALTHCHECK command, readiness, one allowed and one refused request.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dist=${1:-$root/target/dist}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen=$(free_port); admin=$(free_port); platform=$(free_port)

cp -R "$dist/etc" "$work/etc"
mkdir -p "$work/secrets" "$work/state"
head -c 32 /dev/urandom | base64 > "$work/secrets/hs256.secret"
config="$work/etc/iotgate/thinger/iotgate.toml"
# only the addresses and the mounted paths differ from the image
sed -i \
  -e "s|0.0.0.0:8080|127.0.0.1:$listen|" \
  -e "s|0.0.0.0:9090|127.0.0.1:$admin|" \
  -e "s|http://platform:8081|http://127.0.0.1:$platform|" \
  -e "s|/run/secrets/iotgate/|$work/secrets/|" \
  -e "s|/var/lib/iotgate/|$work/state/|" \
  "$config"

"$dist/iotgate" validate --config "$config"
"$dist/iotgate" mock thinger --listen "127.0.0.1:$platform" > "$work/mock.log" 2>&1 & pids+=($!)
"$dist/iotgate" --log-format json serve --config "$config" > "$work/serve.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do
  if "$dist/iotgate" probe --timeout 1 "http://127.0.0.1:$admin/healthz" > /dev/null 2>&1; then break; fi
  sleep 0.1
done
"$dist/iotgate" probe "http://127.0.0.1:$admin/healthz"   # the image's HEALTHCHECK
"$dist/iotgate" probe "http://127.0.0.1:$admin/readyz"    # the Kubernetes readiness probe

dave=$("$dist/iotgate" token --config "$config" --as dave)
status() { python3 - "$@" <<'PY'
import sys, urllib.request, urllib.error
url, token = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
}
got=$(status "http://127.0.0.1:$listen/v1/users/dave/devices" "$dave")
[ "$got" = 200 ] || { echo "container-smoke: dave's own devices: $got" >&2; cat "$work/serve.log" >&2; exit 1; }
got=$(status "http://127.0.0.1:$listen/v1/users/erin/devices" "$dave")
[ "$got" = 403 ] || { echo "container-smoke: another account's devices: $got" >&2; exit 1; }
grep -q '"message":"decision"' "$work/serve.log" || { echo "container-smoke: no JSON decision log" >&2; exit 1; }
echo "container-smoke: ok (healthz, readyz, 200 own devices, 403 another account's)"
