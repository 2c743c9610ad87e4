#!/usr/bin/env bash
# Exact inference on this machine's GPU (docs/wasi-nn.md, "Determinism
# across devices"): runs the exact op suite (every op of the exact set on
# random shapes and values) and the models on the CPU backend and on the
# first Vulkan device found (a discrete GPU first), comparing outputs bit
# for bit, then prints the exact-vs-fast figures. Without a GPU it uses
# lavapipe. Usage: scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v vulkaninfo >/dev/null; then
    vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName|driverInfo|apiVersion" || true
fi
# Every property case and model compares the CPU's bytes with the GPU's.
PROPTEST_CASES="${PROPTEST_CASES:-200}" cargo test --release -p shoal-runtime --test nn_exact -- --nocapture 2>&1 |
    grep -E "^test |test result|exact \(CPU = GPU\)|differs|panicked"
cargo bench -p shoal-runtime --bench nn -- --quick
