"""The CUDA block-sparse path (csrc/bsr/bsr_cuda.h): shapes and argument checks under FakeTensorMode on
device "cuda" and the CUDA layout's reference re-cut (no GPU needed), and, on a GPU, bsr_pack's output (blocks
kept or re-cut into tiles) against that reference, its errors, and bsr_linear against an fp64 reference with
FlashAttention's tolerance rule, every block size and epilogue, opcheck, CUDA graphs and SparseLinear."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from sparseflow.nn import SparseLinear
from sparseflow.testing import reference as ref
from sparseflow.testing.cuda_graphs import capture_and_replay
from sparseflow.testing.op_db import bsr_pack_cuda_samples
from sparseflow.testing.op_db import random_bsr as random_blocks

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


# (R, C) canonical blocks -> the tile bsr_pack picks on CUDA for kernel "auto", and whether it re-cuts.
AUTO_TILES = [((4, 1), 16, True), ((1, 16), 16, True), ((8, 8), 16, True), ((3, 5), 16, True), ((16, 32), 16, True),
              ((16, 16), 16, False), ((32, 32), 32, False), ((128, 128), 128, False), ((48, 48), 16, True)]


@pytest.mark.parametrize("block,T,recut", AUTO_TILES, ids=lambda v: str(v))
def test_fake_recut_shapes_on_cuda(block, T, recut):
    R, C = block
    out_features, in_features = 3 * R * 7 - 1, 200
    with FakeTensorMode(shape_env=ShapeEnv()):
        crow = torch.empty(-(-out_features // R) + 1, dtype=torch.int32, device="cuda")
        col = torch.empty(5, dtype=torch.int32, device="cuda")
        values = torch.empty(5, R, C, dtype=torch.float16, device="cuda")
        meta, rowptr, indices, packed, comp = torch.ops.sparseflow.bsr_pack(crow, col, values, out_features,
                                                                            in_features, "auto")
        assert meta.device.type == "cpu" and meta.shape == (8,)
        assert rowptr.shape == (-(-out_features // T) + 1,) and rowptr.dtype == torch.int32
        assert packed.shape[1:] == (T, T) and packed.dtype == torch.float16 and packed.device.type == "cuda"
        assert indices.dtype == torch.int16 and comp.shape == (0,)
        if recut:  # the number of tiles with a non-zero is data-dependent: one unbacked size for both
            assert isinstance(packed.shape[0], torch.SymInt) and indices.shape[0] == packed.shape[0]
        else:
            assert packed.shape == (5, T, T) and indices.shape == (5,)
        x = torch.empty(7, in_features, dtype=torch.float16, device="cuda")
        y = torch.ops.sparseflow.bsr_linear(x, meta, rowptr, indices, packed, comp, out_features, in_features)
        assert y.shape == (7, out_features) and y.device.type == "cuda"


@pytest.mark.parametrize("kernel,T", [("16x16", 16), ("32x32", 32), ("64x64", 64), ("128x128", 128)])
@pytest.mark.parametrize("block", [(4, 1), (1, 16), (3, 5), (16, 16), (64, 64)])
def test_fake_forced_tile_on_cuda(block, kernel, T):
    R, C = block
    with FakeTensorMode(shape_env=ShapeEnv()):
        crow = torch.empty(-(-100 // R) + 1, dtype=torch.int32, device="cuda")
        col = torch.empty(9, dtype=torch.int32, device="cuda")
        values = torch.empty(9, R, C, dtype=torch.bfloat16, device="cuda")
        _, rowptr, indices, packed, _ = torch.ops.sparseflow.bsr_pack(crow, col, values, 100, 72, kernel)
        assert rowptr.shape == (-(-100 // T) + 1,) and packed.shape[1:] == (T, T)
        if block == (T, T):  # kept as they are only when the blocks are the tiles
            assert packed.shape == (9, T, T) and indices.shape == (9,)
        else:
            assert isinstance(packed.shape[0], torch.SymInt) and indices.shape[0] == packed.shape[0]


def _bad_pack_calls():
    return [
        ("fp32 values", dict(values=lambda v: v.float()), TypeError,
         r"values must have dtype Half or BFloat16 on CUDA .*float32 and int8 block weights run on the CPU"),
        ("int8 values", dict(values=lambda v: v.to(torch.int8)), TypeError, r"float32 and int8 block weights run on the CPU"),
        ("CPU kernel name", dict(kernel="16x1"), ValueError,
         r"kernel '16x1' is not a CUDA layout; on CUDA use 'auto', '16x16', '32x32', '64x64' or '128x128'"),
        ("unsupported tile", dict(kernel="48x48"), ValueError, r"kernel '48x48' is not a CUDA layout"),
        ("non-square tile", dict(kernel="16x32"), ValueError, r"kernel '16x32' is not a CUDA layout"),
        ("empty blocks", dict(values=lambda v: v[:, :0]), ValueError, r"R x C blocks with R, C >= 1"),
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
    with FakeTensorMode(shape_env=ShapeEnv()):
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


# --------------------------------------------------------------------- the CUDA layout's reference (CPU)

# (R, C) canonical blocks x kernel: re-cut into smaller, equal, larger and straddled tiles, and kept as they are.
RECUT_CASES = [((4, 1), "auto"), ((1, 16), "auto"), ((8, 8), "auto"), ((3, 5), "auto"), ((32, 32), "auto"),
               ((16, 16), "auto"), ((4, 1), "64x64"), ((1, 16), "32x32"), ((3, 5), "128x128"), ((8, 8), "16x16"),
               ((32, 32), "16x16"), ((32, 32), "64x64"), ((32, 32), "32x32"), ((16, 16), "128x128")]


def canonical(out_features, in_features, block, dtype, device="cpu", seed=0, density=0.5):
    """Canonical R x C arrays: about 10% zero entries (some -0.0), non-zero overhang, and stored all-zero blocks
    (the first one +0.0, the third -0.0) that a re-cut must drop."""
    crow, col, values = random_blocks(out_features, in_features, *block, density, dtype, "cpu", seed)
    if len(values) > 2:
        values[0] = 0
        values[2] = -0.0
    return crow.to(device), col.to(device), values.to(device)


def tiles_by_loop(crow, col, values, out_features, in_features, T):
    """The re-cut spelled out: every T x T tile of the dense matrix that holds a non-zero, row by row."""
    dense = ref.bsr_to_dense(crow.cpu(), col.cpu(), values.cpu(), out_features, in_features).double()
    rowptr, indices, tiles = [0], [], []
    for r0 in range(0, out_features, T):
        for k0 in range(0, in_features, T):
            tile = torch.zeros(T, T, dtype=torch.float64)
            part = dense[r0:r0 + T, k0:k0 + T]
            tile[:part.shape[0], :part.shape[1]] = part
            if (tile != 0).any():
                indices.append(k0)
                tiles.append(tile)
        rowptr.append(len(tiles))
    return rowptr, indices, torch.stack(tiles) if tiles else torch.zeros(0, T, T, dtype=torch.float64)


def kept_blocks(crow, col, values, out_features, in_features):
    """T x T canonical blocks as bsr_pack keeps them: entries outside [out, in] zeroed, the rest untouched."""
    T = values.shape[1]
    row_of = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff().long())
    rows = row_of[:, None] * T + torch.arange(T, device=crow.device)
    cols = col.long()[:, None] * T + torch.arange(T, device=crow.device)
    inside = (rows < out_features)[:, :, None] & (cols < in_features)[:, None, :]
    return torch.where(inside, values, torch.zeros((), dtype=values.dtype, device=values.device))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("block,kernel", RECUT_CASES, ids=lambda v: str(v))
def test_reference_layout_matches_tile_loop(block, kernel, dtype):
    out_features, in_features = 133, 200  # neither a multiple of any tile nor of 3x5
    crow, col, values = canonical(out_features, in_features, block, dtype, seed=sum(block))
    T, recut = ref.bsr_cuda_tile(kernel, *block)
    meta, rowptr, indices, packed, comp = ref.bsr_pack_cuda(crow, col, values, out_features, in_features, kernel)
    assert meta.tolist() == [1, 4, 1 if dtype == torch.bfloat16 else 4, out_features, in_features, packed.shape[0], T, 0]
    assert packed.dtype == dtype and packed.shape[1:] == (T, T) and comp.shape == (0,)
    if recut:
        want_rowptr, want_indices, want_tiles = tiles_by_loop(crow, col, values, out_features, in_features, T)
        assert rowptr.tolist() == want_rowptr and indices.tolist() == want_indices
        assert torch.equal(packed.double(), want_tiles)
        assert not packed.signbit()[packed == 0].any(), "-0.0 must be stored as +0.0"
    else:  # the canonical blocks bit for bit (all-zero and -0.0 ones included), overhang zeroed
        assert torch.equal(rowptr, crow) and indices.tolist() == (col * T).tolist()
        assert torch.equal(packed.view(torch.int16), kept_blocks(crow, col, values, out_features, in_features).view(torch.int16))
    dense = ref.bsr_to_dense(crow, col, values, out_features, in_features)
    assert torch.equal(ref.bsr_unpack(meta, rowptr, indices, packed, comp, out_features, in_features), dense)


def test_reference_recut_count_and_fill_in():
    """4x1 blocks in 16x16 tiles: a tile is stored iff one of its 64 block slots holds a non-zero, and the fill-in
    is the stored tiles' area minus the non-zeros."""
    crow, col, values = canonical(64, 64, (4, 1), torch.float16, density=0.05, seed=3)
    dense = ref.bsr_to_dense(crow, col, values, 64, 64)
    occupied = (dense != 0).reshape(4, 16, 4, 16).any(3).any(1)
    _, rowptr, indices, packed, _ = ref.bsr_pack_cuda(crow, col, values, 64, 64)
    assert packed.shape[0] == int(occupied.sum()) and rowptr.tolist() == [0, *occupied.sum(1).cumsum(0).tolist()]
    assert int((packed != 0).sum()) == int((dense != 0).sum())


