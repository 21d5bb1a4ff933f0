"""nm_compress(prune=True): magnitude N:M pruning and packing in one pass.

The registry (op_db) runs the prune samples and fuzz cases against the topk reference on every device;
these tests pin the rule itself with hand-written expectations and check it against independent
formulations of magnitude pruning.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import toolchain_env
from sparseflow import _C, ops
from sparseflow.testing import reference as ref
from sparseflow.testing.op_db import assert_bitwise_equal

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
NAN, INF = float("nan"), float("inf")


def _bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize("dtype", FLOATS + (torch.float8_e4m3fn,))
def test_ties_keep_the_lower_position(dtype, device):
    rows = [
        ([1.0, -1.0, 1.0, 1.0], [1.0, -1.0], [0, 1]),  # four equal magnitudes
        ([0.5, -2.0, 2.0, -2.0], [-2.0, 2.0], [1, 2]),  # a tie for the last slot: position 2 beats 3
        ([-0.0, 0.0, -0.0, 0.0], [0.0, 0.0], [0, 1]),  # all zero: +0 padding at the lowest positions
        ([0.0, -0.0, 3.0, -0.0], [0.0, 3.0], [0, 2]),  # one non-zero: padded like nm_compress
        ([1.0, 0.25, -0.25, 0.0], [1.0, 0.25], [0, 1]),
    ]
    dense = torch.tensor([sum((r[0] for r in rows), [])], device=device).to(dtype)
    values, indices = ops.nm_compress(dense, 2, 4, prune=True)
    expected = torch.tensor([sum((r[1] for r in rows), [])]).to(dtype)
    assert_bitwise_equal(values.cpu(), expected)  # bitwise: the zeros are +0, never -0
    assert indices.tolist() == [sum((r[2] for r in rows), [])]


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_is_the_largest_magnitude(dtype, device):
    dense = torch.tensor([[1.0, NAN, INF, -INF],  # NaN beats inf; the infs tie -> position 2
                          [NAN, 5.0, NAN, NAN],  # NaNs tie with each other -> the first two
                          [-INF, 0.0, 3.0, NAN]]).to(dtype).to(device)
    values, indices = ops.nm_compress(dense, 2, 4, prune=True)
    assert indices.tolist() == [[1, 2], [0, 2], [0, 3]]
    assert values.float().cpu().tolist()[0][1] == INF and values.float().cpu().tolist()[2][0] == -INF
    assert values.float().isnan().sum().item() == 4


def test_nan_payloads_tie(device):
    # Different NaN bit patterns are one magnitude: positions decide, not payloads (the bits are kept).
    bits = torch.tensor([[0x7F800001, 0x7FFFFFFF, 0xFFC00000 - 2**32, 0x3F800000]], dtype=torch.int32)
    dense = bits.view(torch.float32).to(device)
    values, indices = ops.nm_compress(dense, 1, 4, prune=True)
    assert indices.tolist() == [[0]] and _bits(values).tolist() == [[0x7F800001]]
    values, indices = ops.nm_compress(dense, 3, 4, prune=True)
    assert indices.tolist() == [[0, 1, 2]] and _bits(values).tolist() == [bits[0, :3].tolist()]


def test_int8_magnitudes(device):
    dense = torch.tensor([[5, -128, 127, -127, 3, -3, 3, -3, 0, 0, -1, 0]], dtype=torch.int8, device=device)
    values, indices = ops.nm_compress(dense, 2, 4, prune=True)
    assert values.tolist() == [[-128, 127, 3, -3, 0, -1]]
    assert indices.tolist() == [[1, 2, 0, 1, 0, 2]]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (5, 16), (17, 64), (1, 1)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_equals_magnitude_pruning_then_compress(n, m, dtype, device):
    # Independent formulation: a stable descending sort of |x| (NaN-free data), mask, then plain nm_compress.
    g = torch.Generator().manual_seed(n * 100 + m)
    dense = (torch.randn(37, 5 * m, generator=g) * 3).to(dtype)
    dense[dense.abs() < 0.3] = 0.0  # zeros, and groups with fewer than n non-zeros
    dense[5] = dense[5].abs().round()  # many ties
    dense = dense.to(device)
    groups = dense.reshape(37, 5, m)
    order = groups.abs().float().argsort(dim=-1, descending=True, stable=True)[..., :n]
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=device).scatter_(-1, order, True)
    pruned = torch.where(keep, groups, 0).reshape(dense.shape)
    assert_bitwise_equal(ops.nm_compress(dense, n, m, prune=True), ops.nm_compress(pruned, n, m))
    values, indices = ops.nm_compress(dense, n, m, prune=True)
    assert torch.equal(ops.nm_decompress(values, indices, n, m), pruned)


def test_matches_topk_on_distinct_magnitudes(device):
    # With all magnitudes distinct the kept set is exactly torch.topk's.
    g = torch.Generator().manual_seed(1)
    magnitudes = torch.randperm(64 * 256, generator=g).float() + 1
    signs = torch.randint(0, 2, (64 * 256,), generator=g).float() * 2 - 1
    dense = (magnitudes * signs).reshape(64, 256).to(device)
    top = dense.abs().reshape(64, 64, 4).topk(2, dim=-1).indices.sort(-1).values
    values, indices = ops.nm_compress(dense, 2, 4, prune=True)
    assert torch.equal(indices.reshape(64, 64, 2).long(), top)
    assert torch.equal(values.reshape(64, 64, 2), dense.reshape(64, 64, 4).gather(-1, top))


def test_valid_pattern_is_unchanged_and_dense_input_is_not_rejected(device):
    from sparseflow.testing.op_db import random_nm_dense

    sparse = random_nm_dense(9, 40, 2, 4, device=device, fill=0.6)
    assert_bitwise_equal(ops.nm_compress(sparse, 2, 4, prune=True), ops.nm_compress(sparse, 2, 4))
    full = torch.arange(1.0, 41.0, device=device).reshape(1, 40)
    with pytest.raises(ValueError, match=r"sparseflow.nm_compress: dense is not 2:4 sparse: row 0, group 0"):
        ops.nm_compress(full, 2, 4)
    values, indices = ops.nm_compress(full, 2, 4, prune=True)
    assert indices.reshape(-1, 2).tolist() == [[2, 3]] * 10


def test_prune_on_a_strided_view_matches_the_reference(device):
    base = torch.randn(12, 64, device=device)
    view = base.t()[:32, :8].t()  # [8, 32], column-major
    assert_bitwise_equal(ops.nm_compress(view, 2, 4, prune=True), ref.nm_compress(view, 2, 4, prune=True))


def test_fake_accepts_prune():
    with FakeTensorMode():
        dense = torch.empty(6, 16, dtype=torch.float16)
        values, indices = torch.ops.sparseflow.nm_compress(dense, 2, 4, prune=True)
        assert values.shape == (6, 8) and values.dtype == torch.float16 and indices.dtype == torch.uint8
        with pytest.raises(ValueError, match=r"column count of dense \(14\) must be a multiple of m=4"):
            torch.ops.sparseflow.nm_compress(torch.empty(6, 14), 2, 4, prune=True)


def test_compiles_with_prune():
    fn = torch.compile(lambda w: ops.nm_compress(w, 2, 4, prune=True), backend="eager", fullgraph=True)
    dense = torch.randn(8, 32)
    assert_bitwise_equal(fn(dense), ref.nm_compress(dense, 2, 4, prune=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")
@pytest.mark.parametrize("dtype", FLOATS + (torch.float8_e4m3fn, torch.int8))
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (2, 8)])
def test_cuda_matches_cpu_on_large_inputs(n, m, dtype):
    # Many tiles of the vectorised CUDA path, a partial last tile (odd rows), and every tie class.
    g = torch.Generator().manual_seed(m)
    dense = torch.randn(1023, 1032, generator=g) * 60
    dense[::7] = dense[::7].round().clamp(-2, 2)
    dense = dense.to(dtype)
    expected = ops.nm_compress(dense, n, m, prune=True)
    actual = ops.nm_compress(dense.cuda(), n, m, prune=True)
    assert_bitwise_equal(tuple(t.cpu() for t in actual), expected)


@pytest.mark.skipif(_C.detected_cpu_isa() == "portable", reason="this CPU has no AVX-512 (only the portable kernel)")
@pytest.mark.parametrize("dtype", FLOATS + (torch.float8_e4m3fn, torch.int8))
@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (4, 4), (1, 8), (2, 8), (4, 8), (7, 8)])
def test_avx512_kernel_matches_the_portable_one(n, m, dtype):
    # 13 x 3 groups of 8 or 6 groups of 4 per row: vectors of 16 lanes cross rows and leave a scalar tail.
    g = torch.Generator().manual_seed(n * 10 + m)
    dense = torch.randn(13, 3 * 8 if m == 8 else 6 * 4, generator=g) * 60
    dense[::3] = dense[::3].round().clamp(-2, 2)  # ties and zeros
    dense[1, :5] = float("nan")
    dense[2, ::5] = -0.0
    dense = dense.to(dtype)
    expected = ref.nm_compress(dense, n, m, prune=True)
    try:
        for level in ("portable", "avx512"):
            assert _C.set_cpu_isa(level) == level
            assert_bitwise_equal(ops.nm_compress(dense, n, m, prune=True), expected)
    finally:
        _C.set_cpu_isa(_C.detected_cpu_isa())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")
def test_cuda_prune_does_not_synchronize():
    dense = torch.randn(256, 1024, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        values, indices = ops.nm_compress(dense, 2, 4, prune=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_bitwise_equal((values.cpu(), indices.cpu()), ops.nm_compress(dense.cpu(), 2, 4, prune=True))


def test_cuda_tile_logic_on_the_host(tmp_path):
    # The CUDA kernel's per-tile code (16-byte loads split into groups, outputs packed into words) compiled
    # for the host, so it is checked on machines without a GPU too.
    nvcc = shutil.which("nvcc") or next((str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) /
                                                          "bin" / "nvcc",) if p.exists()), None)
    if nvcc is None:
        pytest.skip("needs nvcc")
    root = Path(__file__).resolve().parents[1]
    exe = tmp_path / "prune_tiles"
    subprocess.run([nvcc, "-std=c++20", "-O1", "-arch=sm_80", f"-I{root / 'csrc'}", f"-I{root / 'csrc' / 'include'}",
                    "-o", str(exe), str(root / "tests" / "cuda_host" / "prune_tiles.cu")], check=True, timeout=600,
                   env=toolchain_env())
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=toolchain_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" ok") == 15 and "all tiles match" in out.stdout
