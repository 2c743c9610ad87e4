#!/usr/bin/env bash
# Start an offline js-ipfs 0.66.1 daemon on loopback for Shoal's tests.
#
#   scripts/jsipfs-daemon.sh <repo-dir> <api-port> <gateway-port> <swarm-port>
#
# Execs `jsipfs daemon --offline --enable-preload=false` with
# IPFS_PATH=<repo-dir>; it initialises the repo when needed (profile "test")
# and merges our settings into its config on every start: every address on
# 127.0.0.1 with the given ports, no gRPC server (Addresses.RPC ""),
# Bootstrap [], MDNS and webRTCStar off, Routing.Type "none". The process prints
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

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# js-ipfs does not exit when a port is taken ("Transport (@libp2p/tcp) could
# not listen on any available address" and it hangs): refuse early.
for p in "$api" "$gw" "$swarm"; do
  if port_answers "$p"; then die "127.0.0.1:$p is already in use"; fi
done

mkdir -p "$repo"
repo=$(cd "$repo" && pwd)

# A daemon killed with SIGKILL leaves repo.lock behind, and the next start
# fails with "Lock already being held". Remove it when the API port recorded
# by that daemon no longer answers (no daemon is serving this repo).
if [ -e "$repo/repo.lock" ]; then
  old=$(cat "$repo/api" 2>/dev/null || true) # e.g. /ip4/127.0.0.1/tcp/5001/http
  old=${old##*/tcp/}
  old=${old%%/*}
  if [ -n "$old" ] && port_answers "$old"; then
    die "$repo is in use by a running daemon (its API port $old answers)"
  fi
  echo "jsipfs-daemon.sh: removing stale $repo/repo.lock" >&2
  rm -rf "$repo/repo.lock" "$repo/api"
fi
export IPFS_PATH=$repo
# Keep any NODE_OPTIONS the caller set, and preload the polyfill.
export NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--require $here/polyfill.cjs"
# No colour codes in the log lines tests read.
export NO_COLOR=1

# `jsipfs daemon` merges --init-config into the repo config on every start,
# and first initialises the repo (profile "test") when it has none: one node
# process instead of `jsipfs init` + `jsipfs daemon` (~3 s less).
overrides=$repo/shoal-daemon-config.json
cat > "$overrides" <<JSON || die "cannot write $overrides"
{
  "Addresses": {
    "Swarm": ["/ip4/127.0.0.1/tcp/$swarm"],
    "API": "/ip4/127.0.0.1/tcp/$api",
    "Gateway": "/ip4/127.0.0.1/tcp/$gw",
    "RPC": "",
    "Announce": [],
    "NoAnnounce": [],
    "Delegates": []
  },
  "Bootstrap": [],
  "Discovery": { "MDNS": { "Enabled": false }, "webRTCStar": { "Enabled": false } },
  "Routing": { "Type": "none" },
  "Swarm": { "DisableNatPortMap": true }
}
JSON

exec "$node_bin" "$cli" daemon --offline --enable-preload=false \
  --init-profile test --init-config "$overrides"
