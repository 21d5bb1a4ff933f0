"""The info CLI and the CPU ISA selection it reports."""

import os
import subprocess
import sys

import pytest

import sparseflow
from sparseflow import _C, info

ISA_LEVELS = ["portable", "avx512", "avx512_vnni", "avx512_bf16", "amx"]


def test_info_reports_build_and_ops(capsys):
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert f"sparseflow {sparseflow.__version__}" in out
    assert "nm_compress" in out and "CPU ISA: detected" in out
    data = info.collect()
    assert data["torch_built_against"] == sparseflow.BUILD_INFO["torch_version"]
    assert data["ops"]["nm_compress"]["cpu"] is True
    assert data["cpu_isa_detected"] in ISA_LEVELS
    assert data["amx_kernels"] == ("active" if data["cpu_isa_detected"] == "amx" else "unavailable")
    assert f"AMX kernels (bsr_linear int8/bf16 16x1, M >= 16): {data['amx_kernels']}" in out


def test_info_json_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "sparseflow.info", "--json"], capture_output=True, text=True,
                         check=True).stdout
    assert '"cpu_isa_selected"' in out


def test_set_cpu_isa_clamps_and_restores():
    detected = _C.detected_cpu_isa()
    before = _C.selected_cpu_isa()
    try:
        assert _C.set_cpu_isa("portable") == "portable"
        assert _C.selected_cpu_isa() == "portable"
        # Asking for more than the CPU has gives what it has.
        assert _C.set_cpu_isa("amx") == detected
    finally:
        _C.set_cpu_isa(before)
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        _C.set_cpu_isa("sse9")


def test_env_var_lowers_the_isa():
    env = dict(os.environ, SPARSEFLOW_CPU_ISA="portable")
    out = subprocess.run([sys.executable, "-c", "import sparseflow; print(sparseflow._C.selected_cpu_isa())"],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "portable"


def test_cpu_features_are_consistent():
    f = _C.cpu_features()
    detected = ISA_LEVELS.index(_C.detected_cpu_isa())
    if detected >= 1:
        assert f["avx512f"] and f["avx512bw"] and f["avx512vl"]
    if detected >= 2:
        assert f["avx512_vnni"]
    if detected >= 4:
        assert f["amx_tile"] and f["amx_int8"] and f["amx_bf16"]


def test_cpu_kernels_are_built_with_openmp():
    # at::parallel_for is an inline OpenMP pragma: without -fopenmp every CPU kernel runs on one thread.
    from sparseflow import _C

    assert _C.build_info()["openmp"] is True
