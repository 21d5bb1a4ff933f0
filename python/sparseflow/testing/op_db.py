"""The registry of every sparseflow op for tests, fuzzing and benchmarks.

Each op registered in csrc/ops.cpp must have an entry here (tests/test_registry.py enforces it): its
reference, valid sample inputs (awkward sizes included), bad inputs with the exception they must raise,
a hypothesis strategy for fuzzing, how to compare outputs, and the benchmark suite that has its row.
Later ops join by adding an ``OpEntry``; the registry, opcheck and fuzz tests then cover them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from . import reference as ref


@dataclass
class Sample:
    args: tuple
    kwargs: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class BadSample:
    args: tuple
    error: type[Exception]
    match: str  # a regex the message must contain (it names the argument / what was expected)
    note: str = ""


@dataclass
class OpEntry:
    name: str
    reference: Callable[..., Any]
    samples: Callable[[torch.device], Iterable[Sample]]
    bad_samples: Callable[[torch.device], Iterable[BadSample]]
    # fuzz(draw, device) -> args: random valid *and* invalid inputs; the reference decides which is which.
    fuzz: Callable[[Callable, torch.device], tuple]
    bench_suite: str
    # compare(actual, expected, sample args): raises AssertionError on mismatch.
    compare: Callable[[Any, Any, tuple], None]
    # Why this op has no CUDA kernel yet (only ops whose GPU issue is open may say so).
    cuda_pending: str | None = None

    @property
    def op(self):
        return getattr(torch.ops.sparseflow, self.name).default


def assert_bitwise_equal(actual, expected, args=None) -> None:
    """Exact comparison by bit pattern (pack ops must not change a single bit)."""
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_bitwise_equal(a, e)
        return
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.device == expected.device, f"device {actual.device} != {expected.device}"
    a, e = actual.cpu(), expected.cpu()
    if a.is_floating_point() or a.dtype == torch.float8_e4m3fn:
        a, e = ref._as_bits(a), ref._as_bits(e)
    assert torch.equal(a, e), f"values differ at {(a != e).nonzero()[:5].tolist()}"


# ---------------------------------------------------------------------------------------------- N:M pack

def random_nm_dense(rows: int, cols: int, n: int, m: int, dtype=torch.float32, device="cpu", seed: int = 0,
                    fill: float = 1.0) -> torch.Tensor:
    """A dense matrix with at most n non-zeros in each group of m columns (fewer with fill < 1)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols // m, m, generator=g) * 4
    rank = torch.rand(rows, cols // m, m, generator=g).argsort(-1).argsort(-1)
    kept = (rank < n) & (torch.rand(rows, cols // m, m, generator=g) < fill)
    dense = (values * kept).reshape(rows, cols)
    return dense.to(dtype).to(device)


NM_PATTERNS = ((2, 4), (1, 4), (4, 8), (1, 2), (3, 7), (8, 16))


def _nm_compress_samples(device):
    for dtype in ref.PACK_DTYPES:
        for (n, m), (rows, groups) in zip(NM_PATTERNS, ((5, 3), (1, 1), (3, 2), (0, 4), (2, 1), (9, 2))):
            dense = random_nm_dense(rows, groups * m, n, m, dtype, device, seed=rows * 31 + m, fill=0.8)
            yield Sample((dense, n, m), note=f"{dtype} {n}:{m} {rows}x{groups * m}")
    wide = random_nm_dense(3, 4 * 129, 2, 4, torch.float16, device)
    yield Sample((wide.t().contiguous().t(), 2, 4), note="column-major input")
    yield Sample((torch.zeros(4, 0, device=device), 2, 4), note="zero columns")
    neg_zero = torch.full((2, 8), -0.0, device=device)
    neg_zero[0, 1] = 1.5
    yield Sample((neg_zero, 2, 4), note="-0.0 counts as zero")


def _nm_compress_bad(device):
    dense = random_nm_dense(4, 8, 2, 4, device=device)
    yield BadSample((dense, 3, 2), ValueError, r"n must be in \[1, m\]")
    yield BadSample((dense, 0, 4), ValueError, r"n must be in \[1, m\]")
    yield BadSample((dense, 2, 65), ValueError, r"m must be in \[1, 64\]")
    yield BadSample((dense[:, :6], 2, 4), ValueError, r"column count of dense \(6\) must be a multiple of m=4")
    yield BadSample((dense.double(), 2, 4), TypeError, r"dense must have dtype")
    yield BadSample((dense.reshape(-1), 2, 4), ValueError, r"dense must be 2-D")
    full = torch.ones(3, 8, device=device)
    yield BadSample((full, 2, 4), ValueError, r"not 2:4 sparse: row 0, group 0 \(columns 0..3\) has 4 non-zeros")
    late = random_nm_dense(3, 12, 2, 4, device=device)
    late[2, 9:12] = 7.0
    yield BadSample((late, 2, 4), ValueError, r"row 2, group 2 \(columns 8..11\) has [34] non-zeros")
    nan = random_nm_dense(1, 4, 2, 4, device=device)
    nan[0] = float("nan")
    yield BadSample((nan, 2, 4), ValueError, r"has 4 non-zeros")


def _nm_decompress_samples(device):
    for s in _nm_compress_samples(device):
        dense, n, m = s.args
        values, indices = ref.nm_compress(dense, n, m)
        yield Sample((values, indices, n, m), note=s.note)


def _nm_decompress_bad(device):
    values, indices = ref.nm_compress(random_nm_dense(4, 16, 2, 4, device=device), 2, 4)
    bad = indices.clone()
    bad[1, 3] = 4
    yield BadSample((values, bad, 2, 4), IndexError, r"row 1, group 1 .* expected strictly ascending positions in \[0, 4\)")
    same = indices.clone()
    same[3, 6:8] = 2
    yield BadSample((values, same, 2, 4), IndexError, r"row 3, group 3 .*\[2, 2\]")
    yield BadSample((values, indices.int(), 2, 4), TypeError, r"indices must have dtype")
    yield BadSample((values, indices[:, :4], 2, 4), ValueError, r"same shape")
    yield BadSample((values[:, :3], indices[:, :3], 2, 4), ValueError, r"multiple of n=2")
    yield BadSample((values, indices, 2, 1), ValueError, r"n must be in \[1, m\]")


def _nm_fuzz_pattern(draw):
    from hypothesis import strategies as st

    m = draw(st.sampled_from([1, 2, 4, 7, 8, 16, 64, 65]))
    n = draw(st.integers(0, m + 1))
    return n, m


def _nm_compress_fuzz(draw, device):
    from hypothesis import strategies as st

    n, m = _nm_fuzz_pattern(draw)
    rows = draw(st.integers(0, 9))
    cols = draw(st.integers(0, 5)) * max(m, 1) + draw(st.sampled_from([0, 0, 0, 1, 3]))
    dtype = draw(st.sampled_from(ref.PACK_DTYPES + (torch.float64, torch.int32)))
    kind = draw(st.sampled_from(["pattern", "random", "special"]))
    if kind == "pattern" and 1 <= n <= m and cols % m == 0:
        dense = random_nm_dense(rows, cols, n, m, torch.float32, device, seed=draw(st.integers(0, 999)), fill=0.7)
    else:
        dense = torch.randn(rows, cols, device=device) * (torch.rand(rows, cols, device=device) < 0.3)
        if kind == "special" and dense.numel():
            flat = dense.view(-1)
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -0.0]))
    dense = dense.to(dtype)
    if draw(st.booleans()) and dense.dim() == 2 and dense.shape[1] >= 2:
        dense = dense[:, ::2]  # a strided view
    return (dense, n, m)


