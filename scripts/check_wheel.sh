#!/usr/bin/env bash
# Builds the wheel and installs it into a fresh venv that holds only torch and numpy, then runs
# `python -m sparseflow.info` and one op there: what a user who pip-installs the wheel gets.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. .venv/bin/activate
export CCACHE_BASEDIR="$root"
rm -rf dist && pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w dist . 2>&1 | grep -v "^WARNING: Location" || true
wheel=$(ls dist/sparseflow-*.whl)
echo "built $wheel ($(du -h "$wheel" | cut -f1))"

fresh=${SPARSEFLOW_WHEEL_VENV:-/tmp/sparseflow-wheel-venv}
if [ ! -x "$fresh/bin/python" ]; then
  python3 -m venv "$fresh"
  "$fresh/bin/pip" install -q --disable-pip-version-check "torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')" numpy
fi
"$fresh/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
cd /tmp
"$fresh/bin/python" -m sparseflow.info
"$fresh/bin/python" - <<'PY'
import torch, sparseflow
w = torch.tensor([[0.0, 1.0, 0.0, -2.0]])
values, indices = sparseflow.ops.nm_compress(w, 2, 4)
assert torch.equal(sparseflow.ops.nm_decompress(values, indices, 2, 4), w)
print("wheel check: ok")
PY
