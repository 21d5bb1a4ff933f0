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
    # Device types the samples, bad samples, fuzz strategy and reference describe. Ops whose packed layout
    # differs per device list "cpu" here (nm_pack/nm_linear, bsr_linear); their CUDA kernels are tested against
    # CUDA-layout references in tests/test_cuda_linear.py and tests/test_cuda_bsr.py. bsr_pack describes both
    # (its samples and reference follow the device).
    sample_devices: tuple[str, ...] = ("cpu", "cuda")

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
    yield from _nm_prune_samples(device)


def _nm_prune_samples(device):
    """prune=True: dense inputs with any number of non-zeros per group."""
    g = torch.Generator().manual_seed(6)
    for dtype in ref.PACK_DTYPES:
        # Odd group counts leave a partial CUDA tile (2 fp16 / 4 int8 groups per 16-byte load).
        for (n, m), (rows, groups) in zip(NM_PATTERNS, ((5, 3), (3, 5), (3, 3), (2, 4), (2, 1), (9, 2))):
            dense = torch.randn(rows, groups * m, generator=g) * 4
            dense *= torch.rand(rows, groups * m, generator=g) < 0.8
            yield Sample((dense.to(dtype).to(device), n, m, True), note=f"prune {dtype} {n}:{m} {rows}x{groups * m}")
        # Many ties: equal magnitudes of both signs, zeros of both signs, whole zero groups.
        ties = torch.randint(-2, 3, (7, 24), generator=g).float()
        ties[ties == 0] = torch.tensor([0.0, -0.0]).repeat(24 * 7)[: int((ties == 0).sum())]
        ties[3] = 0.0
        for n, m in ((2, 4), (4, 8), (1, 4)):
            yield Sample((ties.to(dtype).to(device), n, m, True), note=f"prune ties {dtype} {n}:{m}")
    big = torch.randn(64, 4 * 96, generator=g)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.int8):
        for n, m in ((2, 4), (1, 4), (4, 8)):
            yield Sample(((big * 40).to(dtype).to(device), n, m, True), note=f"prune {dtype} {n}:{m} 64x384")
    special = torch.tensor([[float("nan"), 1.0, float("inf"), 2.0, -float("inf"), float("nan"), 0.0, float("nan")],
                            [1.0, float("nan"), -1.0, float("nan"), -0.0, -0.0, 0.0, float("-inf")]])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        yield Sample((special.to(dtype).to(device), 2, 4, True), note=f"prune NaN is the largest, {dtype}")
    extremes = torch.tensor([[-128, 127, -127, 5, 0, 0, -1, 1]], dtype=torch.int8)
    yield Sample((extremes.to(device), 2, 4, True), note="prune int8 -128 has magnitude 128")
    # A storage offset of 4 bytes (made on the device: .to() would copy it aligned): the CUDA kernel's
    # unaligned path.
    offset = torch.randn(1 + 6 * 32, generator=g).to(device)[1:].view(6, 32)
    yield Sample((offset, 2, 4, True), note="prune input not 16-byte aligned")
    yield Sample((big.to(device)[:5, ::3], 2, 4, True), note="prune strided input")
    yield Sample((torch.zeros(4, 0, device=device), 2, 4, True), note="prune zero columns")
    yield Sample((torch.zeros(0, 8, device=device), 4, 8, True), note="prune zero rows")


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
    # prune=True accepts any values, but not bad shapes, dtypes or patterns.
    yield BadSample((full, 5, 4, True), ValueError, r"n must be in \[1, m\]")
    yield BadSample((full, 2, 65, True), ValueError, r"m must be in \[1, 64\]")
    yield BadSample((full[:, :6], 2, 4, True), ValueError, r"column count of dense \(6\) must be a multiple of m=4")
    yield BadSample((full.double(), 2, 4, True), TypeError, r"dense must have dtype")
    yield BadSample((full.int(), 2, 4, True), TypeError, r"dense must have dtype")
    yield BadSample((full[0], 2, 4, True), ValueError, r"dense must be 2-D")


def _nm_decompress_samples(device):
    for s in _nm_compress_samples(device):
        dense, n, m = s.args[:3]
        values, indices = ref.nm_compress(*s.args)
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
    kind = draw(st.sampled_from(["pattern", "random", "special", "ties"]))
    if kind == "pattern" and 1 <= n <= m and cols % m == 0:
        dense = random_nm_dense(rows, cols, n, m, torch.float32, device, seed=draw(st.integers(0, 999)), fill=0.7)
    elif kind == "ties":  # few distinct magnitudes: ties of both signs, -0.0 included
        dense = torch.randint(-2, 3, (rows, cols), device=device) * draw(st.sampled_from([1.0, -1.0]))
    else:
        dense = torch.randn(rows, cols, device=device) * (torch.rand(rows, cols, device=device) < 0.3)
        if kind == "special" and dense.numel():
            flat = dense.view(-1)
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -0.0]))
    dense = dense.to(dtype)
    if draw(st.booleans()) and dense.dim() == 2 and dense.shape[1] >= 2:
        dense = dense[:, ::2]  # a strided view
    return (dense, n, m, draw(st.booleans()))  # the last: prune


def _nm_decompress_fuzz(draw, device):
    from hypothesis import strategies as st

    dense, n, m, prune = _nm_compress_fuzz(draw, device)
    try:
        values, indices = ref.nm_compress(dense, n, m, prune)
    except (TypeError, ValueError):
        values = dense.to(torch.float32) if dense.dtype not in ref.PACK_DTYPES else dense
        indices = torch.zeros(dense.shape, dtype=torch.uint8, device=device)
    if indices.numel() and draw(st.booleans()):
        indices = indices.clone()
        flat = indices.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.integers(0, 255))
    return (values, indices, n, m)


