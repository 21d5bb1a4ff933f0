"""The CUDA 2:4 path: CUTLASS layout (checked on CPU against PyTorch's independent reimplementation of
CUTLASS's reorder_meta), shape propagation and argument checks of the CUDA ops under FakeTensorMode (no GPU
needed), and, on a GPU, nm_pack / nm_linear against an fp64 reference (FlashAttention's tolerance rule),
opcheck and CUDA-graph capture."""

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

import sparseflow
from conftest import toolchain_env
from sparseflow import _meta, ops
from sparseflow.testing import reference as ref
from sparseflow.testing.cuda_graphs import capture_and_replay
from sparseflow.testing.op_db import random_nm_dense

HALF = (torch.float16, torch.bfloat16)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")


def exact_2_4(rows, cols, dtype, seed=0, device="cpu"):
    """Dense [rows, cols] with exactly 2 non-zeros (never 0 or -0.0) in every group of 4."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows, cols // 4, 4, generator=g).argsort(-1).argsort(-1) < 2
    values = (torch.rand(rows, cols // 4, 4, generator=g) + 0.5) * torch.sign(torch.randn(rows, cols // 4, 4, generator=g))
    return (values * keep).reshape(rows, cols).to(dtype).to(device)


# ------------------------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows,cols", [(32, 64), (64, 128), (96, 192), (128, 1024)])
def test_layout_matches_pytorch_cutlass_conversion(dtype, rows, cols):
    dense = exact_2_4(rows, cols, dtype, seed=rows + cols)
    values, indices = ops.nm_compress(dense, 2, 4)
    packed_values, packed_meta = ops.nm_pack_cutlass(values, indices)
    torch_values, torch_meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert packed_meta.dtype == torch_meta.dtype == torch.int16
    assert torch.equal(packed_values, torch_values)
    assert torch.equal(packed_meta, torch_meta)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows,cols,fill", [(1, 4, 1.0), (33, 68, 0.6), (7, 200, 1.0), (100, 64, 0.3), (64, 320, 0.0)])
def test_layout_decodes_to_the_padded_dense_matrix(dtype, rows, cols, fill):
    """PyTorch's CUTLASS decoder reads our packing back, padding and under-full groups included."""
    dense = random_nm_dense(rows, cols, 2, 4, dtype, seed=rows * cols, fill=fill)
    packed_values, packed_meta = ops.nm_pack_cutlass(*ops.nm_compress(dense, 2, 4))
    rows_p, cols_p = -(-rows // 32) * 32, -(-cols // 64) * 64
    assert packed_values.shape == (rows_p, cols_p // 2) and packed_meta.shape == (rows_p, cols_p // 16)
    decoded = sparse_semi_structured_to_dense_cutlass(packed_values, packed_meta)
    expected = torch.zeros(rows_p, cols_p, dtype=dtype)
    expected[:rows, :cols] = dense
    assert torch.equal(decoded, expected)


def test_padding_uses_a_valid_metadata_code():
    # 0 is not a valid mma.sp code for 16-bit types: padded groups must say positions (0, 1) = 0x4.
    values, indices = ops.nm_compress(exact_2_4(1, 4, torch.float16), 2, 4)
    _, meta = ops.nm_pack_cutlass(values, indices)
    words = (meta.view(torch.int16).to(torch.int32) & 0xFFFF).flatten().tolist()
    real_group_code = int(indices[0, 0]) | int(indices[0, 1]) << 2
    assert sorted(words) == sorted([0x4440 | real_group_code] + [0x4444] * (len(words) - 1))


def test_nm_pack_cutlass_reports_the_first_bad_group():
    values, indices = ops.nm_compress(exact_2_4(40, 64, torch.float16), 2, 4)
    indices[33, 20:22] = torch.tensor([2, 2], dtype=torch.uint8)
    indices[35, 0] = 9
    with pytest.raises(IndexError, match=r"sparseflow.nm_pack_cutlass: indices of row 33, group 10 .* are \[2, 2\]"):
        ops.nm_pack_cutlass(values, indices)


# ------------------------------------------------- layouts against CUTLASS's own code (host, needs nvcc)

ROOT = Path(__file__).resolve().parents[1]


def _nvcc():
    found = shutil.which("nvcc") or next(
        (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc",
                          Path("/usr/local/cuda-13.0/bin/nvcc")) if p.exists()), None)
    return found


@pytest.fixture(scope="session")
def cutlass_meta_layouts(tmp_path_factory):
    """Builds tests/cutlass/meta_layouts.cu (host code over CUTLASS's headers, from the committed wheel)."""
    nvcc = _nvcc()
    wheels = sorted((ROOT / "third_party" / "cutlass").glob("nvidia_cutlass-*.whl"))
    if nvcc is None or not wheels:
        pytest.skip("needs nvcc and third_party/cutlass/*.whl")
    tmp = tmp_path_factory.mktemp("cutlass")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(tmp, [n for n in wheel.namelist() if n.startswith(("cutlass_library/source/include/",
                                                                            "cutlass_library/source/tools/util/include/"))])
    source = tmp / "cutlass_library" / "source"
    exe = tmp / "meta_layouts"
    subprocess.run([nvcc, "-std=c++17", "-O1", "-w", f"-I{source / 'include'}", f"-I{source / 'tools/util/include'}",
                    "-o", str(exe), str(ROOT / "tests" / "cutlass" / "meta_layouts.cu")], check=True, timeout=600,
                   env=toolchain_env())

    def run(target, rows, cols):
        out = subprocess.run([str(exe), str(target), str(rows), str(cols)], check=True, capture_output=True,
                             text=True, env=toolchain_env()).stdout
        return torch.tensor([int(v) for v in out.split()]).view(-1, 3)

    return run


@pytest.mark.parametrize("rows,cols", [(32, 64), (64, 128), (96, 320)])
def test_target80_offsets_are_cutlass_reorder_meta(cutlass_meta_layouts, rows, cols):
    placed = cutlass_meta_layouts(80, rows, cols)  # (row, word, offset) for every metadata word
    assert placed.shape[0] == rows * cols // 16
    ours = ref.cutlass_meta_offsets(rows, cols // 16)
    assert torch.equal(ours[placed[:, 0], placed[:, 1]], placed[:, 2])


@pytest.mark.parametrize("rows,cols", [(64, 128), (128, 384), (192, 256)])
def test_target90_offsets_are_cutlass_fill_layout_e(cutlass_meta_layouts, rows, cols):
    placed = cutlass_meta_layouts(90, rows, cols)  # (row, column, logical offset) for every group
    assert placed.shape[0] == rows * cols // 4
    ours = ref.cutlass_sm90_meta_offsets(rows, cols)
    assert torch.equal(ours[placed[:, 0], placed[:, 1]], placed[:, 2])


def decode_target90(packed_values, packed_meta, rows, cols):
    """Dense [rows, cols] from the target-90 operands, reading each group's code where CUTLASS's layout puts it."""
    rows_p, cols_p = packed_meta.shape[0], packed_meta.shape[1] * 8
    offsets = ref.cutlass_sm90_meta_offsets(rows_p, cols_p)[:, 0::4]  # each group's first column
    flat = packed_meta.reshape(-1).long()
    codes = (flat[offsets // 8] >> (4 * (offsets // 4 % 2))) & 0xF
    positions = torch.stack([codes & 3, codes >> 2], -1)  # [rows_p, cols_p/4, 2]
    values = torch.zeros(rows_p, cols_p // 2, dtype=packed_values.dtype)  # values rows stop at cols rounded to 16
    values[:, : packed_values.shape[1]] = packed_values
    dense = torch.zeros(rows_p, cols_p // 4, 4, dtype=packed_values.dtype)
    dense.scatter_(-1, positions, values.reshape(rows_p, cols_p // 4, 2))
    return dense.reshape(rows_p, cols_p)[:rows, :cols], positions


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows,cols,fill", [(1, 4, 1.0), (65, 136, 0.6), (128, 256, 1.0), (8, 1000, 0.3)])
def test_target90_decodes_to_the_dense_matrix(dtype, rows, cols, fill):
    dense = random_nm_dense(rows, cols, 2, 4, dtype, seed=rows + cols, fill=fill)
    packed_values, packed_meta = ops.nm_pack_cutlass(*ops.nm_compress(dense, 2, 4), target=90)
    rows_p, cols_p = -(-rows // 64) * 64, -(-cols // 128) * 128
    assert packed_values.shape == (rows_p, -(-cols // 16) * 8) and packed_meta.shape == (rows_p, cols_p // 8)
    assert packed_meta.dtype == torch.uint8
    decoded, positions = decode_target90(packed_values, packed_meta, rows, cols)
    assert torch.equal(decoded, dense)
    # padding: zero values at positions (0, 1), a code the hardware accepts
    padded = torch.ones(rows_p, cols_p // 4, dtype=torch.bool)
    padded[:rows, : cols // 4] = False
    assert (positions[padded] == torch.tensor([0, 1])).all()


# ------------------------------------- the decode kernel's metadata reads (nm_linear_decode.h), on the host

DECODE_HEADER = ROOT / "csrc" / "nm" / "nm_linear_decode.h"


def _decode_constant(name):
    """An integer constant of nm_linear_decode.h (the tests follow the header when it is retuned)."""
    return int(re.search(rf"\b{name} = (\d+);", DECODE_HEADER.read_text()).group(1))


DECODE_MAX_TOKENS = _decode_constant("kDecodeMaxTokens")
DECODE_SLICE_STEP = 4 * _decode_constant("kDecodeWarps")  # 16-column slices between a lane's chunks


def code_word_offsets(target, rows_p, cols_p):
    """Byte offsets [rows_p, cols_p/16] of the 16-bit code words the decode kernel reads, as its
    decode_code_word_offset computes them from the packers' index math."""
    if target == 80:
        return 2 * ref.cutlass_meta_offsets(rows_p, cols_p // 16)
    return ref.cutlass_sm90_meta_offsets(rows_p, cols_p)[:, 0::16] // 8


def decode_like_the_kernel(packed_values, packed_meta, rows, cols, target):
    """Dense [rows, cols] read the way the decode kernel reads it: per 16-column slice, 8 values and one
    little-endian 16-bit word holding group q of the slice in nibble q."""
    rows_p, cols_p = packed_meta.shape[0], packed_meta.shape[1] * (16 if target == 80 else 8)
    offsets = code_word_offsets(target, rows_p, cols_p)[:, : cols // 16]
    raw = packed_meta.contiguous().view(torch.uint8).reshape(-1).long()
    words = raw[offsets] | raw[offsets + 1] << 8  # [rows_p, slices]
    codes = (words.unsqueeze(-1) >> (4 * torch.arange(4))) & 0xF  # [rows_p, slices, 4 groups]
    positions = torch.stack([codes & 3, codes >> 2], -1).reshape(rows_p, cols // 4, 2)
    values = packed_values[:, : cols // 2].reshape(rows_p, cols // 4, 2)
    dense = torch.zeros(rows_p, cols // 4, 4, dtype=packed_values.dtype)
    dense.scatter_(-1, positions, values)
    return dense.reshape(rows_p, cols)[:rows]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("target,rows,cols", [(80, 1003, 256), (80, 40, 64), (90, 1000, 208), (90, 64, 1040)])
def test_decode_kernel_reads_both_layouts(dtype, target, rows, cols):
    dense = random_nm_dense(rows, cols, 2, 4, dtype, seed=rows + cols, fill=0.7)
    packed_values, packed_meta = ops.nm_pack_cutlass(*ops.nm_compress(dense, 2, 4), target=target)
    assert packed_values.shape[1] == cols // 2  # rows of in_features / 2 values, as the kernel assumes
    assert torch.equal(decode_like_the_kernel(packed_values, packed_meta, rows, cols, target), dense)


@pytest.mark.parametrize("target", [80, 90])
def test_decode_kernel_metadata_offsets_are_affine_across_chunks(target):
    """The kernel evaluates the offset of a lane's first two chunks and steps by their difference."""
    rows_p, cols_p = 128, 16 * DECODE_SLICE_STEP * 4
    offsets = code_word_offsets(target, rows_p, cols_p)
    first, step = offsets[:, :DECODE_SLICE_STEP], offsets[:, DECODE_SLICE_STEP : 2 * DECODE_SLICE_STEP] - offsets[:, :DECODE_SLICE_STEP]
    for j in range(4):
        assert torch.equal(offsets[:, j * DECODE_SLICE_STEP : (j + 1) * DECODE_SLICE_STEP], first + j * step)
    assert (offsets % 2 == 0).all()  # aligned 16-bit loads


# ------------------------------------------------------------------------------- fakes on device "cuda"

def _fake_cuda_inputs(tokens_shape, out_features, in_features, dtype=torch.float16):
    x = torch.empty(*tokens_shape, in_features, dtype=dtype, device="cuda")
    values = torch.empty(out_features, in_features // 2, dtype=dtype, device="cuda")
    indices = torch.empty(out_features, in_features // 2, dtype=torch.uint8, device="cuda")
    return x, values, indices


# row, metadata-column and values-column padding, metadata dtype, dense columns per metadata element
LAYOUTS = {80: (32, 64, 64, torch.int16, 16), 90: (64, 128, 16, torch.uint8, 8)}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("out_features,in_features", [(1, 64), (100, 128), (4096, 576)])
def test_fake_shapes_on_cuda(dtype, out_features, in_features):
    with FakeTensorMode():
        x, values, indices = _fake_cuda_inputs((2, 3), out_features, in_features, dtype)
        for target in (80, 90):
            pv, pm = torch.ops.sparseflow.nm_pack_cutlass(values, indices, 2, 4, target)
            row_align, col_align, values_align, meta_dtype, per_meta = LAYOUTS[target]
            rows_p, cols_p = -(-out_features // row_align) * row_align, -(-in_features // col_align) * col_align
            values_cols = -(-in_features // values_align) * values_align
            assert pv.shape == (rows_p, values_cols // 2) and pv.dtype == dtype and pv.device.type == "cuda"
            assert pm.shape == (rows_p, cols_p // per_meta) and pm.dtype == meta_dtype
            bias = torch.empty(out_features, dtype=dtype, device="cuda")
            if target == 90 and out_features % 8:
                with pytest.raises(ValueError, match=r"out_features of 8 \(TMA\)"):
                    torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features)
                continue
            y = torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features, bias, None, "gelu")
            assert y.shape == (2, 3, out_features) and y.dtype == dtype and y.device.type == "cuda"
            y32 = torch.ops.sparseflow.nm_linear(x[0, 0], pv, pm, 2, 4, out_features, in_features,
                                                 out_dtype=torch.float32)
            assert y32.shape == (out_features,) and y32.dtype == torch.float32
        # nm_pack: the target this machine's GPU gets (80 without a GPU or off sm90).
        pv, pm = torch.ops.sparseflow.nm_pack(values, indices, 2, 4)
        target = _meta.nm_cuda_pack_target(values.device, out_features, in_features)
        assert pm.dtype == LAYOUTS[target][3] and pv.shape[0] % LAYOUTS[target][0] == 0


def _bad_linear_calls():
    """(description, kwargs overrides, exception, message regex): nm_linear's argument checks on CUDA (the
    C++ wrapper names dtypes as c10 does, "Half"; the fake as torch does, "float16")."""
    dtype = torch.float16
    return [
        ("n:m", dict(n=4, m=8), ValueError, r"sparseflow.nm_linear: on CUDA only 2:4 is supported"),
        ("x dtype", dict(x=lambda t: t["x"].float()), TypeError, r"x must have dtype (Half, BFloat16|float16, bfloat16), got (Float|float32)"),
        ("values dtype", dict(pv=lambda t: t["pv"].bfloat16()), TypeError, r"packed_values must have the dtype of x"),
        ("meta dtype", dict(pm=lambda t: t["pm"].int()), TypeError, r"packed_meta must have dtype (Short, Byte|int16, uint8), got (Int|int32)"),
        ("x width", dict(in_features=192), ValueError, r"x must be \[..., in_features\] with in_features=192"),
        ("values shape", dict(out_features=200), ValueError, r"packed_values must be \[224, 64\]"),
        ("meta shape", dict(pm=lambda t: t["pm"][:, :4]), ValueError, r"packed_meta must be \[128, 8\]"),
        ("out_dtype", dict(out_dtype=torch.bfloat16), TypeError, r"out_dtype must be the dtype of x .* or float32"),
        ("bias dtype", dict(bias=lambda t: torch.empty(100, dtype=torch.float64, device="cuda")), TypeError,
         r"bias must have the dtype of x .* or (Float|float32)"),
        ("bias shape", dict(bias=lambda t: torch.empty(99, dtype=dtype, device="cuda")), ValueError, r"bias must be \[100\]"),
        ("weight_scale", dict(weight_scale=lambda t: torch.ones(100, device="cuda")), ValueError,
         r"weight_scale is only for int8 packed_values"),
        ("activation", dict(activation="tanh"), ValueError, r"activation must be one of none, relu, gelu, silu, got 'tanh'"),
        ("negative size", dict(out_features=-1), ValueError, r"out_features and in_features must be >= 0"),
    ]


def _call_linear(x, pv, pm, overrides):
    t = {"x": x, "pv": pv, "pm": pm}
    args = dict(n=2, m=4, out_features=100, in_features=128, bias=None, weight_scale=None, activation="none",
                out_dtype=None)
    for k, v in overrides.items():
        if k in t:
            t[k] = v(t)
        else:
            args[k] = v(t) if callable(v) else v
    return torch.ops.sparseflow.nm_linear(t["x"], t["pv"], t["pm"], args["n"], args["m"], args["out_features"],
                                          args["in_features"], args["bias"], args["weight_scale"], args["activation"],
                                          args["out_dtype"])


@pytest.mark.parametrize("case", _bad_linear_calls(), ids=lambda c: c[0])
def test_fake_linear_rejects_bad_arguments(case):
    _, overrides, error, match = case
    with FakeTensorMode():
        x, values, indices = _fake_cuda_inputs((5,), 100, 128)
        pv, pm = torch.ops.sparseflow.nm_pack(values, indices, 2, 4)
        with pytest.raises(error, match=match):
            _call_linear(x, pv, pm, overrides)


def test_fake_linear_rejects_sizes_the_layouts_cannot_run():
    with FakeTensorMode():
        x, values, indices = _fake_cuda_inputs((5,), 64, 96)
        pv, pm = torch.ops.sparseflow.nm_pack_cutlass(values, indices, 2, 4, 80)
        with pytest.raises(ValueError, match=r"on CUDA in_features must be a multiple of 64 .*, got 96"):
            torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, 64, 96)
        x, values, indices = _fake_cuda_inputs((5,), 64, 72)
        pv, pm = torch.ops.sparseflow.nm_pack_cutlass(values, indices, 2, 4, 90)
        with pytest.raises(ValueError, match=r"packed for sm90 .* multiple of 16 and out_features of 8 \(TMA\), got 72 and 64"):
            torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, 64, 72)


def test_fake_pack_rejects_other_patterns_on_cuda():
    with FakeTensorMode():
        values = torch.empty(8, 8, dtype=torch.float16, device="cuda")
        indices = torch.empty(8, 8, dtype=torch.uint8, device="cuda")
        with pytest.raises(ValueError, match=r"sparseflow.nm_pack: on CUDA only 2:4 is supported .* got n:m = 4:8"):
            torch.ops.sparseflow.nm_pack(values, indices, 4, 8)
        with pytest.raises(TypeError, match=r"sparseflow.nm_pack: values must have dtype"):
            torch.ops.sparseflow.nm_pack(values.float(), indices, 2, 4)


# ------------------------------------------------------------------------------------------------ GPU

ACTIVATIONS = {"none": lambda t: t, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu}


def _reference_and_torch(x, w, bias, activation, out_dtype):
    """(fp64 reference, torch's low-precision result) of act(x @ w^T + bias)."""
    act = ACTIVATIONS[activation]
    y64 = F.linear(x.double(), w.double())
    y_lp = F.linear(x, w)
    if bias is not None:
        y64 = y64 + bias.double()
        y_lp = y_lp + bias.to(x.dtype)
    return act(y64), act(y_lp).to(out_dtype)


def assert_flash_rule(actual, y64, y_torch):
    """FlashAttention's rule: our error against fp64 at most twice torch's own low-precision error."""
    assert actual.shape == y64.shape
    if actual.numel() == 0:
        return
    err = (actual.double() - y64).abs().max().item()
    torch_err = (y_torch.double() - y64).abs().max().item()
    floor = 1e-6 * max(1.0, y64.abs().max().item())
    assert err <= 2 * torch_err + floor, f"max error {err:.3g} > 2 x torch's {torch_err:.3g}"


def _gpu_sm():
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _packed_weight(out_features, in_features, dtype, seed=0, fill=1.0, target=None):
    """(dense weight, packed) with nm_pack (target None: the GPU's choice) or nm_pack_cutlass(target)."""
    w = random_nm_dense(out_features, in_features, 2, 4, dtype, "cuda", seed=seed, fill=fill) / in_features**0.5
    values, indices = ops.nm_compress(w, 2, 4)
    if target is None:
        return w, torch.ops.sparseflow.nm_pack(values, indices, 2, 4)
    return w, ops.nm_pack_cutlass(values, indices, target=target)


def _skip_unless_runnable(target, out_features, in_features):
    """Which kernel runs: target 80 (CUTLASS 2.x, in % 64) everywhere, 90 (CUTLASS 3.x, out % 8, in % 16) on sm90."""
    if target == 90 and (_gpu_sm() != 90 or "90a" not in sparseflow.BUILD_INFO["cuda_archs"].split(";")):
        pytest.skip("the target-90 kernels run on sm90 (H100/H200) only")
    if target == 90 and (out_features % 8 or in_features % 16):
        pytest.skip("target 90 needs out_features % 8 == 0 and in_features % 16 == 0")
    if target in (None, 80) and in_features % 64 and not (target is None and _meta.nm_cuda_pack_target(
            torch.device("cuda"), out_features, in_features) == 90):
        pytest.skip("target 80 needs in_features % 64 == 0")


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows,cols,fill", [(1, 4, 1.0), (33, 68, 0.6), (100, 576, 1.0), (4096, 128, 0.5)])
@pytest.mark.parametrize("target", [80, 90])
def test_gpu_pack_equals_host_pack(dtype, rows, cols, fill, target):
    values, indices = ops.nm_compress(random_nm_dense(rows, cols, 2, 4, dtype, seed=rows, fill=fill), 2, 4)
    host = ops.nm_pack_cutlass(values, indices, target=target)
    device = ops.nm_pack_cutlass(values.cuda(), indices.cuda(), target=target)
    assert torch.equal(device[0].cpu(), host[0]) and torch.equal(device[1].cpu(), host[1])
    # nm_pack picks the target of this GPU and gives the same bytes as nm_pack_cutlass for it
    chosen = _meta.nm_cuda_pack_target(torch.device("cuda"), rows, cols)
    packed = torch.ops.sparseflow.nm_pack(values.cuda(), indices.cuda(), 2, 4)
    expected = ops.nm_pack_cutlass(values, indices, target=chosen)
    assert torch.equal(packed[0].cpu(), expected[0]) and torch.equal(packed[1].cpu(), expected[1])
    assert chosen == (90 if _gpu_sm() == 90 and rows % 8 == 0 and cols % 16 == 0
                      and "90a" in sparseflow.BUILD_INFO["cuda_archs"].split(";") else 80)


@gpu
def test_gpu_pack_reports_the_first_bad_group():
    values, indices = ops.nm_compress(exact_2_4(64, 64, torch.bfloat16, device="cuda"), 2, 4)
    indices[40, 6:8] = torch.tensor([1, 0], dtype=torch.uint8, device="cuda")
    indices[63, 1] = 7
    with pytest.raises(IndexError, match=r"sparseflow.nm_pack: indices of row 40, group 3 .* are \[1, 0\]"):
        torch.ops.sparseflow.nm_pack(values, indices, 2, 4)
    with pytest.raises(IndexError, match=r"sparseflow.nm_pack_cutlass: indices of row 40, group 3"):
        ops.nm_pack_cutlass(values, indices, target=90)


# tokens and out_features pick the kernel (tokens <= 16: the decode kernel, nm_linear_decode.h) and the tile
# configuration (csrc/nm/nm_linear_configs.h): cover every one, with ragged edges (tokens not a multiple of
# the N tile, out_features not a multiple of the M tile).
LINEAR_SHAPES = [(1, 32, 64), (3, 100, 128), (16, 4096, 576), (17, 64, 64), (65, 200, 192), (130, 1100, 128),
                 (333, 2048, 256), (7, 64, 80), (300, 1032, 144)]


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("tokens,out_features,in_features", LINEAR_SHAPES)
@pytest.mark.parametrize("target", [None, 80, 90])
def test_gpu_linear_matches_fp64(dtype, tokens, out_features, in_features, target):
    _skip_unless_runnable(target, out_features, in_features)
    w, (pv, pm) = _packed_weight(out_features, in_features, dtype, seed=tokens, target=target)
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    y = torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features)
    assert y.dtype == dtype and y.is_contiguous()
    assert_flash_rule(y, *_reference_and_torch(x, w, None, "none", dtype))


def _check_epilogue(out_features, in_features, dtype, activation, bias_dtype, out_float, tokens, target, **weight):
    """nm_linear with one epilogue (bias in x's dtype / fp32 / none, activation, fp32 or x-dtype output) against
    the reference, by the FlashAttention rule."""
    w, (pv, pm) = _packed_weight(out_features, in_features, dtype, target=target, **weight)
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    bias = None if bias_dtype is None else torch.randn(out_features, device="cuda").to(
        dtype if bias_dtype == "x" else torch.float32)
    out_dtype = torch.float32 if out_float else dtype
    y = torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features, bias, None, activation,
                                       torch.float32 if out_float else None)
    assert y.dtype == out_dtype
    assert_flash_rule(y, *_reference_and_torch(x, w, bias, activation, out_dtype))


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("bias_dtype,out_float", [("x", False), ("x", True), ("float32", False), (None, True),
                                                  (None, False)])
@pytest.mark.parametrize("tokens", [5, 300])
@pytest.mark.parametrize("target", [80, 90])
def test_gpu_linear_epilogues(dtype, activation, bias_dtype, out_float, tokens, target):
    out_features, in_features = 1104, 256
    _skip_unless_runnable(target, out_features, in_features)
    _check_epilogue(out_features, in_features, dtype, activation, bias_dtype, out_float, tokens, target, seed=7,
                    fill=0.8)


@gpu
def test_gpu_linear_refuses_a_layout_this_gpu_cannot_run():
    _, (pv, pm) = _packed_weight(64, 128, torch.float16, target=90)
    x = torch.randn(3, 128, dtype=torch.float16, device="cuda")
    if _gpu_sm() == 90 and "90a" in sparseflow.BUILD_INFO["cuda_archs"].split(";"):
        assert torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, 64, 128).shape == (3, 64)
    else:
        with pytest.raises(ValueError, match=r"packed_meta is uint8, the layout of the sm90a kernels .* re-pack"):
            torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, 64, 128)


@gpu
def test_gpu_linear_strided_and_batched_inputs():
    dtype, out_features, in_features = torch.float16, 96, 128
    w, (pv, pm) = _packed_weight(out_features, in_features, dtype, seed=3)
    wide = torch.randn(7, 2 * in_features, dtype=dtype, device="cuda")
    cases = {
        "row slice (used in place)": wide[:, in_features:],
        "odd offset (copied)": wide[:, 1:in_features + 1],
        "column-major (copied)": torch.randn(in_features, 7, dtype=dtype, device="cuda").t(),
        "3-D": torch.randn(2, 5, in_features, dtype=dtype, device="cuda"),
        "1-D": torch.randn(in_features, dtype=dtype, device="cuda"),
        "one token with any stride": wide[2:3, :in_features],
    }
    bias = torch.randn(2 * out_features, dtype=dtype, device="cuda")[::2]  # a strided bias
    for name, x in cases.items():
        before = x.clone()
        y = torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features, bias)
        assert y.shape == (*x.shape[:-1], out_features), name
        y64, y_torch = _reference_and_torch(x.reshape(-1, in_features), w, bias, "none", dtype)
        assert_flash_rule(y.reshape(-1, out_features), y64, y_torch)
        assert torch.equal(x, before), f"{name}: input modified"


@gpu
def test_gpu_linear_empty_and_k_zero():
    dtype = torch.bfloat16
    _, (pv, pm) = _packed_weight(40, 64, dtype)
    assert torch.ops.sparseflow.nm_linear(torch.empty(0, 64, dtype=dtype, device="cuda"), pv, pm, 2, 4, 40, 64).shape == (0, 40)
    _, (pv0, pm0) = _packed_weight(0, 64, dtype)
    assert torch.ops.sparseflow.nm_linear(torch.ones(3, 64, dtype=dtype, device="cuda"), pv0, pm0, 2, 4, 0, 64).shape == (3, 0)
    # in_features = 0: y = act(bias) for every token.
    pvk, pmk = torch.ops.sparseflow.nm_pack(torch.empty(40, 0, dtype=dtype, device="cuda"),
                                            torch.empty(40, 0, dtype=torch.uint8, device="cuda"), 2, 4)
    bias = torch.randn(40, dtype=dtype, device="cuda")
    y = torch.ops.sparseflow.nm_linear(torch.empty(3, 0, dtype=dtype, device="cuda"), pvk, pmk, 2, 4, 40, 0, bias,
                                       None, "relu")
    assert torch.equal(y, torch.relu(bias).expand(3, 40))


@gpu
@pytest.mark.parametrize("case", _bad_linear_calls(), ids=lambda c: c[0])
def test_gpu_linear_rejects_bad_arguments(case):
    _, overrides, error, match = case
    _, (pv, pm) = _packed_weight(100, 128, torch.float16)
    x = torch.randn(5, 128, dtype=torch.float16, device="cuda")
    with pytest.raises(error, match=match):
        _call_linear(x, pv, pm, overrides)


@gpu
def test_gpu_linear_rejects_in_features_off_the_k_tile_and_cpu_tensors():
    _, (pv, pm) = _packed_weight(64, 96, torch.float16, target=80)
    x = torch.randn(2, 96, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match=r"on CUDA in_features must be a multiple of 64 .*, got 96"):
        torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, 64, 96)
    _, (pv, pm) = _packed_weight(64, 128, torch.float16)
    with pytest.raises(ValueError, match=r"x and packed_values must be on the same device"):
        torch.ops.sparseflow.nm_linear(x.new_zeros(2, 128), pv.cpu(), pm, 2, 4, 64, 128)


@gpu
def test_gpu_opcheck():
    dtype = torch.float16
    values, indices = ops.nm_compress(random_nm_dense(33, 128, 2, 4, dtype, "cuda", fill=0.7), 2, 4)
    torch.library.opcheck(torch.ops.sparseflow.nm_pack.default, (values, indices, 2, 4))
    torch.library.opcheck(torch.ops.sparseflow.nm_pack_cutlass.default, (values, indices, 2, 4, 80))
    pv, pm = torch.ops.sparseflow.nm_pack(values, indices, 2, 4)
    x = torch.randn(3, 5, 128, dtype=dtype, device="cuda")
    bias = torch.randn(33, device="cuda")
    torch.library.opcheck(torch.ops.sparseflow.nm_linear.default, (x, pv, pm, 2, 4, 33, 128),
                          {"bias": bias, "activation": "silu", "out_dtype": torch.float32})
    torch.library.opcheck(torch.ops.sparseflow.nm_linear.default, (x[0], pv, pm, 2, 4, 33, 128))
    values, indices = ops.nm_compress(random_nm_dense(40, 128, 2, 4, dtype, "cuda"), 2, 4)
    torch.library.opcheck(torch.ops.sparseflow.nm_pack_cutlass.default, (values, indices, 2, 4, 90))
    if _gpu_sm() == 90 and "90a" in sparseflow.BUILD_INFO["cuda_archs"].split(";"):
        pv, pm = ops.nm_pack_cutlass(values, indices, target=90)
        torch.library.opcheck(torch.ops.sparseflow.nm_linear.default, (x, pv, pm, 2, 4, 40, 128),
                              {"bias": bias[:8].repeat(5), "activation": "relu"})


# The decode kernel (tokens <= DECODE_MAX_TOKENS) and the CUTLASS GEMMs just above it, on shapes that are ragged
# for the decode kernel: out_features not a multiple of its 16-row CTAs, in_features not a multiple of its
# 64-column chunks (target 90 only: target 80 needs in % 64) nor of the 128-column metadata atoms.
DECODE_SHAPES = {80: [(1003, 256), (40, 64)], 90: [(1000, 208), (8, 1040)]}
DECODE_TOKENS = sorted({1, 3, 8, 9, DECODE_MAX_TOKENS, DECODE_MAX_TOKENS + 1})


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("tokens", DECODE_TOKENS)
@pytest.mark.parametrize("shape", [0, 1])
@pytest.mark.parametrize("target", [80, 90])
def test_gpu_decode_matches_fp64(dtype, tokens, shape, target):
    out_features, in_features = DECODE_SHAPES[target][shape]
    _skip_unless_runnable(target, out_features, in_features)
    w, (pv, pm) = _packed_weight(out_features, in_features, dtype, seed=tokens + shape, fill=0.8, target=target)
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    y = torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features)
    assert y.dtype == dtype and y.shape == (tokens, out_features)
    assert_flash_rule(y, *_reference_and_torch(x, w, None, "none", dtype))


@gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("bias_dtype,out_float", [("x", False), ("x", True), ("float32", False), (None, True)])
@pytest.mark.parametrize("tokens", [1, DECODE_MAX_TOKENS, DECODE_MAX_TOKENS + 1])
@pytest.mark.parametrize("target", [80, 90])
def test_gpu_decode_epilogues(dtype, activation, bias_dtype, out_float, tokens, target):
    out_features, in_features = DECODE_SHAPES[target][0]
    _skip_unless_runnable(target, out_features, in_features)
    _check_epilogue(out_features, in_features, dtype, activation, bias_dtype, out_float, tokens, target, seed=5)


@gpu
@pytest.mark.parametrize("tokens", [1, 5, DECODE_MAX_TOKENS, DECODE_MAX_TOKENS + 1])
@pytest.mark.parametrize("target", [80, 90])
def test_gpu_decode_strided_x(tokens, target):
    """Row-strided x (used in place), x from a transposed tensor (copied), and a 3-D x, either side of the threshold."""
    dtype = torch.float16
    out_features, in_features = DECODE_SHAPES[target][0]
    _skip_unless_runnable(target, out_features, in_features)
    w, (pv, pm) = _packed_weight(out_features, in_features, dtype, seed=13, target=target)
    wide = torch.randn(tokens, 3 * in_features, dtype=dtype, device="cuda")
    cases = [wide[:, in_features : 2 * in_features], torch.randn(in_features, tokens, dtype=dtype, device="cuda").t(),
             torch.randn(1, tokens, in_features, dtype=dtype, device="cuda")]
    for x in cases:
        y = torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features)
        assert y.shape == (*x.shape[:-1], out_features)
        y64, y_torch = _reference_and_torch(x.reshape(-1, in_features), w, None, "none", dtype)
        assert_flash_rule(y.reshape(-1, out_features), y64, y_torch)


@gpu
@pytest.mark.parametrize("tokens", [DECODE_MAX_TOKENS, DECODE_MAX_TOKENS + 1])  # decode kernel, CUTLASS
@pytest.mark.parametrize("target", [80, 90])
def test_gpu_linear_cuda_graph_capture(target, tokens):
    dtype, out_features, in_features = torch.bfloat16, 256, 512
    _skip_unless_runnable(target, out_features, in_features)
    w, (pv, pm) = _packed_weight(out_features, in_features, dtype, seed=11, target=target)
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    bias = torch.randn(out_features, dtype=dtype, device="cuda")

    def step():
        return torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features, bias, None, "gelu")

    y = capture_and_replay(step, x)
    assert_flash_rule(y, *_reference_and_torch(x, w, bias, "gelu", dtype))


@gpu
def test_gpu_linear_runs_on_a_non_default_stream_and_device_guard():
    dtype = torch.float16
    w, (pv, pm) = _packed_weight(64, 128, dtype)
    x = torch.randn(9, 128, dtype=dtype, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, 64, 128)
    stream.synchronize()
    assert_flash_rule(y, *_reference_and_torch(x, w, None, "none", dtype))
