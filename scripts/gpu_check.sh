#!/usr/bin/env bash
# One command for a GPU machine (H100/H200; system Python with torch, nvcc, cmake, ninja, pybind11; no network):
# builds sparseflow for this GPU's arch only, runs the CUDA tests and the gpu-linear benchmark (--quick), and
# writes a short report. Every step runs under `timeout`; logs are tee'd under $OUT (default ./gpu-report).
# Usage: scripts/gpu_check.sh [extra pytest args]      Total: a few minutes on 16 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/gpu-report}
mkdir -p "$out"
py=${PYTHON:-python3}
report="$out/report.md"
: > "$report"
status=0

note() { echo "$*" | tee -a "$report"; }

# step NAME LIMIT_S CMD...: runs CMD under timeout, logs to $out/NAME.log, records status and duration.
step() {
  local name=$1 limit=$2
  shift 2
  local start rc
  start=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - start ))
  if [ "$rc" -eq 0 ]; then
    note "- $name: ok (${took}s)"
  else
    [ "$rc" -eq 124 ] && note "- $name: TIMED OUT after ${limit}s" || note "- $name: FAILED rc=$rc (${took}s)"
    status=1
  fi
  return "$rc"
}

note "# sparseflow GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
step env 60 bash -c "nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv; \
  $py -c 'import sys, torch; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'; nvcc --version | tail -2"
cc=$("$py" -c "import torch; print('%d%d' % torch.cuda.get_device_capability(0))" 2>/dev/null || echo "")
case "$cc" in
  90) archs="90a" ;;  # the sm90a kernels only run on 9.0 exactly
  8?) archs="80" ;;
  "") note "- no CUDA device visible to torch: nothing to check"; exit 1 ;;
  *) archs="80;90a"; note "- sm_$cc: building 80;90a (the CUDA kernels will refuse this GPU with a clear error)" ;;
esac
note "- GPU sm_$cc, building CUDA archs $archs"

export SPARSEFLOW_DEV_BUILD_DIR=build/gpu-$cc
export PYTHON=$py
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
if ! step build 420 bash scripts/dev_build.sh -DSPARSEFLOW_CUDA=ON "-DSPARSEFLOW_CUDA_ARCHS=$archs"; then
  note "build failed: see $out/build.log"
  exit 1
fi

export PYTHONPATH=$root/python
if ! "$py" -c "import pytest" 2>/dev/null; then
  note "- pytest is not importable by $py: install it (wheel: pytest, pluggy, iniconfig, packaging) and rerun"
  exit 1
fi
# Every test of test_cuda_linear.py / test_cuda_bsr.py (-k matches their module names), the CUDA prune-compress
# tests, and the op registry's samples, bad inputs, fuzz and opcheck on the cuda device.
step tests 300 "$py" -m pytest -q -p no:cacheprovider -rfE --junitxml="$out/junit.xml" \
  tests/test_cuda_linear.py tests/test_cuda_bsr.py tests/test_nm_prune.py tests/test_op_samples.py tests/test_fuzz.py -k cuda "$@"
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -40 >> "$report"

if "$py" -c "import sys; from sparseflow.bench import suites; sys.exit('gpu-linear' not in suites.SUITES)"; then
  step bench 180 "$py" -m sparseflow.bench gpu-linear --quick --device cuda --no-progress --json "$out/bench.json"
  { echo; echo '```'; grep -vE "^== " "$out/bench.log" | tail -60; echo '```'; } >> "$report"
else
  note "- bench: no gpu-linear suite in this tree"
fi

note "report: $report (logs and junit.xml beside it)"
exit $status