def _nm_decompress_fuzz(draw, device):
    from hypothesis import strategies as st

    dense, n, m = _nm_compress_fuzz(draw, device)
    try:
        values, indices = ref.nm_compress(dense, n, m)
    except (TypeError, ValueError):
        values = dense.to(torch.float32) if dense.dtype not in ref.PACK_DTYPES else dense
        indices = torch.zeros(dense.shape, dtype=torch.uint8, device=device)
    if indices.numel() and draw(st.booleans()):
        indices = indices.clone()
        flat = indices.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.integers(0, 255))
    return (values, indices, n, m)


OP_DB: dict[str, OpEntry] = {
    e.name: e
    for e in [
        OpEntry("nm_compress", ref.nm_compress, _nm_compress_samples, _nm_compress_bad, _nm_compress_fuzz,
                bench_suite="nm-pack", compare=assert_bitwise_equal),
        OpEntry("nm_decompress", ref.nm_decompress, _nm_decompress_samples, _nm_decompress_bad,
                _nm_decompress_fuzz, bench_suite="nm-pack", compare=assert_bitwise_equal),
    ]
}


# ---------------------------------------------------------------------------------------------------------
# CUDA 2:4 layout (branch cuda): nm_pack_cutlass. Its own block so merges with the CPU branches stay simple.

