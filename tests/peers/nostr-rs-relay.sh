#!/usr/bin/env bash
# Builds nostr-rs-relay (a relay we did not write, from crates.io) once into .cache/peers/bin.
# Idempotent and safe to call from several test processes at once (flock). Prints the binary's
# path on stdout.
#
# Its build script compiles a gRPC .proto and needs protoc: this script installs Debian's
# protobuf-compiler for that build only when no protoc is on PATH (fed_AI itself needs none).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS="${FEDAI_CACHE:-$ROOT/.cache}/peers"
NRS_VERSION=0.8.12
BIN="$PEERS/bin/nostr-rs-relay"
STAMP="$PEERS/.nostr-rs-relay.version"
built() { [[ -x "$BIN" && "$(cat "$STAMP" 2>/dev/null)" == "$NRS_VERSION" ]]; }
if built; then echo "$BIN"; exit 0; fi
mkdir -p "$PEERS"
exec 9>"$PEERS/.nostr-rs-relay.lock"
flock 9
if built; then echo "$BIN"; exit 0; fi
if ! protoc --version >/dev/null 2>&1; then
    echo "nostr-rs-relay.sh: installing protobuf-compiler (nostr-rs-relay's build needs protoc)" >&2
    if ! { apt-get -o DPkg::Lock::Timeout=600 install -y -qq protobuf-compiler >/dev/null 2>&1 \
        || { apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 install -y -qq protobuf-compiler >/dev/null; }; }; then
        echo "nostr-rs-relay.sh: cannot install protobuf-compiler" >&2
        exit 1
    fi
fi
# Not --locked: its lockfile pins time 0.3.25, which no longer compiles on current Rust.
cargo install nostr-rs-relay --version "$NRS_VERSION" --root "$PEERS" >&2
echo "$NRS_VERSION" > "$STAMP"
echo "$BIN"
