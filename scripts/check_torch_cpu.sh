#!/usr/bin/env bash
# Builds sparseflow against the CPU-only torch 2.13.0 in its own venv (CUDA kernels are then left out by
# the build itself) and runs the op tests there. Usage: scripts/check_torch_cpu.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${SPARSEFLOW_CPU_VENV:-/tmp/sparseflow-torch213-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0 -r requirements/build.txt pytest hypothesis
fi
. "$venv/bin/activate"
export CCACHE_BASEDIR="$root"
find python/sparseflow -maxdepth 1 -name '*.so' -type l -delete
pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
  --config-settings=build-dir=build/torch-cpu . 2>&1 | grep -v "^WARNING: Location" || true
cd tests
python -c "import sparseflow, torch; b = sparseflow.BUILD_INFO; print('torch', torch.__version__, 'cuda kernels built:', b['cuda_enabled']); assert not b['cuda_enabled']"
python -m pytest -q -p no:cacheprovider test_registry.py test_op_samples.py test_op_bindings.py test_info.py "$@"
