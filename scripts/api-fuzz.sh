#!/usr/bin/env bash
# Drives a live node from its own /openapi.json with schemathesis
# (property-based: examples, edge cases and random data for every
# operation), then checks the node is still healthy.
#
#   scripts/api-fuzz.sh [SHOAL_BINARY] [MAX_EXAMPLES]
#
# Fails on: any 5xx, a status the document does not list for the
# operation, a response that violates its schema, content type or
# headers, or a node that stops answering. The document itself must
# validate as OpenAPI 3.1. Needs .deps/web (scripts/setup.sh --web).
# Loopback only; the node and its home are removed at the end.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
shoal=${1:-$root/target/debug/shoal}
examples=${2:-${SHOAL_FUZZ_EXAMPLES:-50}}
venv=$root/.deps/web
[ -x "$venv/bin/schemathesis" ] || { echo "api-fuzz: $venv/bin/schemathesis missing: run scripts/setup.sh --web" >&2; exit 1; }

work=$(mktemp -d)
node_pid=
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A node on loopback with a module and a small dataset of its own, so that
# the fuzzer also meets real jobs.
"$shoal" --home "$work/node" node --slots 2 >"$work/ready" 2>"$work/node.log" &
node_pid=$!
for _ in $(seq 1 200); do
  grep -q '^ready ' "$work/ready" 2>/dev/null && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; echo "api-fuzz: the node did not start" >&2; exit 1; }
  sleep 0.1
done
api=$(sed -n 's/^ready api=\([^ ]*\).*/\1/p' "$work/ready")
[ -n "$api" ] || { echo "api-fuzz: no ready line from the node" >&2; exit 1; }
echo "api-fuzz: node at $api, $examples examples per operation"

# Real data and a real job, for the operations that read them.
hello=$root/samples/build/hello.wasm
if [ -f "$hello" ]; then
  module=$(curl -fsS -X POST -H 'X-Shoal-Request: 1' --data-binary @"$hello" "$api/v1/files?name=hello.wasm" |
    "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["cid"])')
  curl -fsS -X POST -H 'Content-Type: application/json' -d "{\"task\": {\"module\": \"$module\"}}" "$api/v1/jobs" >/dev/null
fi

curl -fsS "$api/openapi.json" -o "$work/openapi.json"
"$venv/bin/python" - "$work/openapi.json" <<'EOF'
import json, sys
from openapi_spec_validator import validate
doc = json.load(open(sys.argv[1]))
assert doc["openapi"].startswith("3.1"), doc["openapi"]
validate(doc)
print("api-fuzz: /openapi.json is valid OpenAPI", doc["openapi"], "with", len(doc["paths"]), "paths")
EOF

# In the scratch directory: schemathesis keeps its state in the cwd.
(cd "$work" && "$venv/bin/schemathesis" run "$api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "$examples" --seed 1 --workers 1 --request-timeout 60 \
  --header 'X-Shoal-Request: 1' \
  --suppress-health-check all --no-color)

code=$(curl -s -o "$work/health" -w '%{http_code}' "$api/v1/health")
[ "$code" = 200 ] || { echo "api-fuzz: the node is unhealthy after the run ($code)" >&2; cat "$work/node.log" >&2; exit 1; }
kill -0 "$node_pid" || { echo "api-fuzz: the node died" >&2; exit 1; }
echo "api-fuzz: the node is healthy after the run"
