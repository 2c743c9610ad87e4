#!/usr/bin/env bash
# The README's main job, on the embedded store (no daemon, no Kubo): import
# the sample dataset, run a sandboxed word count over it by CID, and show the
# result, itself stored under one CID.
set -euo pipefail
SHOAL=${1:-target/debug/shoal}
cd "$(dirname "$0")/.."
DATA=samples/data/texts
echo "== importing $DATA into the embedded store (${SHOAL_HOME:-$HOME/.shoal})"
DATA_CID=$("$SHOAL" add -q "$DATA")
echo "dataset: $DATA_CID"
echo "== importing the job's module"
MODULE_CID=$("$SHOAL" add -q samples/build/wordcount.wasm)
echo "module:  $MODULE_CID"
echo "== running it in the sandbox over the dataset"
RESULT=$("$SHOAL" run --input "$DATA_CID:/inputs" "$MODULE_CID" | tee /dev/stderr | tail -n 3 | head -n 1 | sed 's/^result: //')
echo "== the result, by CID"
"$SHOAL" inspect "$RESULT"
"$SHOAL" cat "$RESULT/outputs/counts.tsv"
echo "$RESULT"
