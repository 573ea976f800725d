#!/usr/bin/env bash
# Installs Debian's `chromium` and `chromium-driver` when they are absent or do not run
# (idempotent; flock'd, so the tests and .ci/run can both call it). The dashboard test drives
# this browser over WebDriver: no browser is downloaded from anywhere but Debian's archive.
# Prints CHROMIUM=<path> and CHROMEDRIVER=<path>.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=$ROOT/.cache/browser
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
works() { "$CHROMIUM" --version >/dev/null 2>&1 && "$CHROMEDRIVER" --version >/dev/null 2>&1; }
if ! works; then
  echo "tests/browser/setup.sh: installing chromium and chromium-driver from Debian" >&2
  bash "$ROOT/deploy/apt-install.sh" chromium chromium-driver
  works || { echo "tests/browser/setup.sh: chromium or chromedriver does not run" >&2; exit 1; }
fi
echo "CHROMIUM=$CHROMIUM"
echo "CHROMEDRIVER=$CHROMEDRIVER"
