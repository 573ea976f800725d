#!/usr/bin/env bash
# Makes one key file per compose worker (deploy/compose/secrets/, gitignored; or
# $FEDAI_SECRETS_DIR), once. Compose mounts file secrets as they are on the host, so each file
# must be readable by the containers' user (uid 10001) and nobody else: run as root (or give
# uid 10001 read access yourself); without it the workers could not read their keys.
# Uses the fedai CLI from target/release (or $FEDAI). Prints each worker's npub.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
FEDAI=${FEDAI:-$ROOT/target/release/fedai}
DIR=${FEDAI_SECRETS_DIR:-$HERE/secrets}
mkdir -p "$DIR"
chmod 0755 "$DIR"
for w in worker_a worker_b; do
  f=$DIR/$w.nsec
  # An empty file is what an interrupted run leaves: make it again.
  [[ -s "$f" ]] || rm -f "$f"
  if [[ ! -e "$f" ]]; then
    "$FEDAI" keygen --out "$f" >&2
  fi
  if ! chown 10001:10001 "$f" 2>/dev/null; then
    echo "keys.sh: cannot give $f to uid 10001 (run as root)" >&2
    exit 1
  fi
  chmod 0400 "$f"
done
echo "keys in $DIR"