# ---------------------------------------------------------------------------------------------- BSR

def random_bsr(out_features: int, in_features: int, R: int, C: int, density: float, dtype=torch.float32,
               device="cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical BSR arrays (crow, col, values) with about `density` of the R x C blocks stored.

    Stored blocks hold some zeros (and int8 ones the extremes -128/127), so packing must re-cut them.
    """
    g = torch.Generator().manual_seed(seed)
    block_rows, block_cols = -(-out_features // R), -(-in_features // C)
    kept = torch.rand(block_rows, block_cols, generator=g) < density
    crow = torch.zeros(block_rows + 1, dtype=torch.int32)
    crow[1:] = kept.sum(1).cumsum(0)
    col = kept.nonzero()[:, 1].to(torch.int32)
    shape = (len(col), R, C)
    if dtype == torch.int8:
        values = torch.randint(-128, 128, shape, generator=g).to(torch.int8)
    else:
        values = (torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.9)).to(dtype)
    return crow.to(device), col.to(device), values.to(device)


# (out, in, R, C, density, dtype, kernel): awkward sizes (N not a multiple of the block, K not a multiple of
# 4/16/64), blocks larger and smaller than the native ones, empty weights.
BSR_CASES = (
    (13, 37, 4, 1, 0.5, torch.int8, "auto"),
    (40, 70, 1, 1, 0.3, torch.int8, "4x1"),
    (9, 21, 3, 5, 0.6, torch.int8, "auto"),
    (37, 70, 16, 1, 0.5, torch.int8, "auto"),
    (50, 131, 32, 2, 0.3, torch.int8, "auto"),
    (21, 37, 2, 3, 0.5, torch.int8, "16x1"),
    (6, 10, 16, 1, 0.0, torch.int8, "auto"),
    (33, 100, 16, 1, 0.4, torch.float32, "auto"),
    (20, 45, 1, 16, 0.5, torch.float32, "auto"),
    (17, 19, 2, 3, 0.5, torch.float32, "16x1"),
    (17, 19, 2, 3, 0.5, torch.float32, "1x16"),
    (41, 75, 4, 1, 0.5, torch.float32, "auto"),  # float 4x1 tiles, span-16
    (30, 600, 1, 1, 0.05, torch.float32, "4x1"),  # float 4x1, plain tiles
    (18, 40, 6, 2, 0.5, torch.float32, "auto"),  # float 4x1 re-cut from 6-row blocks
    (43, 75, 4, 1, 0.5, torch.bfloat16, "auto"),  # bf16 4x1 tiles, span-16 (odd tile counts per row)
    (30, 600, 1, 1, 0.05, torch.bfloat16, "4x1"),  # bf16 4x1, plain tiles
    (18, 40, 6, 2, 0.5, torch.bfloat16, "auto"),  # bf16 4x1 re-cut from 6-row blocks
    (24, 66, 8, 8, 0.5, torch.bfloat16, "auto"),
    (5, 16, 1, 4, 0.5, torch.bfloat16, "1x16"),
    (6, 10, 4, 1, 0.0, torch.float32, "auto"),
)


# CUDA (float16/bfloat16, T x T tiles): blocks kept as they are or re-cut (auto: 16x16; "TxT" forced).
BSR_CUDA_CASES = (
    (13, 37, 4, 1, 0.5, torch.float16, "auto"),
    (20, 45, 1, 16, 0.5, torch.bfloat16, "auto"),
    (9, 21, 3, 5, 0.6, torch.float16, "auto"),
    (24, 66, 8, 8, 0.5, torch.bfloat16, "auto"),
    (40, 70, 16, 16, 0.5, torch.float16, "auto"),
    (70, 100, 32, 32, 0.5, torch.bfloat16, "32x32"),
    (70, 100, 32, 32, 0.5, torch.float16, "16x16"),
    (33, 100, 16, 1, 0.4, torch.bfloat16, "64x64"),
    (130, 200, 2, 3, 0.5, torch.float16, "128x128"),
    (6, 10, 4, 1, 0.0, torch.float16, "auto"),
)


def _bsr_pack_samples(device):
    if device.type == "cuda":
        yield from bsr_pack_cuda_samples(device)
        return
    for i, (N, K, R, C, density, dtype, kernel) in enumerate(BSR_CASES):
        crow, col, values = random_bsr(N, K, R, C, density, dtype, device, seed=i)
        yield Sample((crow, col, values, N, K, kernel), note=f"{dtype} {R}x{C} {N}x{K} -> {kernel}")
    crow, col, values = random_bsr(8, 8, 4, 4, 1.0, torch.float32, device)
    values[0].fill_(-0.0)
    yield Sample((crow, col, values, 8, 8, "auto"), note="-0.0 blocks are dropped")
    yield Sample((torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(0, dtype=torch.int32, device=device),
                  torch.zeros(0, 4, 1, dtype=torch.int8, device=device), 0, 12, "auto"), note="out_features=0")
    crow, col, values = random_bsr(12, 40, 4, 4, 0.5, torch.float32, device, seed=7)
    yield Sample((crow, col, values.transpose(1, 2).contiguous().transpose(1, 2), 12, 40, "auto"),
                 note="non-contiguous values")


def bsr_pack_cuda_samples(device):
    """bsr_pack's samples for CUDA (float16/bfloat16, CUDA tiles), with the tensors on `device`."""
    for i, (N, K, R, C, density, dtype, kernel) in enumerate(BSR_CUDA_CASES):
        crow, col, values = random_bsr(N, K, R, C, density, dtype, device, seed=i)
        yield Sample((crow, col, values, N, K, kernel), note=f"{dtype} {R}x{C} {N}x{K} -> {kernel}")
    crow, col, values = random_bsr(40, 40, 4, 4, 1.0, torch.float16, device)  # 10 x 10 blocks, all stored
    values[0:4].fill_(-0.0)  # the 16 blocks of the first 16x16 tile: -0.0 and 0.0, so that tile is dropped
    for r in range(1, 4):
        values[10 * r:10 * r + 4].zero_()
    yield Sample((crow, col, values, 40, 40, "auto"), note="an all-zero (-0.0 and 0.0) tile is dropped")
    crow, col, values = random_bsr(32, 32, 16, 16, 1.0, torch.bfloat16, device)
    values[1].fill_(-0.0)
    yield Sample((crow, col, values, 32, 32, "auto"), note="16x16 blocks are kept, -0.0 ones too")
    yield Sample((torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(0, dtype=torch.int32, device=device),
                  torch.zeros(0, 4, 1, dtype=torch.float16, device=device), 0, 12, "auto"), note="out_features=0")
    crow, col, values = random_bsr(12, 40, 4, 4, 0.5, torch.bfloat16, device, seed=7)
    yield Sample((crow, col, values.transpose(1, 2).contiguous().transpose(1, 2), 12, 40, "32x32"),
                 note="non-contiguous values")


def _bsr_pack_bad(device):
    cuda = device.type == "cuda"
    crow, col, values = random_bsr(8, 16, 4, 4, 0.5, torch.float16 if cuda else torch.float32, device)
    yield BadSample((crow.long(), col, values, 8, 16), TypeError, r"bsr_pack: crow must have dtype (Int|int32), got (Long|int64)")
    yield BadSample((crow, col, values.double(), 8, 16), TypeError, r"values must have dtype")
    yield BadSample((crow, col, values[:, 0], 8, 16), ValueError, r"values must be 3-D")
    yield BadSample((crow, col, values, 12, 16), ValueError, r"crow must have ceil\(out_features/R\) \+ 1 = 4")
    yield BadSample((crow, col[:-1], values, 8, 16), ValueError, r"col and values must describe the same blocks")
    yield BadSample((crow, col, values, 8, 70000), ValueError, r"in_features must be in \[0, 65536\]")
    if cuda:
        yield BadSample((crow, col, values.float(), 8, 16), TypeError,
                        r"Half or BFloat16 on CUDA .*float32 and int8 block weights run on the CPU")
        yield BadSample((crow, col, values.to(torch.int8), 8, 16), TypeError, r"int8 block weights run on the CPU")
        yield BadSample((crow, col, values, 8, 16, "4x1"), ValueError, r"kernel '4x1' is not a CUDA layout")
        yield BadSample((crow, col, values, 8, 16, "48x48"), ValueError, r"kernel '48x48' is not a CUDA layout")
    else:
        yield BadSample((crow, col, values, 8, 16, "2x2"), ValueError, r"kernel must be 'auto'")
        yield BadSample((crow, col, values.to(torch.int8), 8, 16, "1x16"), ValueError,
                        r"int8 weights use kernel '4x1' or '16x1'")
    full = random_bsr(8, 16, 4, 4, 1.0, torch.float16 if cuda else torch.float32, device)
    bad_col = full[1].clone()
    bad_col[5] = 4
    yield BadSample((full[0], bad_col, full[2], 8, 16), IndexError, r"col\[5\] = 4 \(block-row 1\) is out of range \[0, 4\)")
    swapped = full[1].clone()
    swapped[[1, 2]] = swapped[[2, 1]]
    yield BadSample((full[0], swapped, full[2], 8, 16), IndexError, r"strictly ascending .* block-row 0 has col\[1\] = 2 then col\[2\] = 1")
    down = full[0].clone()
    down[1] = 9
    yield BadSample((down, full[1], full[2], 8, 16), IndexError, r"crow must be non-decreasing, but crow\[2\] = 8 < crow\[1\] = 9")
    short = full[0].clone()
    short[-1] = 7
    yield BadSample((short, full[1], full[2], 8, 16), IndexError, r"crow\[-1\] must equal the number of blocks \(8\)")
    yield BadSample((full[0] + 1, full[1], full[2], 8, 16), IndexError, r"crow\[0\] must be 0, got 1")


def _bsr_fuzz_weight(draw, device):
    from hypothesis import strategies as st

    cuda = device.type == "cuda"
    dtypes = [torch.float16, torch.bfloat16] if cuda else [torch.float32, torch.bfloat16, torch.int8]
    dtype = draw(st.sampled_from(dtypes))
    N, K = draw(st.integers(0, 40)), draw(st.integers(0, 70))
    blocks = [(4, 1), (1, 16), (16, 1), (1, 1), (2, 3), (8, 8), (5, 2)] + ([(16, 16), (32, 32)] if cuda else [])
    R, C = draw(st.sampled_from(blocks))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    kernels = ["auto", "16x16", "32x32", "64x64"] if cuda else ["auto", "16x1", "1x16"]
    kernel = "auto" if dtype == torch.int8 else draw(st.sampled_from(kernels))
    crow, col, values = random_bsr(N, K, R, C, density, dtype, device, seed=draw(st.integers(0, 999)))
    return crow, col, values, N, K, kernel


def _bsr_pack_fuzz(draw, device):
    from hypothesis import strategies as st

    crow, col, values, N, K, kernel = _bsr_fuzz_weight(draw, device)
    corruption = draw(st.sampled_from(["none"] * 6 + ["col", "crow", "order", "kernel", "dtype", "rows"]))
    if corruption == "col" and len(col):
        col = col.clone()
        col[draw(st.integers(0, len(col) - 1))] = draw(st.sampled_from([-1, 1000, -(-K // values.shape[2])]))
    elif corruption == "crow" and len(crow) > 1:
        crow = crow.clone()
        crow[draw(st.integers(0, len(crow) - 1))] += draw(st.sampled_from([-1, 1, 3]))
    elif corruption == "order" and len(col) >= 2:
        col = col.flip(0).contiguous()
    elif corruption == "kernel":
        kernel = draw(st.sampled_from(["4x1", "16x1", "bad"]))
    elif corruption == "dtype":
        wrong = torch.float32 if device.type == "cuda" else torch.float16
        values = values.to(draw(st.sampled_from([torch.float64, wrong, torch.int32])))
    elif corruption == "rows":
        N += draw(st.sampled_from([-1, 1, 50]))
    return crow, col, values, N, K, kernel


def _bsr_linear_weight(crow, col, values, N, K, kernel, seed=0):
    packed = ref.bsr_pack(crow, col, values, N, K, kernel)
    g = torch.Generator().manual_seed(seed)
    scale = (torch.rand(N, generator=g) * 0.02 + 0.001).to(values.device) if values.dtype == torch.int8 else None
    return packed, scale


def _bsr_x(M, K, dtype, device, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":  # column-major rows
        return torch.randn(K, M, generator=g).to(dtype).to(device).t()
    if layout == "strided":  # every other column of a wider matrix
        return torch.randn(M, 2 * K, generator=g).to(dtype).to(device)[:, ::2]
    if layout == "3d":
        return torch.randn(2, M, K, generator=g).to(dtype).to(device)
    if layout == "row-padded":  # the first K columns of a wider matrix: unit column stride, row stride K + 5
        return torch.randn(M, K + 5, generator=g).to(dtype).to(device)[:, :K]
    return torch.randn(M, K, generator=g).to(dtype).to(device)


def _bsr_linear_samples(device):
    activations = ref.ACTIVATIONS
    for i, (N, K, R, C, density, dtype, kernel) in enumerate(BSR_CASES):
        crow, col, values = random_bsr(N, K, R, C, density, dtype, device, seed=i)
        packed, scale = _bsr_linear_weight(crow, col, values, N, K, kernel, seed=i)
        x_dtypes = (torch.float32, torch.bfloat16) if dtype == torch.int8 else (dtype,)
        for j, (M, layout) in enumerate(((1, "contiguous"), (3, "transposed"), (17, "strided"), (129, "contiguous"),
                                         (5, "3d"), (0, "contiguous"), (9, "row-padded"))):
            x_dtype = x_dtypes[j % len(x_dtypes)]
            x = _bsr_x(M, K, x_dtype, device, seed=i * 10 + j, layout=layout)
            bias = torch.randn(N, device=device).to(x_dtype if j % 2 else torch.float32) if j % 3 else None
            act = activations[(i + j) % len(activations)]
            out_dtype = (None, torch.float32, torch.bfloat16)[(i + j) % 3]
            yield Sample((x, *packed, N, K, bias, scale, act, out_dtype),
                         note=f"{dtype} {kernel} {R}x{C} N={N} K={K} M={M} {layout} x={x_dtype} {act} bias={bias is not None}")
        if dtype == torch.int8:  # the raw accumulator, compared exactly
            for M in (1, 16, 64, 65):
                x = _bsr_x(M, K, torch.float32, device, seed=i + M)
                yield Sample((x, *packed, N, K, None, None, "none", torch.int32), note=f"int8 accumulator M={M}")


def _bsr_linear_bad(device):
    crow, col, values = random_bsr(12, 40, 1, 16, 0.5, torch.float32, device)
    packed = ref.bsr_pack(crow, col, values, 12, 40)  # 1x16: 12 block-rows
    x = torch.randn(3, 40, device=device)
    ok = (x, *packed, 12, 40)
    yield BadSample((x.double(), *packed, 12, 40), TypeError, r"bsr_linear: x must have dtype (Float|float32), (BFloat16|bfloat16), got (Double|float64)")
    yield BadSample((x[:, :39], *packed, 12, 40), ValueError, r"x has 39 input features .* in_features=40")
    yield BadSample((x.bfloat16(), *packed, 12, 40), TypeError, r"x must have the weight's dtype Float")
    yield BadSample((*ok, torch.randn(11, device=device)), ValueError, r"bias must have shape \[12\]")
    yield BadSample((*ok, torch.randn(12, device=device).double()), TypeError, r"bias must have dtype")
    yield BadSample((*ok, None, torch.ones(12, device=device)), ValueError, r"weight_scale applies to int8 weights only")
    yield BadSample((*ok, None, None, "tanh"), ValueError, r"activation must be 'none', 'relu', 'gelu' or 'silu', got 'tanh'")
    yield BadSample((*ok, None, None, "none", torch.float16), TypeError, r"out_dtype must be float32 or bfloat16")
    yield BadSample((x, *packed, 16, 40), ValueError, r"packed for \[12, 40\] but out_features=16")
    meta = packed[0].clone()
    meta[0] = 99
    yield BadSample((x, meta, *packed[1:], 12, 40), ValueError, r"packed-format version 99")
    yield BadSample((x, packed[0], packed[1], packed[2].int(), *packed[3:], 12, 40), TypeError, r"indices must have dtype")
    yield BadSample((x, *packed[:3], packed[3][:-1], packed[4], 12, 40), ValueError, r"packed_values must have shape|values must have shape")
    rowptr = packed[1].clone()
    rowptr[1] = rowptr[2] + 1
    yield BadSample((x, packed[0], rowptr, *packed[2:], 12, 40), IndexError, r"rowptr is corrupted at block-row 1")
    indices = packed[2].clone()
    indices[3] = 40
    yield BadSample((x, packed[0], packed[1], indices, *packed[3:], 12, 40), IndexError, r"a packed index is 40, out of range for in_features=40")
    indices[3] = -1  # 65535 as an unsigned index
    yield BadSample((x[:0], packed[0], packed[1], indices, *packed[3:], 12, 40), IndexError, r"a packed index is 65535")
    q_packed, scale = _bsr_linear_weight(*random_bsr(12, 40, 4, 1, 0.5, torch.int8, device), 12, 40, "auto")
    yield BadSample((x, *q_packed, 12, 40), ValueError, r"int8 weights need weight_scale")
    yield BadSample((x, *q_packed, 12, 40, torch.zeros(12, device=device), None, "none", torch.int32), ValueError,
                    r"out_dtype=int32 returns the raw int32 accumulator; bias and activation must be unset")
    yield BadSample((x, *q_packed, 12, 40, None, scale.double()), TypeError, r"weight_scale must have dtype")
    yield BadSample((x.to("meta"), *q_packed, 12, 40, None, scale), ValueError, r"x and rowptr must be on the same device")
    if device.type == "cpu":  # a meta whose layout id does not match the packed tensors
        wide, _ = _bsr_linear_weight(*random_bsr(12, 40, 16, 1, 0.5, torch.int8, device), 12, 40, "auto")
        as_4x1 = wide[0].clone()
        as_4x1[1] = 1
        yield BadSample((x, as_4x1, *wide[1:], 12, 40, None, scale), ValueError,
                        r"rowptr must be 1-D with 4 entries for out_features=12 and 4x1 blocks")
        as_float = wide[0].clone()
        as_float[1] = 2
        yield BadSample((x, as_float, *wide[1:], 12, 40, None, scale), ValueError, r"meta pairs layout 16x1 with dtype")
        cuda_id = wide[0].clone()
        cuda_id[1] = 4
        yield BadSample((x, cuda_id, *wide[1:], 12, 40, None, scale), ValueError, r"layout id 4, the CUDA layout")


def _bsr_linear_fuzz(draw, device):
    from hypothesis import strategies as st

    crow, col, values, N, K, kernel = _bsr_fuzz_weight(draw, device)
    packed, scale = _bsr_linear_weight(crow, col, values, N, K, kernel, seed=draw(st.integers(0, 99)))
    is_int8 = values.dtype == torch.int8
    x_dtype = draw(st.sampled_from([torch.float32, torch.bfloat16])) if is_int8 else values.dtype
    M = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 33, 64, 70]))
    x = _bsr_x(M, K, x_dtype, device, seed=draw(st.integers(0, 999)),
               layout=draw(st.sampled_from(["contiguous", "transposed", "strided", "3d"])))
    bias = torch.randn(N, device=device) if draw(st.booleans()) else None
    act = draw(st.sampled_from(ref.ACTIVATIONS))
    out_dtype = draw(st.sampled_from([None, torch.float32, torch.bfloat16] + ([torch.int32] if is_int8 else [])))
    if out_dtype == torch.int32:
        bias, act = None, "none"
    meta, rowptr, indices, pvalues, comp = packed
    corruption = draw(st.sampled_from(["none"] * 8 + ["x_dtype", "k", "act", "out_dtype", "bias", "scale",
                                                      "index", "rowptr", "features"]))
    if corruption == "x_dtype":
        x = x.to(draw(st.sampled_from([torch.float64, torch.float16])))
    elif corruption == "k":
        x = torch.randn(max(M, 1), K + 1, device=device).to(x.dtype)
    elif corruption == "act":
        act = "tanh"
    elif corruption == "out_dtype":
        out_dtype = torch.int64
    elif corruption == "bias":
        bias = torch.randn(N + 1, device=device)
    elif corruption == "scale":
        scale = None if is_int8 else torch.ones(N, device=device)
    elif corruption == "index" and indices.numel():
        indices = indices.clone()
        indices[draw(st.integers(0, indices.numel() - 1))] = draw(st.sampled_from([K, K + 5, -1]))
    elif corruption == "rowptr" and rowptr.numel() > 1:
        rowptr = rowptr.clone()
        rowptr[draw(st.integers(1, rowptr.numel() - 1))] += draw(st.sampled_from([-4, 1, 4]))
    elif corruption == "features":
        N += 1
    return (x, meta, rowptr, indices, pvalues, comp, N, K, bias, scale, act, out_dtype)


def assert_bsr_linear_close(actual, expected, args) -> None:
    """int32 accumulators: exact. Float outputs: FlashAttention's rule against the float64 reference,
    max|ours - ref64| <= 2 max|lowp - ref64| + atol, where lowp is the reference's own result (torch's
    low-precision linear for float weights, the fp32 dequantization of the exact accumulator for int8)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.device == expected.device
    if actual.dtype == torch.int32:
        assert torch.equal(actual, expected), f"accumulators differ at {(actual != expected).nonzero()[:5].tolist()}"
        return
    if actual.numel() == 0:
        return
    ref64 = ref.bsr_linear(*args, compute_dtype=torch.float64)
    err = (actual.double() - ref64).abs().max().item()
    lowp_err = (expected.double() - ref64).abs().max().item()
    atol = (1e-6 if actual.dtype == torch.float32 else 2e-3) * (ref64.abs().max().item() + 1e-3)
    assert err <= 2 * lowp_err + atol, f"max error {err:.3g} > 2 x {lowp_err:.3g} + {atol:.3g}"
# ---------------------------------------------------------------------------------------------- N:M linear

LINEAR_PATTERNS = ((2, 4), (1, 4), (4, 8), (2, 8), (1, 8), (3, 7))  # the last runs the portable kernel only


def random_nm_weight(rows: int, cols: int, n: int, m: int, dtype, seed: int = 0, fill: float = 0.9):
    """A random N:M weight as nm_linear takes it: (packed_values, packed_meta, weight_scale or None).

    int8 weights are a symmetric per-row quantization of a float one (weight_scale = amax / 127)."""
    dense = random_nm_dense(rows, cols, n, m, torch.float32, seed=seed, fill=fill)
    scale = None
    if dtype == torch.int8:
        amax = dense.abs().amax(1) if cols else torch.zeros(rows)
        scale = (amax / 127).clamp_min(1e-6)
        dense = (dense / scale[:, None]).round().clamp(-127, 127)
    values, indices = ref.nm_compress(dense.to(dtype), n, m)
    packed_values, packed_meta = ref.nm_pack(values, indices, n, m)
    return packed_values, packed_meta, scale


def nm_linear_args(tokens_shape, out_features: int, in_features: int, n: int, m: int, weight_dtype,
                   x_dtype=None, bias: bool = False, activation: str = "none", out_dtype=None, seed: int = 0,
                   x_layout: str = "contiguous", device="cpu") -> tuple:
    """Positional nm_linear arguments for a random problem. x_layout: contiguous, strided (every other column
    of a wider tensor) or transposed (leading dims and the feature dim swapped in memory)."""
    g = torch.Generator().manual_seed(seed)
    pv, pm, scale = random_nm_weight(out_features, in_features, n, m, weight_dtype, seed=seed)
    x_dtype = x_dtype or (torch.float32 if weight_dtype == torch.int8 else weight_dtype)
    shape = (*tokens_shape, in_features)
    if x_layout == "strided":
        x = torch.randn(*tokens_shape, 2 * in_features, generator=g).to(x_dtype)[..., ::2]
    elif x_layout == "transposed":
        x = torch.randn(in_features, *tokens_shape, generator=g).to(x_dtype).movedim(0, -1)
    else:
        x = torch.randn(*shape, generator=g).to(x_dtype)
    b = (torch.randn(out_features, generator=g) * 3).to(x_dtype) if bias else None
    dev = torch.device(device)
    to = lambda t: None if t is None else t.to(dev)  # noqa: E731
    return (to(x), to(pv), to(pm), n, m, out_features, in_features, to(b), to(scale), activation, out_dtype)


def _nm_pack_samples(device):
    for dtype in ref.LINEAR_WEIGHT_DTYPES:
        for (n, m), (rows, groups) in zip(LINEAR_PATTERNS, ((5, 3), (1, 17), (3, 8), (0, 4), (2, 9), (4, 10))):
            dense = random_nm_dense(rows, groups * m, n, m, torch.float32, device, seed=rows * 7 + m, fill=0.8)
            if dtype == torch.int8:
                dense = dense.round()
            values, indices = ref.nm_compress(dense.to(dtype), n, m)
            yield Sample((values, indices, n, m), note=f"{dtype} {n}:{m} {rows}x{groups * m}")
    values, indices = ref.nm_compress(random_nm_dense(3, 4 * 40, 2, 4, device=device), 2, 4)
    yield Sample((values.t().contiguous().t(), indices, 2, 4), note="column-major values")
    yield Sample((torch.zeros(3, 0, device=device), torch.zeros(3, 0, dtype=torch.uint8, device=device), 2, 4),
                 note="zero columns")


def _nm_pack_bad(device):
    values, indices = ref.nm_compress(random_nm_dense(4, 16, 2, 4, device=device), 2, 4)
    bad = indices.clone()
    bad[2, 5] = 9
    yield BadSample((values, bad, 2, 4), IndexError, r"nm_pack: indices of row 2, group 2 are \[.*9\].*\[0, 4\)")
    same = indices.clone()
    same[1, 0:2] = 3
    yield BadSample((values, same, 2, 4), IndexError, r"row 1, group 0 are \[3, 3\]")
    yield BadSample((values.double(), indices, 2, 4), TypeError, r"(?i)nm_pack: values must have dtype float(32)?, bfloat16, (half|float16), (char|int8)")
    yield BadSample((values, indices.int(), 2, 4), TypeError, r"indices must have dtype")
    yield BadSample((values, indices[:, :4], 2, 4), ValueError, r"same shape")
    yield BadSample((values[:, :3], indices[:, :3], 2, 4), ValueError, r"multiple of n=2")
    yield BadSample((values, indices, 5, 4), ValueError, r"n must be in \[1, m\]")
    yield BadSample((values.reshape(-1), indices.reshape(-1), 2, 4), ValueError, r"values must be 2-D")


def _nm_pack_fuzz(draw, device):
    from hypothesis import strategies as st

    values, indices, n, m = _nm_decompress_fuzz(draw, device)
    if draw(st.booleans()) and values.dtype == torch.float8_e4m3fn:
        values = values.to(torch.float32)
    if draw(st.booleans()) and values.is_floating_point() and values.dtype != torch.float8_e4m3fn:
        values = values.round().clamp(-127, 127).to(torch.int8)
    return (values, indices, n, m)


def _nm_linear_samples(device):
    i = 0

    def sample(note, *args, **kwargs):
        nonlocal i
        i += 1
        return Sample(nm_linear_args(*args, seed=i, device=device, **kwargs), note=note)

    for dtype in ref.LINEAR_WEIGHT_DTYPES:
        for (n, m) in LINEAR_PATTERNS:
            yield sample(f"{dtype} {n}:{m}", (3,), 19, 7 * m * 3, n, m, dtype, bias=True)
        for tokens in ((0,), (1,), (3,), (129,), (2, 3)):
            yield sample(f"{dtype} tokens {tokens}", tokens, 21, 76, 2, 4, dtype)
        for act in ref.ACTIVATIONS:
            yield sample(f"{dtype} {act}", (5,), 40, 96, 2, 4, dtype, bias=act != "none", activation=act)
        yield sample(f"{dtype} strided x", (4,), 13, 68, 2, 4, dtype, x_layout="strided")
        yield sample(f"{dtype} transposed x", (2, 5), 13, 64, 4, 8, dtype, x_layout="transposed", bias=True)
        yield sample(f"{dtype} out float32", (9,), 17, 136, 1, 4, dtype, out_dtype=torch.float32)
        yield sample(f"{dtype} out bfloat16", (2,), 17, 200, 2, 4, dtype, out_dtype=torch.bfloat16, bias=True)
        yield sample(f"{dtype} out float16", (3,), 19, 72, 4, 8, dtype, out_dtype=torch.float16, bias=True)
        yield sample(f"{dtype} out_features 0", (2,), 0, 16, 2, 4, dtype)
        yield sample(f"{dtype} in_features 0", (2,), 5, 0, 2, 4, dtype, bias=True, activation="gelu")
        yield sample(f"{dtype} 8 tokens, wide", (8,), 150, 640, 2, 4, dtype, bias=True, activation="silu")
    yield sample("int8, bf16 x, fp32 bias", (7,), 33, 264, 4, 8, torch.int8, x_dtype=torch.bfloat16, bias=True)
    yield sample("int8, fp16 x", (5,), 20, 128, 2, 4, torch.int8, x_dtype=torch.float16, bias=True)
    args = list(nm_linear_args((3,), 11, 32, 2, 4, torch.bfloat16, bias=True, seed=99, device=device))
    args[7] = args[7].float()
    yield Sample(tuple(args), note="bf16 with an fp32 bias")


def _nm_linear_bad(device):
    args = nm_linear_args((3,), 8, 32, 2, 4, torch.float32, bias=True, device=device)
    x, pv, pm, n, m, N, K, b, ws, act, od = args
    q = nm_linear_args((3,), 8, 32, 2, 4, torch.int8, device=device)

    def bad(error, match, **changes):
        names = ("x", "pv", "pm", "n", "m", "N", "K", "b", "ws", "act", "od")
        base = dict(zip(names, q if changes.pop("int8", False) else args))
        base.update(changes)
        return BadSample(tuple(base[k] for k in names), error, match)

    yield bad(TypeError, r"(?i)nm_linear: x must have dtype float(32)?, bfloat16, (half|float16), got (double|float64)",
              x=x.double())
    yield bad(TypeError, r"(?i)x \((torch\.)?bfloat16\) must have the dtype of packed_values \((torch\.)?float(32)?\)", x=x.bfloat16())
    yield bad(TypeError, r"packed_values must have dtype", pv=pv.double())
    yield bad(TypeError, r"packed_meta must have dtype", pm=pm.to(torch.int8))
    yield bad(ValueError, r"x must be \[\.\.\., in_features=32\], got shape \[3, 31\]", x=x[:, :31])
    yield bad(ValueError, r"packed_values must have shape \[8, 16\]", pv=pv[:7])
    yield bad(ValueError, r"packed_meta must have shape \[8, 8\]", pm=pm[:, :4])
    yield bad(ValueError, r"in_features \(30\) must be a multiple of m=4", K=30)
    yield bad(ValueError, r"n must be in \[1, m\]", n=5)
    yield bad(ValueError, r"must be contiguous", pv=pv.t().contiguous().t())
    yield bad(ValueError, r"bias must be \[out_features=8\], got shape \[7\]", b=b[:7])
    yield bad(TypeError, r"bias must have dtype", b=b.double())
    yield bad(ValueError, r"activation must be one of none, relu, gelu, silu, got 'tanh'", act="tanh")
    yield bad(TypeError, r"(?i)out_dtype must be float32, bfloat16 or float16, got (torch.)?(double|float64)",
              od=torch.float64)
    yield bad(ValueError, r"weight_scale is only for int8", ws=torch.ones(8, device=device))
    yield bad(ValueError, r"int8 packed_values need weight_scale", int8=True, ws=None)
    yield bad(ValueError, r"weight_scale must be \[out_features=8\]", int8=True, ws=torch.ones(9, device=device))
    yield bad(TypeError, r"(?i)weight_scale must have dtype float", int8=True, ws=torch.ones(8, dtype=torch.float64,
                                                                                            device=device))
    yield bad(ValueError, r"int8 weights support in_features <= 131072", int8=True, K=131076,
              x=torch.zeros(1, 131076, device=device))


def _nm_linear_fuzz(draw, device):
    from hypothesis import strategies as st

    n, m = draw(st.sampled_from(LINEAR_PATTERNS))
    dtype = draw(st.sampled_from(ref.LINEAR_WEIGHT_DTYPES))
    tokens = tuple(draw(st.lists(st.integers(0, 10), min_size=1, max_size=2)))
    out_features = draw(st.integers(0, 40))
    in_features = m * draw(st.integers(0, 40))
    args = list(nm_linear_args(
        tokens, out_features, in_features, n, m, dtype,
        x_dtype=draw(st.sampled_from(ref.LINEAR_FLOAT_DTYPES)) if dtype == torch.int8 else None,
        bias=draw(st.booleans()), activation=draw(st.sampled_from(ref.ACTIVATIONS)),
        out_dtype=draw(st.sampled_from([None, torch.float32, torch.bfloat16, torch.float16])),
        seed=draw(st.integers(0, 999)),
        x_layout=draw(st.sampled_from(["contiguous", "strided", "transposed"])), device=device))
    # At most one corruption, so that the reference and the op agree on which error comes first.
    corruption = draw(st.sampled_from([None] * 6 + ["x_dtype", "x_width", "features", "n", "bias", "scale",
                                                    "activation", "out_dtype"]))
    if corruption == "x_dtype":
        args[0] = args[0].to(draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16, torch.float32,
                                                   torch.int32])))
    elif corruption == "x_width":
        width = in_features + draw(st.sampled_from([-1, 1, m]))
        args[0] = torch.zeros(*tokens, abs(width), device=device)
    elif corruption == "features":
        args[5 + draw(st.integers(0, 1))] += draw(st.sampled_from([-1, 1, m]))
    elif corruption == "n":
        args[3] = draw(st.integers(0, m + 1))
    elif corruption == "bias":
        args[7] = torch.zeros(out_features + draw(st.integers(0, 1)), device=device,
                              dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])))
    elif corruption == "scale":
        args[8] = None if args[8] is not None else torch.ones(out_features, device=device)
    elif corruption == "activation":
        args[9] = draw(st.sampled_from(["tanh", "", "RELU"]))
    elif corruption == "out_dtype":
        args[10] = draw(st.sampled_from([torch.float64, torch.int32, torch.int8]))
    return tuple(args)


def nm_linear_tolerance_check(actual: torch.Tensor, args: tuple) -> None:
    """nm_linear against the float64 oracle.

    float weights (FlashAttention's rule): max error <= 2x the max error of the same computation done by torch
    in the weight's dtype (F.linear + activation, then out_dtype), plus a 1e-6 floor relative to the output's
    magnitude (the fp32 erf/exp of gelu/silu). int8 weights: the oracle starts from the exact int32
    accumulator, so only the dequantization and activation round: 2e-6 relative (fp32 out) or 1 ulp (bf16 out).
    """
    x, pv, pm, n, m, out_features, in_features, bias, ws, activation, out_dtype = args
    exact = ref.nm_linear_float64(*args)
    out_dtype = out_dtype or x.dtype
    assert actual.dtype == out_dtype, f"dtype {actual.dtype} != {out_dtype}"
    assert actual.shape == exact.shape, f"shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    if exact.numel() == 0:
        return
    error = (actual.double() - exact).abs()
    floor = 1e-6 * max(1.0, exact.abs().max().item())
    if pv.dtype == torch.int8:
        rtol = 2e-6 if out_dtype == torch.float32 else 2.0**-8
        bad = error > rtol * exact.abs() + floor
        assert not bad.any(), f"int8 path off at {bad.nonzero()[:5].tolist()}: max error {error.max().item():.3g}"
        return
    w = ref.nm_unpack(pv, pm, in_features, n, m)
    low = torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))
    low = ref._activate(low, activation).to(out_dtype)
    torch_error = (low.double() - exact).abs().max().item()
    assert error.max().item() <= 2 * torch_error + floor, (
        f"max error {error.max().item():.3g} > 2 x torch {x.dtype} error {torch_error:.3g} + {floor:.3g}")


def _nm_linear_compare(actual, expected, args):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    nm_linear_tolerance_check(actual, args)


OP_DB: dict[str, OpEntry] = {
    e.name: e
    for e in [
        OpEntry("nm_compress", ref.nm_compress, _nm_compress_samples, _nm_compress_bad, _nm_compress_fuzz,
                bench_suite="nm-pack", compare=assert_bitwise_equal),
        OpEntry("nm_decompress", ref.nm_decompress, _nm_decompress_samples, _nm_decompress_bad,
                _nm_decompress_fuzz, bench_suite="nm-pack", compare=assert_bitwise_equal),
        OpEntry("bsr_pack", ref.bsr_pack_on_device, _bsr_pack_samples, _bsr_pack_bad, _bsr_pack_fuzz,
                bench_suite="cpu-linear", compare=assert_bitwise_equal),
        OpEntry("bsr_linear", ref.bsr_linear, _bsr_linear_samples, _bsr_linear_bad, _bsr_linear_fuzz,
                bench_suite="cpu-linear", compare=assert_bsr_linear_close, sample_devices=("cpu",)),
        OpEntry("nm_pack", ref.nm_pack, _nm_pack_samples, _nm_pack_bad, _nm_pack_fuzz, bench_suite="cpu-linear",
                compare=assert_bitwise_equal, sample_devices=("cpu",)),
        OpEntry("nm_linear", ref.nm_linear, _nm_linear_samples, _nm_linear_bad, _nm_linear_fuzz,
                bench_suite="cpu-linear", compare=_nm_linear_compare, sample_devices=("cpu",)),
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
