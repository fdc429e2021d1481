#!/usr/bin/env bash
# Builds what the container image ships, into OUT (default target/dist):
#
#   OUT/iotgate                  the release binary, stripped
#   OUT/etc/iotgate/             schema/, policies/, thinger/ and central/ (config + directory),
#                                laid out so the configs' relative paths hold
#   OUT/var/lib/iotgate/         the (empty) folder the journals go to
#
# The Dockerfile's build stage runs exactly this script, and CI runs it too, followed by
# scripts/container-smoke.sh on its output. A static binary needs the musl target
# (IOTGATE_TARGET=x86_64-unknown-linux-musl where rustup can install it); the default
# target links only glibc's own libraries, which gcr.io/distroless/cc-debian12 carries:
# the script checks that and fails on any other shared library.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/dist}
target=${IOTGATE_TARGET:-}
cd "$root"

cargo build --release --locked --bin iotgate ${target:+--target "$target"}
bin=target/${target:+$target/}release/iotgate

rm -rf "$out"
mkdir -p "$out/etc/iotgate" "$out/var/lib/iotgate"
install -m 0755 "$bin" "$out/iotgate"
strip "$out/iotgate"

allowed=" libc.so.6 libm.so.6 libgcc_s.so.1 ld-linux-x86-64.so.2 ld-linux-aarch64.so.1 "
for lib in $(readelf -d "$out/iotgate" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
  case "$allowed" in
    *" $lib "*) ;;
    *) echo "build-static: $lib is not in distroless/cc: the image would not start" >&2; exit 1 ;;
  esac
done

cp -R schema policies "$out/etc/iotgate/"
for profile in thinger central; do
  mkdir -p "$out/etc/iotgate/$profile"
  cp -R "examples/$profile/directory" "$out/etc/iotgate/$profile/"
  cp "deploy/container/$profile.toml" "$out/etc/iotgate/$profile/iotgate.toml"
done
echo "build-static: $out ($(du -sh "$out/iotgate" | cut -f1) binary; links: $(readelf -d "$out/iotgate" | grep -c NEEDED) shared libraries)"
