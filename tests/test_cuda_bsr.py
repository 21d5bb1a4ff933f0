"""The CUDA block-sparse path (csrc/bsr/bsr_cuda.h): shapes and argument checks under FakeTensorMode on
device "cuda" (no GPU needed), and, on a GPU, bsr_pack's output and errors and bsr_linear against an fp64
reference with FlashAttention's tolerance rule, every block size and epilogue, opcheck and CUDA graphs."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

HALF = (torch.float16, torch.bfloat16)
BLOCKS = (16, 32, 64, 128)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")


def random_bsr(out_features, in_features, T, density, dtype, device="cpu", seed=0, empty_rows=()):
    """Canonical BSR arrays with about `density` of the T x T blocks stored. Entries that overhang the matrix
    are non-zero on purpose: bsr_pack must drop them."""
    g = torch.Generator().manual_seed(seed)
    block_rows, block_cols = -(-out_features // T), -(-in_features // T)
    keep = torch.rand(block_rows, block_cols, generator=g) < density
    for r in empty_rows:
        keep[r] = False
    crow = torch.zeros(block_rows + 1, dtype=torch.int32)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1].to(torch.int32)
    values = torch.randn(int(crow[-1]), T, T, generator=g) / (in_features * density + 1) ** 0.5
    return crow.to(device), col.to(device), values.to(dtype).to(device)


def bsr_dense(crow, col, values, out_features, in_features):
    """The dense [out, in] weight of canonical arrays (overhang dropped)."""
    T = values.shape[1]
    block_rows = crow.numel() - 1
    dense = torch.zeros(block_rows * T, (-(-in_features // T)) * T, dtype=torch.float64, device=values.device)
    row_of = torch.repeat_interleave(torch.arange(block_rows, device=crow.device), crow.diff().long())
    for b in range(values.shape[0]):
        r, c = int(row_of[b]), int(col[b])
        dense[r * T:(r + 1) * T, c * T:(c + 1) * T] = values[b].double()
    return dense[:out_features, :in_features]


# --------------------------------------------------------------------------------- fakes on device "cuda"

@pytest.mark.parametrize("T", BLOCKS)
def test_fake_shapes_on_cuda(T):
    with FakeTensorMode():
        crow = torch.empty(4, dtype=torch.int32, device="cuda")
        col = torch.empty(5, dtype=torch.int32, device="cuda")
        values = torch.empty(5, T, T, dtype=torch.bfloat16, device="cuda")
        meta, rowptr, indices, packed, comp = torch.ops.sparseflow.bsr_pack(crow, col, values, 3 * T - 1, 200, "auto")
        assert meta.device.type == "cpu" and meta.shape == (8,) and meta.dtype == torch.int64
        assert rowptr.shape == (4,) and rowptr.device.type == "cuda"
        assert indices.shape == (5,) and indices.dtype == torch.int16
        assert packed.shape == (5, T, T) and packed.dtype == torch.bfloat16 and comp.shape == (0,)
        x = torch.empty(2, 3, 200, dtype=torch.bfloat16, device="cuda")
        y = torch.ops.sparseflow.bsr_linear(x, meta, rowptr, indices, packed, comp, 3 * T - 1, 200)
        assert y.shape == (2, 3, 3 * T - 1) and y.dtype == torch.bfloat16 and y.device.type == "cuda"
        y = torch.ops.sparseflow.bsr_linear(x[0], meta, rowptr, indices, packed, comp, 3 * T - 1, 200,
                                            out_dtype=torch.float32)
        assert y.shape == (3, 3 * T - 1) and y.dtype == torch.float32


def _bad_pack_calls():
    return [
        ("fp32 values", dict(values=lambda v: v.float()), TypeError, r"values must have dtype"),
        ("non-square", dict(values=lambda v: v[:, :, :8]), ValueError, r"square 16x16, 32x32, 64x64 or 128x128 .* got 16x8"),
        ("block 8", dict(values=lambda v: v[:, :8, :8]), ValueError, r"got 8x8"),
        ("CPU kernel name", dict(kernel="16x1"), ValueError, r"kernel '16x1' is not a CUDA layout"),
        ("crow length", dict(out_features=100), ValueError, r"crow must have ceil\(out_features/R\) \+ 1 = 8"),
        ("in_features", dict(in_features=70000), ValueError, r"in_features must be in \[0, 65536\]"),
    ]


def _call_pack(crow, col, values, overrides):
    args = dict(out_features=40, in_features=64, kernel="auto")
    if "values" in overrides:
        values = overrides["values"](values)
    args.update({k: v for k, v in overrides.items() if k != "values"})
    return torch.ops.sparseflow.bsr_pack(crow, col, values, args["out_features"], args["in_features"], args["kernel"])


@pytest.mark.parametrize("case", _bad_pack_calls(), ids=lambda c: c[0])
def test_fake_pack_rejects_bad_arguments(case):
    _, overrides, error, match = case
    with FakeTensorMode():
        crow = torch.empty(4, dtype=torch.int32, device="cuda")
        col = torch.empty(6, dtype=torch.int32, device="cuda")
        values = torch.empty(6, 16, 16, dtype=torch.float16, device="cuda")
        with pytest.raises(error, match=match):
            _call_pack(crow, col, values, overrides)


def _bad_linear_calls():
    return [
        ("meta on cuda", dict(meta=lambda t: t["meta"].cuda() if torch.cuda.is_available() else
                              torch.empty(8, dtype=torch.int64, device="cuda")), ValueError, r"meta must be the 1-D int64 CPU tensor"),
        ("x dtype", dict(x=lambda t: t["x"].float()), TypeError, r"x must have dtype"),
        ("x width", dict(x=lambda t: t["x"][:, :56]), ValueError, r"in_features"),
        ("weight dtype", dict(x=lambda t: t["x"].bfloat16()), TypeError, r"x must have the weight's dtype"),
        ("indices dtype", dict(indices=lambda t: t["indices"].int()), TypeError, r"indices must have dtype"),
        ("out_dtype", dict(out_dtype=torch.bfloat16), TypeError, r"out_dtype must be the dtype of x"),
        ("activation", dict(activation="tanh"), ValueError, r"activation must be 'none', 'relu', 'gelu' or 'silu'"),
        ("bias shape", dict(bias=lambda t: torch.zeros(3, dtype=torch.float16, device="cuda")), ValueError,
         r"bias must have shape \[40\]"),
        ("bias dtype", dict(bias=lambda t: torch.zeros(40, dtype=torch.float64, device="cuda")), TypeError,
         r"bias must have dtype"),
        ("weight_scale", dict(weight_scale=lambda t: torch.ones(40, device="cuda")), ValueError,
         r"weight_scale applies to int8 weights only"),
    ]


def _call_linear(t, overrides):
    t = dict(t)
    args = dict(bias=None, weight_scale=None, activation="none", out_dtype=None)
    for k, v in overrides.items():
        if k in t:
            t[k] = v(t)
        else:
            args[k] = v(t) if callable(v) else v
    return torch.ops.sparseflow.bsr_linear(t["x"], t["meta"], t["rowptr"], t["indices"], t["packed"], t["comp"], 40, 64,
                                           args["bias"], args["weight_scale"], args["activation"], args["out_dtype"])


@pytest.mark.parametrize("case", _bad_linear_calls(), ids=lambda c: c[0])
def test_fake_linear_rejects_bad_arguments(case):
    _, overrides, error, match = case
    with FakeTensorMode():
        crow = torch.empty(4, dtype=torch.int32, device="cuda")
        col = torch.empty(6, dtype=torch.int32, device="cuda")
        values = torch.empty(6, 16, 16, dtype=torch.float16, device="cuda")
        meta, rowptr, indices, packed, comp = torch.ops.sparseflow.bsr_pack(crow, col, values, 40, 64, "auto")
        x = torch.empty(5, 64, dtype=torch.float16, device="cuda")
        with pytest.raises(error, match=match):
            _call_linear(dict(x=x, meta=meta, rowptr=rowptr, indices=indices, packed=packed, comp=comp), overrides)


# ------------------------------------------------------------------------------------------------ GPU

ACTIVATIONS = {"none": lambda t: t, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu}


def assert_flash_rule(actual, x, w64, bias, activation, out_dtype):
    """Our error against fp64 is at most twice that of torch's own low-precision dense linear (+ a floor)."""
    act = ACTIVATIONS[activation]
    x2 = x.reshape(-1, x.shape[-1])
    y64 = x2.double() @ w64.t()
    y_lp = F.linear(x2, w64.to(x.dtype))
    if bias is not None:
        y64 = y64 + bias.double()
        y_lp = y_lp + bias.to(x.dtype)
    y64, y_lp = act(y64), act(y_lp).to(out_dtype)
    actual = actual.reshape(-1, actual.shape[-1])
    assert actual.shape == y64.shape and actual.dtype == out_dtype
    if actual.numel() == 0:
        return
    err = (actual.double() - y64).abs().max().item()
    torch_err = (y_lp.double() - y64).abs().max().item()
    floor = 1e-6 * max(1.0, y64.abs().max().item())
    assert err <= 2 * torch_err + floor, f"max error {err:.3g} > 2 x torch's {torch_err:.3g}"


