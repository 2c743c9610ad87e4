#!/usr/bin/env bash
# The README's main job, on the embedded store (no daemon, no Kubo):
# import the sample dataset, print its CID, and read it back by CID.
set -euo pipefail
SHOAL=${1:-target/debug/shoal}
cd "$(dirname "$0")/.."
DATA=samples/data/texts
echo "== importing $DATA into the embedded store (${SHOAL_HOME:-$HOME/.shoal})"
CID=$("$SHOAL" add -q "$DATA")
echo "dataset cid: $CID"
echo "== listing it by cid"
"$SHOAL" ls "$CID"
echo "== reading one file back by cid/path"
"$SHOAL" cat "$CID/shoal.txt"
echo "== checking the store"
"$SHOAL" repo verify
echo "$CID"
