"""nm_pack / nm_linear on CPU: every ISA level this CPU has (the portable one always), exact int8 accumulators,
FlashAttention-rule tolerances for fp32/bf16, awkward shapes, strided x, thread counts, state_dict."""

import io
import os
import subprocess
import sys

import pytest
import torch

import sparseflow
from sparseflow import _C, ops
from sparseflow.testing import reference as ref
from sparseflow.testing.op_db import (LINEAR_PATTERNS, nm_linear_args, nm_linear_tolerance_check,
                                      random_nm_dense)

_LEVELS = ["portable", "avx512", "avx512_vnni", "avx512_bf16", "amx"]
# The ISA levels this CPU can run (AVX512_BF16 adds the bf16 2:4 vdpbf16ps kernel; AMX runs the same kernels).
ISAS = _LEVELS[: _LEVELS.index(_C.detected_cpu_isa()) + 1]
WEIGHT_DTYPES = ref.LINEAR_WEIGHT_DTYPES


@pytest.fixture(params=ISAS)
def isa(request):
    assert _C.set_cpu_isa(request.param) == request.param
    yield request.param
    _C.set_cpu_isa(_C.detected_cpu_isa())


def test_fast_paths_are_tested_here():
    # This CPU has AVX512-VNNI: the AVX-512 kernels must be among the ISA levels above, not only the fallback.
    if _C.cpu_features()["avx512_vnni"]:
        assert "avx512_vnni" in ISAS


