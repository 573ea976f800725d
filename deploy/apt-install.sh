#!/usr/bin/env bash
# Installs Debian packages the project's scripts need (docker.io, debootstrap, chromium, …):
# waits for dpkg's lock (several setup scripts run at once in .ci/run), and refreshes the
# package lists once when the install fails on stale or empty ones (a fresh machine).
# Output goes to stderr. Usage: deploy/apt-install.sh PACKAGE…
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
"${apt[@]}" install "$@" >&2 \
  || { apt-get -o DPkg::Lock::Timeout=600 update -q >&2 && "${apt[@]}" install "$@" >&2; }
