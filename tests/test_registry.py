"""Keeps every op honest: each op registered under torch.ops.sparseflow must have a fake, a CPU kernel,
a CUDA kernel in CUDA builds, sample inputs, bad inputs, a fuzz strategy, a reference and a benchmark row."""

import pytest
import torch

import sparseflow
from sparseflow import _meta
from sparseflow.bench import suites
from sparseflow.testing.op_db import OP_DB

OP_NAMES = _meta.sparseflow_op_names()


def test_ops_are_registered():
    assert "nm_compress" in OP_NAMES and "nm_decompress" in OP_NAMES


def test_op_db_has_no_stale_entries():
    assert sorted(OP_DB) == OP_NAMES


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_is_complete(name):
    qualname = f"sparseflow::{name}"
    assert name in OP_DB, f"{name}: add an OpEntry to sparseflow/testing/op_db.py"
    entry = OP_DB[name]
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU"), f"{name}: no CPU kernel"
    fake = torch._library.simple_registry.singleton.find(qualname).fake_impl.kernel
    assert fake is not None, f"{name}: no fake; register one in sparseflow/_meta.py"
    assert callable(entry.reference) and entry.reference.__module__ == "sparseflow.testing.reference"
    assert list(entry.samples(torch.device("cpu"))), f"{name}: no sample inputs"
    assert list(entry.bad_samples(torch.device("cpu"))), f"{name}: no bad inputs"
    assert name in suites.ops_with_rows(entry.bench_suite), f"{name}: no row in bench suite {entry.bench_suite!r}"
    if sparseflow.BUILD_INFO["cuda_enabled"] and entry.cuda_pending is None:
        assert name not in _meta.CUDA_FALLBACKS, f"{name}: CUDA build without a CUDA kernel"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA")
