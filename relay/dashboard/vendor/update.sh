#!/usr/bin/env bash
# Re-fetch the vendored @noble files from npm and check them against the hashes in README.md.
# `update.sh --check` only compares; without it the files are copied over. Needs the npm registry.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent @noble/secp256k1@3.2.0 @noble/hashes@2.4.0 >/dev/null
echo "2722e0b18b696cf6d3463ab10365f97f617fb651e85a7eeed8f12121a1077018  noble-secp256k1-3.2.0.tgz
e1946149b780017b2564fcc092cb01c04e1d7f20627d0296c17da8868f4436dc  noble-hashes-2.4.0.tgz" | sha256sum -c --quiet
mkdir s h
tar xzf noble-secp256k1-3.2.0.tgz -C s
tar xzf noble-hashes-2.4.0.tgz -C h
if [[ "${1:-}" == --check ]]; then
  cmp s/package/index.js "$HERE/secp256k1.js"
  for f in sha2 _md _u64 utils; do cmp "h/package/$f.js" "$HERE/noble-hashes/$f.js"; done
  echo "vendored files match npm"
else
  cp s/package/index.js "$HERE/secp256k1.js"
  cp s/package/LICENSE "$HERE/LICENSE-noble-secp256k1"
  for f in sha2 _md _u64 utils; do cp "h/package/$f.js" "$HERE/noble-hashes/"; done
  cp h/package/LICENSE "$HERE/LICENSE-noble-hashes"
fi
