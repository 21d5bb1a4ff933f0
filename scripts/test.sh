#!/usr/bin/env bash
# Sets up (scripts/setup.sh), runs the whole test suite, then checks that the wheel installs into a fresh
# venv holding only torch and numpy. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash scripts/setup.sh
. .venv/bin/activate

echo "== tests"
cd "$root/tests"  # run against the installed package, not the source tree
python -m pytest -q -p no:cacheprovider "$@" .
cd "$root"

echo "== wheel check"
bash scripts/check_wheel.sh

echo "== CPU-only torch 2.13 build check"
bash scripts/check_torch_cpu.sh