def _pack(out_features, in_features, T, dtype, density=0.5, seed=0, empty_rows=()):
    crow, col, values = random_bsr(out_features, in_features, T, density, dtype, "cuda", seed, empty_rows)
    packed = torch.ops.sparseflow.bsr_pack(crow, col, values, out_features, in_features, "auto")
    return bsr_dense(crow, col, values, out_features, in_features), packed


@gpu
@pytest.mark.parametrize("T", BLOCKS)
def test_gpu_pack_layout(T):
    out_features, in_features = 3 * T - 5, 2 * T + 8  # both overhang
    crow, col, values = random_bsr(out_features, in_features, T, 0.7, torch.float16, "cuda", seed=T)
    meta, rowptr, indices, packed, comp = torch.ops.sparseflow.bsr_pack(crow, col, values, out_features,
                                                                        in_features, f"{T}x{T}")
    assert meta.device.type == "cpu"
    assert meta.tolist() == [1, 4, 4, out_features, in_features, values.shape[0], T, 0]
    assert torch.equal(rowptr, crow) and rowptr.data_ptr() != crow.data_ptr()
    assert torch.equal(indices.long(), col.long() * T) and indices.dtype == torch.int16
    assert comp.shape == (0,)
    # the blocks, with the overhang zeroed
    row_of = torch.repeat_interleave(torch.arange(crow.numel() - 1, device="cuda"), crow.diff().long())
    rows = row_of[:, None] * T + torch.arange(T, device="cuda")
    cols = col.long()[:, None] * T + torch.arange(T, device="cuda")
    inside = (rows < out_features)[:, :, None] & (cols < in_features)[:, None, :]
    assert torch.equal(packed, torch.where(inside, values, torch.zeros((), dtype=values.dtype, device="cuda")))


