#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for vmhop: Debian packages, npm packages, the test
# guest. Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=$(grep -v '^\s*#' deploy/apt-packages.txt | grep -v '^\s*$' | tr '\n' ' ')
missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages: $missing"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

echo "setup: npm ci"
npm ci --no-audit --no-fund --loglevel=error

if [ -f deploy/guest/cli.ts ]; then
  echo "setup: building the test guest (deploy/guest/out)"
  node bin/vmhop.js guest build
fi
# The container images take minutes the first time: built for CI (its compose test needs them)
# or when asked (VMHOP_SETUP_IMAGES=1); `npm run testbed:compose` builds them too when missing.
if [ "${CI:-}" = "1" ] || [ "${VMHOP_SETUP_IMAGES:-}" = "1" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v podman >/dev/null && command -v mmdebstrap >/dev/null; then
    echo "setup: compose test bed images (cached: /var/cache/vmhop and podman's store)"
    node bin/vmhop.js testbed compose --images-only
  fi
fi
echo "setup: done"
