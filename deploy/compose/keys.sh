#!/usr/bin/env bash
# Makes one key file per compose worker (deploy/compose/secrets/, gitignored), once: readable by
# the container's user (uid 10001) only. Uses the fedai CLI from target/release (or $FEDAI).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
FEDAI=${FEDAI:-$ROOT/target/release/fedai}
mkdir -p "$HERE/secrets"
for w in worker_a worker_b; do
  f=$HERE/secrets/$w.nsec
  if [[ ! -s "$f" ]]; then
    "$FEDAI" keygen --out "$f" >/dev/null
    chmod 0400 "$f"
    chown 10001 "$f" 2>/dev/null || true
  fi
done
echo "keys in $HERE/secrets"
