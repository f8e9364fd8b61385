#!/bin/sh
# Container entry point: give BCC kernel headers for the node's kernel, then run antiprof.
# BCC compiles against /lib/modules/$(uname -r)/build. In order of preference:
#   1. the node's own headers: the DaemonSet mounts the node's /lib/modules and /usr/src at
#      /host/lib/modules and /host/usr/src (not over the image's own, which stay the fallback);
#   2. the kernel's built-in /sys/kernel/kheaders.tar.xz, which BCC unpacks by itself;
#   3. Debian's generic headers baked into this image.
set -eu
release=$(uname -r)

# One JSON line per message, like the agent's --log-format json, so every stderr line is JSON.
say() {
  message=$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')
  printf '{"time": "%s", "level": "%s", "logger": "antiprof.entrypoint", "message": "%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" "$2" "$message" >&2
}
# The three paths can be moved for a test; in the image they are the defaults.
modules=${ANTIPROF_MODULES_DIR:-/lib/modules}
host=${ANTIPROF_HOST_ROOT:-/host}
agent=${ANTIPROF_BIN:-/opt/antiprof/.venv/bin/antiprof}
target=$modules/$release/build

# A host path as seen from here: absolute symlinks on the node point into the node's /usr/src.
host_path() {
  link=$(readlink "$host$1" 2>/dev/null || true)
  case $link in
    "") echo "$host$1" ;;
    /*) echo "$host$link" ;;
    *) echo "$(dirname "$host$1")/$link" ;;
  esac
}

if [ ! -e "$target/include" ]; then
  node_headers=$(host_path "/lib/modules/$release/build")
  if [ -e "$node_headers/include" ]; then
    say "using the node's kernel headers ($node_headers)" info
    mkdir -p "$modules/$release"
    ln -sfn "$node_headers" "$target"
  elif [ -e "${ANTIPROF_KHEADERS:-/sys/kernel/kheaders.tar.xz}" ]; then
    say "using the kernel's /sys/kernel/kheaders.tar.xz" info
  else
    fallback=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$fallback" ]; then
      say "no kernel headers for $release on the node or in the image" error
      exit 1
    fi
    say "the node has no headers for $release: using $(basename "$fallback") from the image" info
    mkdir -p "$modules/$release"
    ln -sfn "$fallback" "$target"
    ln -sfn "${fallback%-amd64}-common" "$modules/$release/source"
  fi
fi
exec "$agent" "$@"