def _canonical_2_4(rows: int, cols: int, dtype, device, seed: int = 0, fill: float = 1.0):
    return ref.nm_compress(random_nm_dense(rows, cols, 2, 4, dtype, device, seed=seed, fill=fill), 2, 4)


def _nm_pack_cutlass_samples(device):
    # Rows around the 32-row reordering block, columns around the 64-column K tile and the 16-column word.
    shapes = ((1, 4), (31, 64), (32, 64), (33, 68), (64, 128), (7, 200), (96, 16), (0, 64), (5, 0), (65, 136))
    for dtype in (torch.float16, torch.bfloat16):
        for i, (rows, cols) in enumerate(shapes):
            values, indices = _canonical_2_4(rows, cols, dtype, device, seed=i, fill=0.7 if i % 2 else 1.0)
            for target in (80, 90):
                yield Sample((values, indices, 2, 4, target), note=f"{dtype} {rows}x{cols} target {target}")
    values, indices = _canonical_2_4(40, 96, torch.float16, device, seed=3)
    yield Sample((values.t().contiguous().t(), indices.t().contiguous().t(), 2, 4, 80), note="column-major inputs")
    yield Sample((values.t().contiguous().t(), indices, 2, 4, 90), note="column-major values, target 90")


def _nm_pack_cutlass_bad(device):
    values, indices = _canonical_2_4(8, 32, torch.float16, device)
    yield BadSample((values, indices, 4, 8), ValueError, r"2:4 only, got n:m = 4:8")
    yield BadSample((values, indices, 2, 4, 70), ValueError, r"target must be 80 .* or 90 .*, got 70")
    yield BadSample((values.float(), indices, 2, 4), TypeError, r"values must have dtype Half, BFloat16, got Float")
    yield BadSample((values, indices.int(), 2, 4), TypeError, r"indices must have dtype")
    yield BadSample((values, indices[:, :8], 2, 4), ValueError, r"same shape")
    yield BadSample((values.reshape(-1), indices.reshape(-1), 2, 4), ValueError, r"values must be 2-D")
    yield BadSample((values[:, :5], indices[:, :5], 2, 4), ValueError, r"column count of values \(5\) must be a multiple of n=2")
    bad = indices.clone()
    bad[5, 6:8] = torch.tensor([3, 1], dtype=torch.uint8)
    yield BadSample((values, bad, 2, 4), IndexError, r"row 5, group 3 .* are \[3, 1\]; expected strictly ascending")
    out = indices.clone()
    out[7, 15] = 4
    yield BadSample((values, out, 2, 4), IndexError, r"row 7, group 7 .*\[\d, 4\]")


def _nm_pack_cutlass_fuzz(draw, device):
    from hypothesis import strategies as st

    n, m = draw(st.sampled_from([(2, 4), (2, 4), (2, 4), (1, 4), (4, 8)]))
    rows = draw(st.integers(0, 70))
    cols = draw(st.integers(0, 40)) * 4 + draw(st.sampled_from([0, 0, 0, 2]))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float16, torch.float32, torch.int8]))
    values, indices = _canonical_2_4(rows, cols - cols % 4, torch.float32, device, seed=draw(st.integers(0, 999)),
                                     fill=draw(st.sampled_from([1.0, 0.5])))
    if cols % 4:  # an odd column count: values and indices of width cols/2
        values = torch.cat([values, torch.ones(rows, 1, device=device)], 1)
        indices = torch.cat([indices, torch.zeros(rows, 1, dtype=torch.uint8, device=device)], 1)
    values = values.to(dtype)
    if indices.numel() and draw(st.booleans()):
        indices = indices.clone()
        flat = indices.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.integers(0, 255))
    target = draw(st.sampled_from([80, 90, 80, 90, 70]))
    return (values, indices, n, m, target)


OP_DB["nm_pack_cutlass"] = OpEntry(
    "nm_pack_cutlass", ref.nm_pack_cutlass, _nm_pack_cutlass_samples, _nm_pack_cutlass_bad, _nm_pack_cutlass_fuzz,
    bench_suite="gpu-linear", compare=assert_bitwise_equal)
