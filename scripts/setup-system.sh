#!/usr/bin/env bash
# System packages and kernel headers antiprof needs on Debian 12, as root. Idempotent.
set -euo pipefail

PACKAGES=(
  python3-bpfcc    # BCC (not on PyPI), for /usr/bin/python3
  python3-venv
  linux-perf       # tests check our perf.data with the real perf
  linux-headers-amd64  # BCC compiles the BPF program at load time
  gcc make         # test workloads are C programs built by the tests
  binutils         # objcopy, strip, readelf: symbolizer tests make stripped files and debug links
  g++ libstdc++6   # a C++ program built in a test; libstdc++ demangles C++ and Rust names (cxxfilt)
  golang-go        # `go tool pprof` reads our pprof output in tests
  chromium         # headless: flame graph HTML tests
  gdb              # unwinding tests compare our native stack walk with gdb's backtrace
  python3.11-dev   # CPython's internal headers: the Python frame-offset table is checked against them
  systemd          # systemd-analyze verify: the install test checks examples/deploy/antiprof.service
  xz-utils         # unwinding tests sample Debian's own xz (built without frame pointers)
)

log() { echo "antiprof setup: $*" >&2; }

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
command -v node >/dev/null || missing+=(nodejs)  # JIT symbol test (node --perf-basic-prof)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC needs the running kernel's headers. Only when the kernel ships none of its own, point
# /lib/modules/$(uname -r)/build at Debian's generic headers: the BPF program reads no kernel
# struct fields, so headers of another version compile it correctly.
release=$(uname -r)
modules=/lib/modules/$release
if [ ! -e "$modules/build/include" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
  fallback=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$fallback" ]; then
    log "no kernel headers for $release and no Debian fallback found"; exit 1
  fi
  log "kernel $release ships no headers: using $(basename "$fallback") as a fallback for BCC"
  mkdir -p "$modules"
  ln -sfn "$fallback" "$modules/build"
  ln -sfn "${fallback%-amd64}-common" "$modules/source"
fi

# npm readers that tests check our files with (flamegraph, speedscope, pprof-format), pinned in tests/js.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$here/tests/js/node_modules" ] || [ "$here/tests/js/package.json" -nt "$here/tests/js/node_modules" ]; then
  log "installing the JavaScript readers in tests/js"
  (cd "$here/tests/js" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$here/tests/js/node_modules"
fi
