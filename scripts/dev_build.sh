#!/usr/bin/env bash
# Incremental developer build without pip: CMake + ninja into build/dev, then link the built libraries
# into python/sparseflow/ so `PYTHONPATH=python python -c "import sparseflow"` uses them.
# Usage: scripts/dev_build.sh [extra cmake -D options]   (uses the active venv's python and torch)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CCACHE_BASEDIR="$root"
py=${PYTHON:-python}
build=${SPARSEFLOW_DEV_BUILD_DIR:-build/dev}
if [ ! -f "$build/build.ninja" ] || [ $# -gt 0 ]; then
  pybind11_dir=$("$py" -m pybind11 --cmakedir)
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$py")" \
    -Dpybind11_DIR="$pybind11_dir" "$@" >/dev/null
fi
cmake --build "$build"
for lib in "$build"/_C*.so "$build"/_cuda_kernels.so; do
  [ -e "$lib" ] && ln -sf "$root/$lib" "python/sparseflow/$(basename "$lib")"
done
echo "dev build ready: PYTHONPATH=$root/python"
