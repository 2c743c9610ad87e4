#!/usr/bin/env bash
# Start an offline js-ipfs 0.66.1 daemon on loopback for Shoal's tests.
#
#   scripts/jsipfs-daemon.sh <repo-dir> <api-port> <gateway-port> <swarm-port>
#
# Initialises <repo-dir> if it has no config (`jsipfs init --profile test`),
# rewrites the config (every address on 127.0.0.1 with the given ports, no
# gRPC server, Bootstrap [], MDNS/webRTCStar off, Routing.Type "none"), then
# execs `jsipfs daemon --offline --enable-preload=false`. The process prints
# "Daemon is ready" on stdout when http://127.0.0.1:<api-port>/api/v0 is up;
# SIGTERM/SIGINT stop it. Ports must be free (0 is not useful: the test
# could not learn the port).
#
# For a hard no-network guarantee run the test (and so this daemon) inside
#   unshare -n sh -c 'ip link set lo up; ...'
#
# Environment: SHOAL_JSIPFS_DIR (default <repo>/.deps/jsipfs), NODE (node
# binary, default `node` from PATH).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deps=${SHOAL_JSIPFS_DIR:-$here/../.deps/jsipfs}
node_bin=${NODE:-node}

die() { echo "jsipfs-daemon.sh: $*" >&2; exit 2; }

[ $# -eq 4 ] || die "usage: $0 <repo-dir> <api-port> <gateway-port> <swarm-port>"
repo=$1 api=$2 gw=$3 swarm=$4
for p in "$api" "$gw" "$swarm"; do
  case $p in ''|*[!0-9]*) die "port '$p' is not a number" ;; esac
done

cli=$deps/node_modules/ipfs/src/cli.js
[ -f "$cli" ] || die "js-ipfs not found at $deps: run scripts/setup.sh --test (or set SHOAL_JSIPFS_DIR)"
command -v "$node_bin" >/dev/null || die "node not found: run scripts/setup.sh --test"
[ -f "$here/polyfill.cjs" ] || die "missing $here/polyfill.cjs"

mkdir -p "$repo"
repo=$(cd "$repo" && pwd)
export IPFS_PATH=$repo
# Keep any NODE_OPTIONS the caller set, and preload the polyfill.
export NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--require $here/polyfill.cjs"
# No telemetry-like behaviour, no colours in the log lines tests read.
export NO_COLOR=1

if [ ! -f "$repo/config" ]; then
  "$node_bin" "$cli" init --profile test >&2 || die "jsipfs init failed in $repo"
fi

"$node_bin" - "$repo/config" "$api" "$gw" "$swarm" <<'EOF' || die "could not rewrite $repo/config"
const fs = require('fs')
const [file, api, gw, swarm] = process.argv.slice(2)
const c = JSON.parse(fs.readFileSync(file, 'utf8'))
c.Addresses = {
  ...(c.Addresses || {}),
  Swarm: [`/ip4/127.0.0.1/tcp/${swarm}`],
  API: `/ip4/127.0.0.1/tcp/${api}`,
  Gateway: `/ip4/127.0.0.1/tcp/${gw}`,
  Announce: [],
  NoAnnounce: [],
  Delegates: []
}
delete c.Addresses.RPC // no gRPC server (its default port 5003 would clash)
c.Bootstrap = []
c.Discovery = { ...(c.Discovery || {}), MDNS: { Enabled: false, Interval: 10 }, webRTCStar: { Enabled: false } }
c.Routing = { ...(c.Routing || {}), Type: 'none' }
c.Swarm = { ...(c.Swarm || {}), DisableNatPortMap: true }
fs.writeFileSync(file, JSON.stringify(c, null, 2))
EOF

exec "$node_bin" "$cli" daemon --offline --enable-preload=false