@gpu
def test_gpu_pack_reports_bad_canonical_arrays():
    crow, col, values = random_bsr(64, 64, 16, 1.0, torch.float16, "cuda")  # 4 x 4 blocks, all stored
    bad = col.clone()
    bad[6] = 9
    with pytest.raises(IndexError, match=r"sparseflow.bsr_pack: col\[6\] = 9 \(block-row 1\) is out of range \[0, 4\)"):
        torch.ops.sparseflow.bsr_pack(crow, bad, values, 64, 64, "auto")
    bad = col.clone()
    bad[5] = 0
    with pytest.raises(IndexError, match=r"strictly ascending .* block-row 1 has col\[4\] = 0 then col\[5\] = 0"):
        torch.ops.sparseflow.bsr_pack(crow, bad, values, 64, 64, "auto")
    bad = crow.clone()
    bad[2] = 3
    with pytest.raises(IndexError, match=r"crow must be non-decreasing, but crow\[2\] = 3 < crow\[1\] = 4"):
        torch.ops.sparseflow.bsr_pack(bad, col, values, 64, 64, "auto")


# (tokens, out, in): tokens <= 16 take the 16-token tiles, more take 64; out/in overhang the blocks.
LINEAR_SHAPES = [(1, 64, 64), (5, 100, 136), (16, 256, 512), (17, 130, 72), (100, 512, 256), (300, 96, 1000)]


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("T", BLOCKS)
@pytest.mark.parametrize("tokens,out_features,in_features", LINEAR_SHAPES)
def test_gpu_linear_matches_fp64(dtype, T, tokens, out_features, in_features):
    w64, packed = _pack(out_features, in_features, T, dtype, density=0.4, seed=tokens + T, empty_rows=(0,))
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    y = torch.ops.sparseflow.bsr_linear(x, *packed, out_features, in_features)
    assert y.is_contiguous()
    assert_flash_rule(y, x, w64, None, "none", dtype)


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("bias_dtype,out_float", [("x", False), ("float32", True), (None, False), (None, True)])
@pytest.mark.parametrize("tokens", [3, 70])
def test_gpu_linear_epilogues(dtype, activation, bias_dtype, out_float, tokens):
    out_features, in_features = 200, 128  # odd block-row counts, an overhanging last block-row
    w64, packed = _pack(out_features, in_features, 32, dtype, density=0.5, seed=5, empty_rows=(2,))
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    bias = None if bias_dtype is None else torch.randn(out_features, device="cuda").to(
        dtype if bias_dtype == "x" else torch.float32)
    out_dtype = torch.float32 if out_float else dtype
    y = torch.ops.sparseflow.bsr_linear(x, *packed, out_features, in_features, bias, None, activation,
                                        torch.float32 if out_float else None)
    assert_flash_rule(y, x, w64, bias, activation, out_dtype)


