#!/usr/bin/env bash
# Makes a Docker engine available, idempotently: installs Debian's `docker.io` when `dockerd` is
# absent, and starts `dockerd` when no engine answers. An engine this script started is recorded
# in .cache/docker/dockerd.pid; `engine.sh stop` stops it again (and only it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=$ROOT/.cache/docker
mkdir -p "$STATE"
exec 8>"$STATE/.engine.lock"
flock 8
if [[ "${1:-}" == stop ]]; then
  if [[ -s "$STATE/dockerd.pid" ]]; then
    kill "$(cat "$STATE/dockerd.pid")" 2>/dev/null || true
    rm -f "$STATE/dockerd.pid"
  fi
  exit 0
fi
if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null; then
  echo "engine.sh: installing docker.io from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
  "${apt[@]}" install docker.io >&2 \
    || { apt-get -o DPkg::Lock::Timeout=600 update -q >&2 && "${apt[@]}" install docker.io >&2; }
fi
echo "engine.sh: starting dockerd" >&2
nohup dockerd >"$STATE/dockerd.log" 2>&1 &
echo $! >"$STATE/dockerd.pid"
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "engine.sh: dockerd did not start; its log ends:" >&2
tail -20 "$STATE/dockerd.log" >&2
exit 1
