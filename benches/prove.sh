#!/usr/bin/env bash
# Time of `iotgate check --prove` for a one-file change, at the bundled thinger profile's size
# and with N generated project policies (the shape of benches/support/scale.rs: per project
# a member's permit and, for every other project, a forbid).
#
#   bash benches/prove.sh            # SIZES="0 1000 10000"
#
# Needs the release binary and a cvc5 (CVC5, else scripts/setup-cvc5.sh makes one).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"0 1000 10000"}
cargo build --release --quiet
export CVC5=${CVC5:-$(bash scripts/setup-cvc5.sh)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in $SIZES; do
  rm -rf "$work/live" "$work/widened" "$work/rewritten"
  cp -r policies/thinger "$work/live"
  python3 - "$work/live/projects" "$n" <<'PY'
import sys
out, n = sys.argv[1], int(sys.argv[2])
with open(f"{out}/generated.cedar", "w") as f:
    for p in range(n // 2):
        project, member = f"owner{p}@project{p}", f"member{p}"
        f.write(f'@id("{project}/allow")\npermit (principal == Thinger::User::"{member}", action in [Thinger::Action::"ReadDeviceStatus", Thinger::Action::"AccessDeviceResources"], resource in Thinger::Project::"{project}");\n')
        f.write(f'@id("{project}/deny")\n@reason("no calls")\nforbid (principal == Thinger::User::"{member}", action == Thinger::Action::"CallDeviceResource", resource in Thinger::Project::"{project}");\n')
PY
  policies=$(find "$work/live" -name '*.cedar' | xargs grep -c '^@id' | awk -F: '{s += $2} END {print s}')
  sed -e "s|\"\\.\\./\\.\\./|\"$PWD/|g" -e "s|\"secret.key\"|\"$PWD/examples/thinger/secret.key\"|" \
      -e "s|\\[\"directory\"\\]|[\"$PWD/examples/thinger/directory\"]|" \
      -e "s|\\[\"$PWD/policies/thinger\"\\]|[\"$work/live\"]|" examples/thinger/iotgate.toml > "$work/iotgate.toml"
  # one file changed: a member of dave@greenhouse may now also delete devices (a widening)
  cp -r "$work/live" "$work/widened"
  sed -i 's|Thinger::Action::"ReadDeviceStatus",|Thinger::Action::"ReadDeviceStatus", Thinger::Action::"DeleteDevice",|' \
      "$work/widened/projects/dave@greenhouse.cedar"
  # the same file rewritten without a change of meaning (formatting, order of a list)
  cp -r "$work/live" "$work/rewritten"
  printf '\n// reviewed\n' >> "$work/rewritten/projects/dave@greenhouse.cedar"
  for candidate in widened rewritten; do
    start=$(date +%s.%N)
    set +e
    summary=$(target/release/iotgate check --config "$work/iotgate.toml" --against "$work/$candidate" --prove | tail -1)
    set -e
    end=$(date +%s.%N)
    printf "%6s policies  %-9s  %6.1f s  %s\n" "$policies" "$candidate" "$(echo "$end - $start" | bc)" "$summary"
  done
done
