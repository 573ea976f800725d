#!/usr/bin/env bash
# The README's first command on a machine without protoc: a protoc that always fails stands first
# on PATH (and in PROTOC) while the demo builds and runs, so any build step that wanted protoc
# would fail here. fed_AI talks to LND over REST and generates no gRPC code.
set -euo pipefail
cd "$(dirname "$0")/.."
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
cat > "$fake/protoc" <<'SH'
#!/bin/sh
echo "fake protoc: fed_AI's build must not need protoc" >&2
exit 1
SH
chmod +x "$fake/protoc"
PATH="$fake:$PATH" PROTOC="$fake/protoc" cargo run --release --locked -p fedai-cli --features demo -- demo
