#!/usr/bin/env bash
# The tests that need more than cargo: the API fuzzer (scripts/api-fuzz.sh),
# the Python client's tests (clients/python) and the dashboard in a real
# browser (tests/browser/dashboard.py), each against real node processes on
# loopback. Needs .deps/web (scripts/setup.sh --web) and the built binary.
#
#   scripts/web-tests.sh [SHOAL_BINARY]
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
shoal=$(realpath "${1:-$root/target/debug/shoal}")
py=$root/.deps/web/bin/python
[ -x "$py" ] || { echo "web-tests: $py missing: run scripts/setup.sh --web" >&2; exit 1; }
make -C "$root/samples" >/dev/null || { echo "web-tests: building the samples failed" >&2; exit 1; }

passed=0 failed=0
run() {
  local name=$1
  shift
  echo "web-tests: $name"
  if "$@"; then passed=$((passed + 1)); echo "web-tests: $name ok"; else failed=$((failed + 1)); echo "web-tests: $name FAILED"; fi
}

run "api fuzzer" "$here/api-fuzz.sh" "$shoal"
run "python client" env SHOAL_BIN="$shoal" "$py" -m pytest -q "$root/clients/python/tests"
run "python client types (mypy --strict)" sh -c 'cd "$1/clients/python" && "$2" -m mypy' sh "$root" "$py"
run "dashboard in chromium" "$py" "$root/tests/browser/dashboard.py" --shoal "$shoal" --out "$root/target/dashboard"

echo "web: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
