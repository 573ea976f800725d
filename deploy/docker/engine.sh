#!/usr/bin/env bash
# Makes a Docker engine available, idempotently: installs Debian's `docker.io` (and
# `docker-compose`) when absent, and starts `dockerd` when no engine answers. An engine this
# script started is recorded in .cache/docker/dockerd.pid; `engine.sh stop` stops it again — only
# it, and only while that pid is still a dockerd — after removing the test containers it ran.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=$ROOT/.cache/docker
PIDFILE=$STATE/dockerd.pid
mkdir -p "$STATE"
ours() { [[ -s "$PIDFILE" ]] && [[ "$(cat "/proc/$(cat "$PIDFILE")/comm" 2>/dev/null)" == dockerd ]]; }
if [[ "${1:-}" == stop ]]; then
  if ours; then
    docker ps -aq --filter label=org.testcontainers.managed-by=testcontainers | xargs -r docker rm -f >/dev/null 2>&1 || true
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do [[ -d /proc/$pid ]] || break; sleep 0.5; done
  fi
  rm -f "$PIDFILE"
  exit 0
fi
apt_install() { bash "$ROOT/deploy/apt-install.sh" "$@"; }
# The lock is taken with fd 8 closed in every child we leave running: dockerd must not inherit
# it (a flock lives as long as any copy of its descriptor).
exec 8>"$STATE/.engine.lock"
flock -w 900 8
if ! command -v docker-compose >/dev/null; then
  echo "engine.sh: installing docker-compose from Debian" >&2
  apt_install docker-compose || echo "engine.sh: docker-compose not installed" >&2
fi
if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null; then
  echo "engine.sh: installing docker.io from Debian" >&2
  apt_install docker.io
fi
echo "engine.sh: starting dockerd" >&2
setsid nohup dockerd </dev/null >"$STATE/dockerd.log" 2>&1 8>&- 9>&- &
echo $! >"$PIDFILE"
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "engine.sh: dockerd did not start; its log ends:" >&2
tail -20 "$STATE/dockerd.log" >&2
exit 1
