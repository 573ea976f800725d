#!/usr/bin/env bash
# Installs the generic NIP-90 client (client.mjs + nostr-tools) into
# <repo>/.cache/generic-client so the integration tests can run it with
# `node <repo>/.cache/generic-client/client.mjs ...`.
# Idempotent: npm runs only when package-lock.json changed since the last
# install; client.mjs is refreshed every time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest="$repo/.cache/generic-client"
stamp="$dest/.lock.sha256"

mkdir -p "$dest"
# Several test binaries may call this at once; serialise them so two npm ci
# runs never share one node_modules.
exec 9>"$dest/.setup.lock"
flock 9

# Copy then rename, so a client already running never sees half a file.
cp "$here/client.mjs" "$dest/client.mjs.tmp"
mv -f "$dest/client.mjs.tmp" "$dest/client.mjs"

want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" || ! -d "$dest/node_modules" ]]; then
    cp "$here/package.json" "$here/package-lock.json" "$dest/"
    # Drop the stamp first so an interrupted install is retried next time.
    rm -f "$stamp"
    (cd "$dest" && npm ci --no-audit --no-fund)
    printf '%s\n' "$want" > "$stamp"
fi