def test_reference_layout_edge_cases():
    empty = ref.bsr_pack_cuda(torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                              torch.zeros(0, 4, 1, dtype=torch.float16), 0, 24)
    assert empty[0].tolist() == [1, 4, 4, 0, 24, 0, 16, 0] and empty[1].tolist() == [0] and empty[3].shape == (0, 16, 16)
    crow, col, values = canonical(40, 64, (4, 1), torch.bfloat16, density=0.0)
    _, rowptr, indices, packed, _ = ref.bsr_pack_cuda(crow, col, values, 40, 64, "32x32")
    assert rowptr.tolist() == [0, 0, 0] and packed.shape == (0, 32, 32)
    # the largest index: the last 16-column tile of in_features = 65536, stored as int16 with the same bits
    crow = torch.tensor([0, 1], dtype=torch.int32)
    _, _, indices, _, _ = ref.bsr_pack_cuda(crow, torch.tensor([65535], dtype=torch.int32),
                                            torch.ones(1, 1, 1, dtype=torch.float16), 1, 65536)
    assert indices.dtype == torch.int16 and int(indices[0]) & 0xFFFF == 65536 - 16
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        ref.bsr_pack_cuda(crow, torch.tensor([0], dtype=torch.int32), torch.ones(1, 1, 1), 1, 8)
    with pytest.raises(ValueError, match="not a CUDA layout"):
        ref.bsr_pack_cuda(crow, torch.tensor([0], dtype=torch.int32), torch.ones(1, 1, 1, dtype=torch.float16), 1, 8,
                          "16x1")


