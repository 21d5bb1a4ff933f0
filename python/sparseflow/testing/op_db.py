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


# ---------------------------------------------------------------------------------------------- N:M linear

LINEAR_PATTERNS = ((2, 4), (1, 4), (4, 8), (2, 8), (1, 8), (3, 7))  # the last runs the portable kernel only
LINEAR_CUDA_PENDING = "GPU kernels: issue 6"


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
    w = ref.nm_unpack(pv, pm, in_features)
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
        OpEntry("nm_pack", ref.nm_pack, _nm_pack_samples, _nm_pack_bad, _nm_pack_fuzz, bench_suite="cpu-linear",
                compare=assert_bitwise_equal, cuda_pending=LINEAR_CUDA_PENDING),
        OpEntry("nm_linear", ref.nm_linear, _nm_linear_samples, _nm_linear_bad, _nm_linear_fuzz,
                bench_suite="cpu-linear", compare=_nm_linear_compare, cuda_pending=LINEAR_CUDA_PENDING),
    ]
}