@gpu
def test_gpu_linear_odd_out_features_and_strided_inputs():
    dtype, T, out_features, in_features = torch.float16, 16, 37, 96  # odd out: scalar stores
    w64, packed = _pack(out_features, in_features, T, dtype, density=0.6, seed=2)
    wide = torch.randn(9, 2 * in_features, dtype=dtype, device="cuda")
    for name, x in {"row slice": wide[:, in_features:], "odd offset": wide[:, 3:in_features + 3],
                    "transposed": torch.randn(in_features, 9, dtype=dtype, device="cuda").t(),
                    "3-D": torch.randn(2, 4, in_features, dtype=dtype, device="cuda"),
                    "1-D": torch.randn(in_features, dtype=dtype, device="cuda")}.items():
        before = x.clone()
        y = torch.ops.sparseflow.bsr_linear(x, *packed, out_features, in_features)
        assert y.shape == (*x.shape[:-1], out_features), name
        assert_flash_rule(y, x, w64, None, "none", dtype)
        assert torch.equal(x, before), f"{name}: input modified"


@gpu
def test_gpu_linear_empty_weight_and_empty_batch():
    dtype = torch.bfloat16
    _, packed = _pack(64, 64, 16, dtype, density=0.0)  # no blocks at all: y = act(bias)
    bias = torch.randn(64, device="cuda")
    y = torch.ops.sparseflow.bsr_linear(torch.randn(5, 64, dtype=dtype, device="cuda"), *packed, 64, 64, bias, None,
                                        "relu", torch.float32)
    assert torch.equal(y, torch.relu(bias).expand(5, 64))
    y = torch.ops.sparseflow.bsr_linear(torch.empty(0, 64, dtype=dtype, device="cuda"), *packed, 64, 64)
    assert y.shape == (0, 64)


@gpu
@pytest.mark.parametrize("case", _bad_linear_calls(), ids=lambda c: c[0])
def test_gpu_linear_rejects_bad_arguments(case):
    _, overrides, error, match = case
    _, (meta, rowptr, indices, packed, comp) = _pack(40, 64, 16, torch.float16)
    x = torch.randn(5, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(error, match=match):
        _call_linear(dict(x=x, meta=meta, rowptr=rowptr, indices=indices, packed=packed, comp=comp), overrides)


@gpu
def test_gpu_linear_rejects_a_cpu_layout_and_misaligned_in_features():
    _, (meta, rowptr, indices, packed, comp) = _pack(40, 64, 16, torch.float16)
    cpu_meta = meta.clone()
    cpu_meta[1] = 2  # the CPU 16x1 layout
    x = torch.randn(5, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match=r"meta holds layout id 2, a CPU layout"):
        torch.ops.sparseflow.bsr_linear(x, cpu_meta, rowptr, indices, packed, comp, 40, 64)
    _, (meta, rowptr, indices, packed, comp) = _pack(40, 60, 16, torch.float16)
    with pytest.raises(ValueError, match=r"in_features must be a multiple of 8"):
        torch.ops.sparseflow.bsr_linear(torch.randn(5, 60, dtype=torch.float16, device="cuda"), meta, rowptr, indices,
                                        packed, comp, 40, 60)


@gpu
def test_gpu_opcheck():
    crow, col, values = random_bsr(100, 96, 32, 0.5, torch.bfloat16, "cuda", seed=1)
    torch.library.opcheck(torch.ops.sparseflow.bsr_pack.default, (crow, col, values, 100, 96, "auto"))
    packed = torch.ops.sparseflow.bsr_pack(crow, col, values, 100, 96, "auto")
    x = torch.randn(2, 7, 96, dtype=torch.bfloat16, device="cuda")
    torch.library.opcheck(torch.ops.sparseflow.bsr_linear.default, (x, *packed, 100, 96),
                          {"bias": torch.randn(100, device="cuda"), "activation": "gelu", "out_dtype": torch.float32})


@gpu
def test_gpu_linear_cuda_graph_capture():
    dtype = torch.float16
    w64, packed = _pack(256, 512, 64, dtype, density=0.3, seed=9)
    x = torch.randn(8, 512, dtype=dtype, device="cuda")

    def step():
        return torch.ops.sparseflow.bsr_linear(x, *packed, 256, 512, None, None, "silu")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside the capture (sets kernel attributes)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = step()
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_flash_rule(y, x, w64, None, "silu", dtype)
