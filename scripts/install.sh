#!/usr/bin/env bash
# Install the antiprof agent from the wheels `make dist` built, as a systemd service. As root:
#   scripts/install.sh              install or upgrade
#   scripts/install.sh --uninstall  remove the agent and the unit; keep the config and the data
#   scripts/install.sh --purge      ... and remove /etc/antiprof and /var/lib/antiprof too
#
# What goes where (each can be moved with an environment variable, e.g. for a test):
#   ANTIPROF_PREFIX=/opt/antiprof             .venv: a virtualenv on /usr/bin/python3 with
#                                             --system-site-packages, so Debian's BCC imports
#   ANTIPROF_CONFIG_DIR=/etc/antiprof         antiprof.toml (an existing one is never overwritten)
#   ANTIPROF_UNIT_DIR=/etc/systemd/system     antiprof.service (paths rewritten to the two above)
#   ANTIPROF_STATE_DIR=/var/lib/antiprof      only removed by --purge (systemd creates it)
#   ANTIPROF_DIST=dist                        the wheels: the core and every plugin found there
# Our wheels are installed from their files, so nothing named antiprof-* comes from an index;
# their third-party dependencies (attrs, grpcio, ...) come from PyPI as usual.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${ANTIPROF_PREFIX:-/opt/antiprof}
config_dir=${ANTIPROF_CONFIG_DIR:-/etc/antiprof}
unit_dir=${ANTIPROF_UNIT_DIR:-/etc/systemd/system}
state_dir=${ANTIPROF_STATE_DIR:-/var/lib/antiprof}
dist=${ANTIPROF_DIST:-$here/dist}
unit=$unit_dir/antiprof.service

say() { echo "antiprof install: $*" >&2; }
die() { say "$*"; exit 1; }

systemd_running() {
  command -v systemctl >/dev/null || return 1
  case $(systemctl is-system-running 2>/dev/null || true) in
    running|degraded|starting|initializing|maintenance) return 0 ;;
    *) return 1 ;;
  esac
}

uninstall() {
  if systemd_running && [ "$unit_dir" = /etc/systemd/system ] && [ -e "$unit" ]; then
    systemctl disable --now antiprof.service >/dev/null 2>&1 || true
  fi
  rm -f "$unit"
  systemd_running && systemctl daemon-reload || true
  rm -rf "$prefix"
  say "removed $prefix and $unit"
  if [ "${1:-}" = purge ]; then
    rm -rf "$config_dir" "$state_dir"
    say "purged $config_dir and $state_dir"
  else
    say "kept $config_dir (your config) and $state_dir (profiles); --purge removes them"
  fi
}

case "${1:-}" in
  --uninstall) uninstall; exit 0 ;;
  --purge) uninstall purge; exit 0 ;;
  "") ;;
  *) die "unknown option '$1' (use --uninstall or --purge)" ;;
esac

[ "$(id -u)" = 0 ] || die "run as root: the agent is installed system-wide"
shopt -s nullglob
core=("$dist"/antiprof_core-*.whl)
[ ${#core[@]} -gt 0 ] || die "no antiprof_core wheel in $dist: run 'make dist' first"
wheels=("$dist"/antiprof_*.whl)
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 is missing: apt-get install python3 python3-venv"

say "virtualenv $prefix/.venv on /usr/bin/python3 (system site-packages: Debian's BCC)"
mkdir -p "$prefix"
/usr/bin/python3 -m venv --system-site-packages "$prefix/.venv"
say "installing ${wheels[*]##*/}"
"$prefix/.venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "${wheels[@]}"
# Dependencies: ours resolve from the wheel files above (--find-links), the rest from PyPI.
"$prefix/.venv/bin/pip" install --quiet --disable-pip-version-check --find-links "$dist" "${wheels[@]}"
install -m 0644 "$here/README.md" "$prefix/README.md"
"$prefix/.venv/bin/python" -c "import bcc" 2>/dev/null \
  || say "warning: 'import bcc' fails: apt-get install python3-bpfcc (scripts/setup-system.sh does)"

mkdir -p "$config_dir"
if [ -e "$config_dir/antiprof.toml" ]; then
  say "kept the existing $config_dir/antiprof.toml"
else
  install -m 0644 "$here/examples/deploy/antiprof.toml" "$config_dir/antiprof.toml"
  say "wrote $config_dir/antiprof.toml"
fi

mkdir -p "$unit_dir"
sed -e "s|/opt/antiprof|$prefix|g" -e "s|/etc/antiprof|$config_dir|g" \
  "$here/examples/deploy/antiprof.service" > "$unit.tmp"
chmod 0644 "$unit.tmp"
mv "$unit.tmp" "$unit"
say "wrote $unit"

"$prefix/.venv/bin/antiprof" config check "$config_dir/antiprof.toml" >&2 \
  || say "warning: fix $config_dir/antiprof.toml before starting the service"
if systemd_running && [ "$unit_dir" = /etc/systemd/system ]; then
  systemctl daemon-reload
  say "next: systemctl enable --now antiprof"
else
  say "systemd is not running here: start the agent with the unit's ExecStart line"
fi
