#!/usr/bin/env bash
# Builds the CPU code with AddressSanitizer + UndefinedBehaviorSanitizer (CUDA off) into build/asan and
# runs the test suite against it. Usage: scripts/asan_tests.sh [pytest args]   (needs scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. .venv/bin/activate
export CCACHE_BASEDIR="$root"
build=build/asan
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPARSEFLOW_CUDA=OFF -DSPARSEFLOW_SANITIZE=ON \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" >/dev/null
cmake --build $build
# A package dir of links to the Python sources plus the sanitized library.
pkg=$build/pkg/sparseflow
rm -rf "$build/pkg" && mkdir -p "$pkg"
for f in python/sparseflow/*; do
  case "$f" in *.so) ;; *) ln -s "$root/$f" "$pkg/" ;; esac
done
ln -s "$root/$build"/_C*.so "$pkg/"
export PYTHONPATH="$root/$build/pkg"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Leak checking would report CPython's and torch's own process-lifetime allocations.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd tests
python -c "import sparseflow; assert sparseflow.BUILD_INFO['sanitizers'], 'not the sanitized build'"
# -s: pytest's fd capture would swallow a sanitizer's report when the process aborts.
python -m pytest -q -s -p no:cacheprovider "$@" .