def _int8_exact_problem(tokens, out_features, in_features, n, m, seed=0):
    """x integer-valued with amax 127 in every token and weight_scale 1: scales are exactly 1, so the fp32
    output *is* the int32 accumulator (|acc| < 2^24 here)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (*tokens, in_features), generator=g).float()
    if in_features:
        x[..., 0] = 127.0
    dense = random_nm_dense(out_features, in_features, n, m, seed=seed, fill=0.9)
    w = (dense * 9).round().clamp(-128, 127).to(torch.int8)
    w[:, :m][w[:, :m] == -128] = -128  # keep the extreme value reachable
    values, indices = ops.nm_compress(w, n, m)
    pv, pm = ops.nm_pack(values, indices, n, m)
    return x, pv, pm, torch.ones(out_features)


@pytest.mark.parametrize("n,m", LINEAR_PATTERNS)
@pytest.mark.parametrize("tokens", [(0,), (1,), (3,), (129,), (2, 5)])
def test_int8_accumulator_is_exact(isa, n, m, tokens):
    in_features = m * 37  # not a multiple of 16 or 64
    x, pv, pm, ws = _int8_exact_problem(tokens, 45, in_features, n, m, seed=len(tokens) * 100 + tokens[0])
    acc, x_scale = ref.nm_linear_int8_accumulator(x, pv, pm, n, m, 45, in_features)
    assert torch.all(x_scale == 1.0)
    y = ops.nm_linear(x, pv, pm, n, m, 45, in_features, weight_scale=ws)
    assert y.dtype == torch.float32 and y.shape == (*tokens, 45)
    assert torch.equal(y, acc.float()), f"max diff {(y - acc.float()).abs().max() if y.numel() else 0}"


@pytest.mark.parametrize("n,m,in_features", [(2, 4, k) for k in (4, 8, 12, 16, 24, 28, 36, 64, 100, 132)]
                         + [(4, 8, k) for k in (8, 16, 24, 32, 40, 136)])
def test_int8_lane_layout_edges_are_exact(isa, n, m, in_features):
    """The lane layout's edges: 1-3 full 8-column units in the last meta word, with or without the half unit
    of in_features % 8 == 4; blocks of 16 rows with a short last one (1, 15, 17, 40 rows); 1-9 tokens."""
    for out_features in (1, 15, 16, 17, 40):
        for tokens in (1, 5, 9):
            x, pv, pm, ws = _int8_exact_problem((tokens,), out_features, in_features, n, m,
                                                seed=in_features * 7 + out_features + tokens)
            acc, _ = ref.nm_linear_int8_accumulator(x, pv, pm, n, m, out_features, in_features)
            y = ops.nm_linear(x, pv, pm, n, m, out_features, in_features, weight_scale=ws)
            assert torch.equal(y, acc.float()), (out_features, tokens)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("in_features", [4, 8, 28, 32, 36, 60, 64, 68, 100, 132, 1028])
def test_float_lane_layout_edges_are_exact(isa, dtype, in_features):
    """bf16 / fp32 2:4's lane layout (csrc/nm/nm_lanes.h): 1-257 groups (a partial last meta unit, an odd count of
    32-column units), blocks of 16 rows with a short last one, 1-130 tokens (passes of 8 and a partial last one,
    past the token count where the row-major layout changes kernels). Integer values keep every fp32 sum exact
    whatever the order."""
    for out_features in (1, 15, 16, 17, 40):
        for tokens in (1, 5, 9, 33, 130):
            if tokens == 130 and in_features < 1000 or in_features == 1028 and out_features < 40:
                continue
            g = torch.Generator().manual_seed(in_features * 7 + out_features + tokens)
            dense = (random_nm_dense(out_features, in_features, 2, 4, seed=tokens) * 8).round().to(dtype)
            values, indices = ops.nm_compress(dense, 2, 4)
            pv, pm = ops.nm_pack(values, indices, 2, 4)
            assert torch.equal(ref.nm_unpack(pv, pm, in_features, 2, 4), dense)
            x = torch.randint(-8, 9, (tokens, in_features), generator=g).to(dtype)
            y = ops.nm_linear(x, pv, pm, 2, 4, out_features, in_features, out_dtype=torch.float32)
            assert torch.equal(y, (x.double() @ dense.double().T).float()), (out_features, tokens)


def test_int8_extreme_values_do_not_overflow(isa):
    # Every product at its extreme (-127 * -128 with the u8 + 128 trick inside): still exact.
    k = 4096
    x = torch.full((2, k), -127.0)
    x[1, ::2] = 127.0
    w = torch.zeros(3, k, dtype=torch.int8)
    w[:, 0::4] = -128
    w[:, 1::4] = 127
    values, indices = ops.nm_compress(w, 2, 4)
    pv, pm = ops.nm_pack(values, indices, 2, 4)
    y = ops.nm_linear(x, pv, pm, 2, 4, 3, k, weight_scale=torch.ones(3))
    expected = x.double() @ w.double().T
    assert torch.equal(y.double(), expected)


def test_int8_quantization_reads_back(isa):
    # W = a selection matrix (one 1 per row, 1:4): y[j] = q[k_j], so the output shows the quantized x.
    # amax = 127 makes x * (127 / amax) exact: ties round half to even, the clamp keeps [-127, 127].
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.49, -126.5, 126.5, 0.0, -127.0, 64.5]])
    k = x.shape[1]
    w = torch.zeros(k, k, dtype=torch.int8)
    w[torch.arange(k), torch.arange(k)] = 1
    values, indices = ops.nm_compress(w, 1, 4)
    pv, pm = ops.nm_pack(values, indices, 1, 4)
    y = ops.nm_linear(x, pv, pm, 1, 4, k, k, weight_scale=torch.ones(k))
    expected = [127, 0, 2, 2, 0, -2, 3, -126, 126, 0, -127, 64]
    assert y[0].tolist() == expected
    q, scale = ref.quantize_per_token_s8(x)
    assert q[0].tolist() == expected and scale.item() == 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_conversions_match_torch(isa, dtype):
    # Widening: every finite 16-bit pattern as a weight times 1.0 (1:4, one kept value per row) -> fp32 exactly.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    finite = bits[torch.isfinite(bits.float())]
    w = torch.zeros(finite.numel(), 4, dtype=dtype)
    w[:, 0] = finite
    values, indices = ops.nm_compress(w, 1, 4)
    pv, pm = ops.nm_pack(values, indices, 1, 4)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    y = ops.nm_linear(x, pv, pm, 1, 4, finite.numel(), 4, out_dtype=torch.float32)
    assert torch.equal(y[0], finite.float())
    # Narrowing: fp32 biases through a zero product, rounded to 16 bits as torch rounds them (ties to even,
    # subnormals, overflow to inf).
    g = torch.Generator().manual_seed(0)
    bias = torch.cat([torch.randn(3000, generator=g) * 10.0 ** torch.randint(-9, 6, (3000,), generator=g),
                      torch.tensor([65504.0, 65519.0, 65520.0, -70000.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 1e-30,
                                    1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.4e38])])
    n_out = bias.numel()
    zero_w = torch.zeros(n_out, 4, dtype=dtype)
    zero_w[:, 0] = 1
    values, indices = ops.nm_compress(zero_w, 1, 4)
    pv, pm = ops.nm_pack(values, indices, 1, 4)
    y = ops.nm_linear(torch.zeros(1, 4, dtype=dtype), pv, pm, 1, 4, n_out, 4, bias=bias)
    assert y.dtype == dtype
    assert torch.equal(y[0].view(torch.int16), bias.to(dtype).view(torch.int16))


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("n,m", LINEAR_PATTERNS)
@pytest.mark.parametrize("tokens", [(1,), (3,), (8,), (9,), (129,)])
def test_matches_reference(isa, dtype, n, m, tokens):
    in_features = m * 29 if m != 7 else 7 * 12
    args = nm_linear_args(tokens, 70, in_features, n, m, dtype, bias=True, seed=tokens[0] * 10 + m)
    nm_linear_tolerance_check(torch.ops.sparseflow.nm_linear(*args), args)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("activation", ref.ACTIVATIONS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [5, 40])  # 40: the many-token kernel of float weights
def test_epilogue(isa, dtype, activation, bias, out_dtype, tokens):
    args = nm_linear_args((tokens,), 37, 196, 2, 4, dtype, bias=bias, activation=activation, out_dtype=out_dtype,
                          seed=ref.ACTIVATIONS.index(activation) * 2 + bias)
    nm_linear_tolerance_check(torch.ops.sparseflow.nm_linear(*args), args)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
def test_activation_tails(isa, dtype):
    # Pre-activations over a wide range (large |x| for exp/erf saturation, values near 0) in one output.
    k = 64
    w = torch.zeros(48, k)
    w[:, 0] = torch.linspace(-30, 30, 48)
    values, indices = ops.nm_compress(w.to(dtype) if dtype != torch.int8 else (w * 4).round().to(torch.int8), 2, 4)
    pv, pm = ops.nm_pack(values, indices, 2, 4)
    x = torch.zeros(2, k)
    x[:, 0] = torch.tensor([1.0, 0.125])
    ws = torch.full((48,), 0.25) if dtype == torch.int8 else None
    xd = x if dtype == torch.int8 else x.to(dtype)
    for activation in ref.ACTIVATIONS:
        args = (xd, pv, pm, 2, 4, 48, k, None, ws, activation, None)
        nm_linear_tolerance_check(torch.ops.sparseflow.nm_linear(*args), args)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("layout", ["strided", "transposed", "expanded"])
def test_non_contiguous_x(isa, dtype, layout):
    if layout == "expanded":  # stride 0 over tokens
        args = list(nm_linear_args((1,), 30, 136, 2, 4, dtype, bias=True))
        args[0] = args[0].expand(6, 136)
    else:
        args = list(nm_linear_args((3, 4), 30, 136, 2, 4, dtype, bias=True, x_layout=layout))
    assert not args[0].is_contiguous()
    y = torch.ops.sparseflow.nm_linear(*args)
    nm_linear_tolerance_check(y, tuple(args))
    contiguous = list(args)
    contiguous[0] = args[0].contiguous()
    assert torch.equal(y, torch.ops.sparseflow.nm_linear(*contiguous))


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
def test_odd_strides_of_contiguous_or_small_arguments(isa, dtype):
    # x is contiguous but its size-1 dimension has an odd stride (the kernel must step rows by in_features,
    # not by that stride); bias and weight_scale are every other element of a longer tensor.
    args = list(nm_linear_args((3, 1), 30, 136, 2, 4, dtype, bias=True))
    x = args[0]
    odd = torch.empty(3 * 136 + 5, dtype=x.dtype).as_strided((3, 1, 136), (136, 5, 1))
    odd.copy_(x)
    assert odd.is_contiguous() and odd.stride(1) == 5
    spread = lambda t: torch.stack([t, torch.full_like(t, 99)], 1).view(-1)[::2]  # noqa: E731
    strided = [odd] + args[1:7] + [spread(args[7]), None if args[8] is None else spread(args[8])] + args[9:]
    assert not strided[7].is_contiguous()
    assert torch.equal(torch.ops.sparseflow.nm_linear(*strided), torch.ops.sparseflow.nm_linear(*args))


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("tokens", [2, 40])
def test_large_k(isa, dtype, tokens):
    # K past several 64-column chunks, spans and column blocks; rows not a multiple of any tile size. Long
    # sums are where the summation order shows against torch's blocked GEMM.
    args = nm_linear_args((tokens,), 203, 11008 + 68, 2, 4, dtype, bias=True, activation="silu", seed=5)
    nm_linear_tolerance_check(torch.ops.sparseflow.nm_linear(*args), args)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (3, 7)])
def test_isa_levels_agree(dtype, n, m):
    args = nm_linear_args((9,), 50, m * 40, n, m, dtype, bias=True, activation="relu", seed=3)
    results = {}
    try:
        for level in ISAS:
            _C.set_cpu_isa(level)
            results[level] = torch.ops.sparseflow.nm_linear(*args)
    finally:
        _C.set_cpu_isa(_C.detected_cpu_isa())
    for level, y in results.items():
        if dtype == torch.int8:  # exact accumulators, same fma dequantization: bit for bit
            assert torch.equal(y, results["portable"]), level
        else:
            nm_linear_tolerance_check(y, args)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("tokens", [1, 33])
def test_thread_counts_give_identical_results(isa, dtype, tokens):
    # Threads split the output features; every feature's sum is computed the same way whatever the split.
    args = nm_linear_args((tokens,), 301, 520, 2, 4, dtype, bias=True, activation="gelu", seed=7)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(torch.ops.sparseflow.nm_linear(*args))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("dtype,expected", [(torch.float32, 2.125), (torch.bfloat16, 1.125), (torch.float16, 1.125),
                                            (torch.int8, 0.625)])
def test_packed_bytes_shrink_with_sparsity(dtype, expected):
    pv, pm, _ = __import__("sparseflow.testing.op_db", fromlist=["x"]).random_nm_weight(64, 1024, 2, 4, dtype)
    stored = pv.numel() * pv.element_size() + pm.numel() * pm.element_size()
    assert stored / (64 * 1024) == expected
    pv, pm, _ = __import__("sparseflow.testing.op_db", fromlist=["x"]).random_nm_weight(64, 1024, 1, 4, dtype)
    stored = pv.numel() * pv.element_size() + pm.numel() * pm.element_size()
    assert stored / (64 * 1024) == expected / 2 + 0.0625  # 1:4: half the values, the same 1-bit mask


_PACK_SHAPES = [(6, 200), (37, 196), (16, 64), (33, 36), (1, 4)]


@pytest.mark.parametrize("n,m,rows,cols", [(2, 4, *s) for s in _PACK_SHAPES] + [(1, 4, *s) for s in _PACK_SHAPES]
                         + [(4, 8, 6, 200), (4, 8, 33, 40)])
def test_pack_matches_reference_layout_and_copies(n, m, rows, cols):
    """int8 2:4 takes the lane layout (16-row blocks, a short last block; cols % 8 == 4 has a half unit and
    ceil(cols / 32) odd a spare meta dword), everything else the row-major one."""
    for dtype in WEIGHT_DTYPES:
        dense = random_nm_dense(rows, cols, n, m, fill=0.7)
        dense = dense.round().to(dtype) if dtype == torch.int8 else dense.to(dtype)
        values, indices = ops.nm_compress(dense, n, m)
        pv, pm = ops.nm_pack(values, indices, n, m)
        rv, rm = ref.nm_pack(values, indices, n, m)
        assert torch.equal(pm, rm) and torch.equal(pv.view(torch.uint8), rv.view(torch.uint8))
        assert pv.data_ptr() != values.data_ptr()  # owns its storage
        assert torch.equal(ref.nm_unpack(pv, pm, cols, n, m), dense)  # numerically: -0.0 was packed as +0.0


class _PackedLinear(torch.nn.Module):
    """What a module keeps: the packed tensors as buffers (packed once, at construction)."""

    def __init__(self, dense, n, m, weight_scale=None):
        super().__init__()
        values, indices = ops.nm_compress(dense, n, m)
        pv, pm = ops.nm_pack(values, indices, n, m)
        self.n, self.m = n, m
        self.out_features, self.in_features = dense.shape
        self.register_buffer("packed_values", pv)
        self.register_buffer("packed_meta", pm)
        self.register_buffer("weight_scale", weight_scale)

    def forward(self, x):
        return ops.nm_linear(x, self.packed_values, self.packed_meta, self.n, self.m, self.out_features,
                             self.in_features, weight_scale=self.weight_scale)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
def test_state_dict_round_trip(dtype):
    dense = random_nm_dense(24, 96, 4, 8, fill=0.9)
    ws = None
    if dtype == torch.int8:
        dense, ws = (dense * 10).round().clamp(-127, 127), torch.rand(24) + 0.5
    module = _PackedLinear(dense.to(dtype), 4, 8, ws)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = _PackedLinear(torch.zeros(24, 96, dtype=dtype), 4, 8, None if ws is None else torch.zeros(24))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(5, 96).to(torch.float32 if dtype == torch.int8 else dtype)
    assert torch.equal(fresh(x), module(x))


def test_forcing_portable_with_the_environment():
    code = (
        "import torch, sparseflow; from sparseflow import _C; from sparseflow.testing.op_db import nm_linear_args;"
        "from sparseflow.testing import reference as ref;"
        "assert _C.selected_cpu_isa() == 'portable', _C.selected_cpu_isa();"
        "args = nm_linear_args((3,), 20, 96, 2, 4, torch.int8, bias=True);"
        "y = torch.ops.sparseflow.nm_linear(*args);"
        "assert torch.equal(y, ref.nm_linear(*args)) or (y.double() - ref.nm_linear_float64(*args)).abs().max() < 1e-4;"
        "print('ok')"
    )
    env = dict(os.environ, SPARSEFLOW_CPU_ISA="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_int8_bf16_activations_quantize_like_the_reference(isa):
    args = nm_linear_args((4,), 31, 200, 2, 4, torch.int8, x_dtype=torch.bfloat16, bias=True, seed=11)
    nm_linear_tolerance_check(torch.ops.sparseflow.nm_linear(*args), args)


def test_meta_check_names_nm_pack():
    args = list(nm_linear_args((2,), 8, 64, 2, 4, torch.float32))
    args[2] = torch.zeros(8, 9, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"packed_meta must have shape \[8, 8\] \(the output of sparseflow.nm_pack\)"):
        torch.ops.sparseflow.nm_linear(*args)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
def test_corrupted_meta_never_reads_past_the_weight(isa, dtype):
    """The row-major kernels step through a row's values by its meta's popcount; a corrupted meta in one of
    the last m / n + 1 rows (the only ones that could reach past the values buffer) is rejected on every path,
    one earlier in the weight gives wrong numbers without reading out of bounds (like corrupted values). The
    lane layouts (int8, bf16 / fp32 2:4) read their values at fixed places whatever the meta says: never rejected,
    never out of bounds (the ASAN run checks the reads); the float ones' 2-bit positions give what the reference
    computes."""
    in_features = 100  # the last meta word covers 36 columns
    args = list(nm_linear_args((3,), 9, in_features, 2, 4, dtype, seed=3))
    for row, byte, value in ((8, 0, 0xFF), (7, 5, 0x00), (8, 15, 0xF0), (0, 0, 0xFF), (2, 15, 0xFF)):
        meta = args[2].clone()
        if ref.uses_lane_layout(dtype, 2, 4):  # row `row`'s byte `byte` sits in its lane of dword byte // 4
            at = (byte // 4 * 9 + row) * 4 + byte % 4  # one block of 9 rows
        else:
            at = row * meta.shape[1] + byte
        meta.view(-1)[at] = value
        if meta.view(-1)[at] == args[2].view(-1)[at]:
            continue
        bad = args[:2] + [meta] + args[3:]
        if row < 9 - 3 or ref.uses_lane_layout(dtype, 2, 4):
            y = torch.ops.sparseflow.nm_linear(*bad)
            assert y.shape == (3, 9)
            if dtype != torch.int8 and ref.uses_lane_layout(dtype, 2, 4):  # the positions it names, as in the reference
                nm_linear_tolerance_check(y, tuple(bad))
            continue
        with pytest.raises(IndexError, match=rf"sparseflow.nm_linear: packed_meta row {row} does not keep exactly 50 "
                                             rf"of its 100 columns"):
            torch.ops.sparseflow.nm_linear(*bad)


def test_sparseflow_version_is_loaded():
    assert sparseflow.BUILD_INFO["version"]