def test_registry_cuda_samples_fit_the_reference_and_the_fake():
    """op_db's CUDA samples of bsr_pack (run against the op on a GPU by test_op_samples.py), built here on CPU
    tensors: the reference packs them, and the fake on device "cuda" gives the reference's dtypes and static
    sizes."""
    samples = list(bsr_pack_cuda_samples(torch.device("cpu")))
    assert len(samples) >= 10
    for sample in samples:
        want = ref.bsr_pack_cuda(*sample.args)
        with FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True):
            args = [a.to("cuda") if isinstance(a, torch.Tensor) else a for a in sample.args]
            got = torch.ops.sparseflow.bsr_pack(*args)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.dim() == w.dim(), sample.note
            assert all(isinstance(gd, torch.SymInt) or gd == wd for gd, wd in zip(g.shape, w.shape)), sample.note


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

    y = capture_and_replay(step, x)
    assert_flash_rule(y, x, w64, None, "silu", dtype)


# ------------------------------------------------------------------ GPU: any R x C, re-cut into T x T tiles

def _bits(t):
    return t.view(torch.int16) if t.dtype in HALF else t


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("block,kernel", RECUT_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("out_features,in_features", [(133, 200), (37, 1000), (256, 64)])
def test_gpu_pack_matches_reference_layout(block, kernel, dtype, out_features, in_features):
    crow, col, values = canonical(out_features, in_features, block, dtype, seed=out_features + sum(block))
    got = torch.ops.sparseflow.bsr_pack(crow.cuda(), col.cuda(), values.cuda(), out_features, in_features, kernel)
    want = ref.bsr_pack_cuda(crow, col, values, out_features, in_features, kernel)
    assert got[0].device.type == "cpu" and torch.equal(got[0], want[0])
    for name, g, w in zip(("rowptr", "indices", "packed_values", "compensation"), got[1:], want[1:]):
        assert g.device.type == "cuda" and g.dtype == w.dtype and g.is_contiguous(), name
        assert torch.equal(_bits(g.cpu()), _bits(w)), name


@gpu
def test_gpu_pack_recut_reports_bad_canonical_arrays_and_dtypes():
    crow, col, values = canonical(16, 16, (4, 1), torch.float16, density=1.0)  # 4 x 16 blocks, all stored
    crow, col, values = crow.cuda(), col.cuda(), values.cuda()
    bad = col.clone()
    bad[20] = 16
    with pytest.raises(IndexError, match=r"col\[20\] = 16 \(block-row 1\) is out of range \[0, 16\)"):
        torch.ops.sparseflow.bsr_pack(crow, bad, values, 16, 16, "auto")
    with pytest.raises(TypeError, match=r"float32 and int8 block weights run on the CPU"):
        torch.ops.sparseflow.bsr_pack(crow, col, values.float(), 16, 16, "auto")
    with pytest.raises(ValueError, match=r"kernel '4x1' is not a CUDA layout"):
        torch.ops.sparseflow.bsr_pack(crow, col, values, 16, 16, "4x1")


RECUT_LINEAR = [((4, 1), "auto"), ((1, 16), "auto"), ((8, 8), "auto"), ((3, 5), "auto"), ((32, 32), "auto"),
                ((4, 1), "64x64"), ((3, 5), "32x32"), ((32, 32), "128x128"), ((16, 16), "64x64")]


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("block,kernel", RECUT_LINEAR, ids=lambda v: str(v))
@pytest.mark.parametrize("tokens,out_features,in_features", [(1, 37, 200), (17, 130, 72), (100, 300, 1000)])
def test_gpu_linear_recut_matches_fp64(dtype, block, kernel, tokens, out_features, in_features):
    crow, col, values = canonical(out_features, in_features, block, dtype, "cuda", seed=tokens, density=0.3)
    w64 = ref.bsr_to_dense(crow, col, values, out_features, in_features).double()
    packed = torch.ops.sparseflow.bsr_pack(crow, col, values, out_features, in_features, kernel)
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    bias = torch.randn(out_features, device="cuda")
    y = torch.ops.sparseflow.bsr_linear(x, *packed, out_features, in_features, bias, None, "gelu", torch.float32)
    assert_flash_rule(y, x, w64, bias, "gelu", torch.float32)


@gpu
def test_gpu_recut_of_an_all_zero_weight_stores_nothing():
    crow, col, values = canonical(40, 64, (4, 1), torch.bfloat16, "cuda", density=0.7)
    values = torch.where(torch.rand_like(values, dtype=torch.float32) < 0.5, 0.0, -0.0).to(torch.bfloat16)
    meta, rowptr, indices, packed, comp = torch.ops.sparseflow.bsr_pack(crow, col, values, 40, 64, "auto")
    assert meta.tolist()[5:7] == [0, 16] and rowptr.tolist() == [0, 0, 0, 0] and packed.shape == (0, 16, 16)
    bias = torch.randn(40, device="cuda")
    y = torch.ops.sparseflow.bsr_linear(torch.randn(3, 64, dtype=torch.bfloat16, device="cuda"), meta, rowptr, indices,
                                        packed, comp, 40, 64, bias, None, "relu", torch.float32)
    assert torch.equal(y, torch.relu(bias).expand(3, 40))


@gpu
def test_gpu_opcheck_recut():
    crow, col, values = canonical(100, 96, (3, 5), torch.float16, "cuda", seed=4)
    torch.library.opcheck(torch.ops.sparseflow.bsr_pack.default, (crow, col, values, 100, 96, "auto"))
    torch.library.opcheck(torch.ops.sparseflow.bsr_pack.default, (crow, col, values, 100, 96, "64x64"))


# ------------------------------------------------------------------------------------ SparseLinear on CUDA

def _block_linear(out_features, in_features, block, dtype, density=0.3, seed=0):
    crow, col, values = random_blocks(out_features, in_features, *block, density, torch.float32, "cpu", seed)
    lin = nn.Linear(in_features, out_features)
    with torch.no_grad():
        lin.weight.copy_(ref.bsr_to_dense(crow, col, values, out_features, in_features))
    return lin.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("fmt", ["4x1", "1x16", "16x16", "2:4"])
def test_sparse_linear_without_fallback_refuses_cpu_only_dtypes_on_cuda(fmt, dtype):
    """fp32/int8 weights have no sparse CUDA kernel: fallback='never' refuses the move (decided from the values'
    dtype and device alone, so FakeTensorMode shows it without a GPU)."""
    lin = _block_linear(48, 64, (4, 1), torch.float32) if "x" in fmt else nn.Linear(64, 48)
    sparse = SparseLinear.from_dense(lin, fmt, dtype=dtype, fallback="never", prune=":" in fmt)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(TypeError, match=rf"SparseLinear: {str(dtype)[6:]} weights have no sparse CUDA kernel "
                                            r"\(float16/bfloat16 only"):
            sparse.to("cuda")


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("fmt,T", [("4x1", 16), ("1x16", 16), ("16x16", 16), ("64x64", 64), ("3x5", 16)])
def test_gpu_sparse_linear_block_formats(fmt, T, dtype):
    lin = _block_linear(100, 136, tuple(map(int, fmt.split("x"))), dtype)
    if dtype == torch.bfloat16:  # built on the CPU (its CPU layout), then moved: re-packed for CUDA
        sparse = SparseLinear.from_dense(lin, fmt, fallback="never")
        assert sparse._packed[0][1] in (2, 3)
        sparse = sparse.to("cuda")
    else:  # float16 has no CPU kernel: built on the GPU
        sparse = SparseLinear.from_dense(lin.cuda(), fmt, fallback="never")
    meta = sparse._packed[0]
    assert meta.device.type == "cpu" and meta[1] == 4 and meta[6] == T  # packed by bsr_pack on CUDA
    assert sparse._packed[3].device.type == "cuda"
    x = torch.randn(2, 9, 136, dtype=dtype, device="cuda")
    w64 = lin.weight.double().cuda()
    assert_flash_rule(sparse(x), x, w64, lin.bias.cuda(), "none", dtype)
    if dtype == torch.bfloat16:
        assert sparse.to("cpu")._packed[0][1] in (2, 3)  # and back: the CPU layout again


@gpu
def test_gpu_sparse_linear_float32_weights():
    lin = _block_linear(48, 64, (4, 1), torch.float32)
    with pytest.raises(TypeError, match=r"float32 weights have no sparse CUDA kernel"):
        SparseLinear.from_dense(lin, "4x1", fallback="never").to("cuda")
    sparse = SparseLinear.from_dense(lin, "4x1", fallback="measure").to("cuda")
    assert sparse._packed is None and all(sparse._use_dense)
    x = torch.randn(5, 64, device="cuda")
    torch.testing.assert_close(sparse(x), F.linear(x, lin.weight.cuda(), lin.bias.cuda()))
