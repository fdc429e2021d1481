#!/usr/bin/env bash
# Makes a `cvc5` executable for `iotgate check --prove` and prints its path:
#
#   export CVC5=$(scripts/setup-cvc5.sh)
#
# cedar-policy-symcc needs cvc5 ≥ 1.3.1; Debian's package is 1.0.3 and the PyPI wheel
# (`cvc5` 1.4.2) ships the solver library with its Python API but no executable. This
# installs the wheel into a virtual environment (once; CVC5_HOME, default target/cvc5) and
# writes a `cvc5` that runs scripts/cvc5-driver.py, an SMT-LIB front end over that API.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
home=${CVC5_HOME:-$root/target/cvc5}
mkdir -p "$home"
# one install at a time: tests run this script concurrently
exec 9> "$home/.install.lock"
flock 9
if ! "$home/venv/bin/python" -c "import cvc5" 2>/dev/null; then
  python3 -m venv "$home/venv" >&2
  "$home/venv/bin/pip" install --quiet --disable-pip-version-check "cvc5==1.4.2" >&2
fi
# written aside and renamed: tests call this script while others run the wrapper
cat > "$home/cvc5.$$" <<WRAPPER
#!/bin/sh
exec "$home/venv/bin/python" "$root/scripts/cvc5-driver.py" "\$@"
WRAPPER
chmod +x "$home/cvc5.$$"
mv -f "$home/cvc5.$$" "$home/cvc5"
echo "$home/cvc5"
