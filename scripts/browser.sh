#!/usr/bin/env bash
# Headless Chromium for the console's browser test (Debian's package). Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "browser.sh: chromium is missing; run as root (or: sudo apt-get install chromium)" >&2
  exit 1
fi
echo "browser.sh: installing chromium (Debian package) for the console test" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
