#!/usr/bin/env bash
# Installs the official `openai` Python SDK (PyPI) into a cached venv, idempotently: the gateway
# tests drive `fedai gateway` with software we did not write. Prints OPENAI_PYTHON=<python>.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${FEDAI_OPENAI_CACHE:-$ROOT/.cache/openai-sdk}
OPENAI_VERSION=${OPENAI_VERSION:-3.57.0}
VENV=$CACHE/venv-$OPENAI_VERSION
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
fi
echo "OPENAI_PYTHON=$VENV/bin/python"
