#!/usr/bin/env bash
# Runs a command with no network but loopback: in a fresh network namespace
# (unprivileged, through a user namespace) whose only interface is `lo`.
# Tests must never reach beyond 127.0.0.0/8 and ::1; this makes it a fact
# rather than a promise. Where namespaces are unavailable (some containers)
# it says so and runs the command as it is.
set -euo pipefail
if unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c 'ip link set lo up 2>/dev/null || true; exec "$@"' sh "$@"
fi
echo "offline.sh: cannot create a network namespace here; running without isolation" >&2
exec "$@"
