"""Fake (meta) kernels for every sparseflow op, and clear errors where a device has no kernel.

Fakes compute output shapes and dtypes only; they repeat the cheap shape checks of the C++ wrappers so
that torch.compile and FakeTensorMode reject bad input with the same exception types. Value checks
(the N:M pattern, index ranges) need data and stay in the real kernels.
"""

from __future__ import annotations

import torch

from . import _loader

_PACK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.float8_e4m3fn)

# Ops that have no compiled CUDA kernel in this process, each with the reason (see register_cuda_fallbacks).
CUDA_FALLBACKS: dict[str, str] = {}


def _check_n_m(op: str, n: int, m: int) -> None:
    if not 1 <= m <= 64:
        raise ValueError(f"{op}: m must be in [1, 64], got m={m}")
    if not 1 <= n <= m:
        raise ValueError(f"{op}: n must be in [1, m] (n:m keeps n of every m), got n={n}, m={m}")


def _check_dtype(op: str, arg: str, t: torch.Tensor, allowed) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{op}: {arg} must have dtype {names}, got {str(t.dtype).removeprefix('torch.')}")


def _check_dim(op: str, arg: str, t: torch.Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"{op}: {arg} must be {dim}-D {layout}, got shape {list(t.shape)}")


@torch.library.register_fake("sparseflow::nm_compress")
def _nm_compress_fake(dense, n, m, prune=False):
    op = "sparseflow.nm_compress"
    _check_n_m(op, n, m)
    _check_dtype(op, "dense", dense, _PACK_DTYPES)
    _check_dim(op, "dense", dense, 2, "[rows, cols]")
    if dense.shape[1] % m != 0:
        raise ValueError(f"{op}: the column count of dense ({dense.shape[1]}) must be a multiple of m={m}")
    shape = (dense.shape[0], dense.shape[1] // m * n)
    return dense.new_empty(shape), dense.new_empty(shape, dtype=torch.uint8)


@torch.library.register_fake("sparseflow::nm_decompress")
def _nm_decompress_fake(values, indices, n, m):
    op = "sparseflow.nm_decompress"
    _check_n_m(op, n, m)
    _check_dtype(op, "values", values, _PACK_DTYPES)
    _check_dtype(op, "indices", indices, (torch.uint8,))
    _check_dim(op, "values", values, 2, "[rows, cols/m*n]")
    if values.shape != indices.shape:
        raise ValueError(
            f"{op}: values and indices must have the same shape, got {list(values.shape)} and {list(indices.shape)}"
        )
    if values.shape[1] % n != 0:
        raise ValueError(f"{op}: the column count of values ({values.shape[1]}) must be a multiple of n={n}")
    return values.new_empty((values.shape[0], values.shape[1] // n * m))


_BSR_VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.int8)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_same_device(op: str, arg: str, t: torch.Tensor, others: dict) -> None:
    for name, o in others.items():
        if o is not None and o.device != t.device:
            raise ValueError(f"{op}: {arg} and {name} must be on the same device, got {t.device} and {o.device}")


@torch.library.register_fake("sparseflow::bsr_pack")
def _bsr_pack_fake(crow, col, values, out_features, in_features, kernel="auto"):
    if values.device.type == "cuda":
        return bsr_pack_fake_cuda(crow, col, values, out_features, in_features, kernel)
    op = "sparseflow.bsr_pack"
    _check_dtype(op, "crow", crow, (torch.int32,))
    _check_dtype(op, "col", col, (torch.int32,))
    _check_dtype(op, "values", values, _BSR_VALUE_DTYPES)
    _check_dim(op, "crow", crow, 1, "[out_features/R + 1]")
    _check_dim(op, "col", col, 1, "[nnz_blocks]")
    _check_dim(op, "values", values, 3, "[nnz_blocks, R, C]")
    _check_same_device(op, "crow", crow, {"col": col, "values": values})
    if out_features < 0 or not 0 <= in_features <= 65536:
        raise ValueError(f"{op}: out_features must be >= 0 and in_features in [0, 65536], got {out_features}, {in_features}")
    _, R, C = values.shape
    if R < 1 or C < 1:
        raise ValueError(f"{op}: values must hold R x C blocks with R, C >= 1, got shape {list(values.shape)}")
    if crow.shape[0] != _ceil_div(out_features, R) + 1:
        raise ValueError(f"{op}: crow must have ceil(out_features/R) + 1 = {_ceil_div(out_features, R) + 1} entries")
    if col.shape[0] != values.shape[0]:
        raise ValueError(f"{op}: col and values must describe the same blocks")
    is_int8 = values.dtype == torch.int8
    if kernel not in ("auto", "4x1", "16x1", "1x16"):
        raise ValueError(f"{op}: kernel must be 'auto', '4x1', '16x1' or '1x16', got {kernel!r}")
    if kernel == "1x16" and is_int8:
        raise ValueError(f"{op}: int8 weights use kernel '4x1' or '16x1' (or 'auto'), got {kernel!r}")
    if is_int8:
        rows = 16 if kernel == "16x1" or (kernel == "auto" and R % 16 == 0) else 4
    elif kernel == "auto":  # (csrc/bsr/bsr_common.h, check_pack_args)
        rows = 1 if C > R else 4 if R % 16 else 16
    else:
        rows = {"4x1": 4, "16x1": 16, "1x16": 1}[kernel]
    tiled = is_int8 or rows == 4  # [blocks / 4, rows, 4] values
    ctx = torch.library.get_ctx()
    tiles = ctx.new_dynamic_size()
    nnz = tiles * 4 if tiled else tiles
    meta = crow.new_empty((8,), dtype=torch.int64)
    rowptr = crow.new_empty((_ceil_div(out_features, rows) + 1,))
    indices = crow.new_empty((nnz,), dtype=torch.int16)
    packed = values.new_empty((tiles, rows, 4) if tiled else (nnz, 16))
    compensation = crow.new_empty((out_features if is_int8 else 0,))
    return meta, rowptr, indices, packed, compensation


@torch.library.register_fake("sparseflow::bsr_linear")
def _bsr_linear_fake(x, meta, rowptr, indices, packed_values, compensation, out_features, in_features,
                     bias=None, weight_scale=None, activation="none", out_dtype=None):
    if x.device.type == "cuda":
        return bsr_linear_fake_cuda(x, meta, rowptr, indices, packed_values, compensation, out_features, in_features,
                                    bias, weight_scale, activation, out_dtype)
    op = "sparseflow.bsr_linear"
    _check_dtype(op, "meta", meta, (torch.int64,))
    _check_dtype(op, "x", x, (torch.float32, torch.bfloat16))
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"{op}: x must have shape [..., in_features={in_features}], got {list(x.shape)}")
    _check_dtype(op, "packed_values", packed_values, _BSR_VALUE_DTYPES)
    is_int8 = packed_values.dtype == torch.int8
    if not is_int8 and x.dtype != packed_values.dtype:
        raise TypeError(f"{op}: x must have the weight's dtype {packed_values.dtype}, got {x.dtype}")
    _check_dtype(op, "rowptr", rowptr, (torch.int32,))
    _check_dtype(op, "indices", indices, (torch.int16,))
    _check_dtype(op, "compensation", compensation, (torch.int32,))
    _check_same_device(op, "x", x, {"rowptr": rowptr, "indices": indices, "packed_values": packed_values,
                                     "compensation": compensation, "bias": bias, "weight_scale": weight_scale})
    allowed = (torch.float32, torch.bfloat16) + ((torch.int32,) if is_int8 else ())
    if out_dtype is not None and out_dtype not in allowed:
        raise TypeError(f"{op}: out_dtype must be float32 or bfloat16 (int32 for int8 weights), got {out_dtype}")
    if activation not in ("none", "relu", "gelu", "silu"):
        raise ValueError(f"{op}: activation must be 'none', 'relu', 'gelu' or 'silu', got {activation!r}")
    if out_dtype == torch.int32 and (bias is not None or activation != "none"):
        raise ValueError(f"{op}: out_dtype=int32 returns the raw int32 accumulator; bias and activation must be unset")
    if bias is not None:
        _check_dtype(op, "bias", bias, (torch.float32, x.dtype))
        if bias.shape != (out_features,):
            raise ValueError(f"{op}: bias must have shape [{out_features}], got {list(bias.shape)}")
    if is_int8 and weight_scale is None and out_dtype != torch.int32:
        raise ValueError(f"{op}: int8 weights need weight_scale (per-output-channel fp32 scales) to dequantize")
    if not is_int8 and weight_scale is not None:
        raise ValueError(f"{op}: weight_scale applies to int8 weights only")
    if weight_scale is not None:
        _check_dtype(op, "weight_scale", weight_scale, (torch.float32,))
        if weight_scale.shape != (out_features,):
            raise ValueError(f"{op}: weight_scale must have shape [{out_features}], got {list(weight_scale.shape)}")
    return x.new_empty((*x.shape[:-1], out_features), dtype=out_dtype or x.dtype)


_LINEAR_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
_LINEAR_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ACTIVATIONS = ("none", "relu", "gelu", "silu")
_INT8_MAX_IN_FEATURES = 131072


def _meta_row_bytes(in_features: int) -> int:
    return (in_features + 63) // 64 * 8


@torch.library.register_fake("sparseflow::nm_pack")
def _nm_pack_fake(values, indices, n, m):
    if values.device.type == "cuda":
        return nm_pack_fake_cuda(values, indices, n, m)
    op = "sparseflow.nm_pack"
    _check_n_m(op, n, m)
    _check_dtype(op, "values", values, _LINEAR_WEIGHT_DTYPES)
    _check_dtype(op, "indices", indices, (torch.uint8,))
    _check_dim(op, "values", values, 2, "[out_features, in_features/m*n]")
    if values.shape != indices.shape:
        raise ValueError(
            f"{op}: values and indices must have the same shape, got {list(values.shape)} and {list(indices.shape)}"
        )
    if values.shape[1] % n != 0:
        raise ValueError(f"{op}: the column count of values ({values.shape[1]}) must be a multiple of n={n}")
    rows, in_features = values.shape[0], values.shape[1] // n * m
    return values.new_empty(values.shape), indices.new_empty((rows, _meta_row_bytes(in_features)))


@torch.library.register_fake("sparseflow::nm_linear")
def _nm_linear_fake(x, packed_values, packed_meta, n, m, out_features, in_features, bias=None, weight_scale=None,
                    activation="none", out_dtype=None):
    if x.device.type == "cuda":
        return nm_linear_fake_cuda(x, packed_values, packed_meta, n, m, out_features, in_features, bias,
                                   weight_scale, activation, out_dtype)
    op = "sparseflow.nm_linear"
    _check_n_m(op, n, m)
    _check_dtype(op, "packed_values", packed_values, _LINEAR_WEIGHT_DTYPES)
    _check_dtype(op, "packed_meta", packed_meta, (torch.uint8,))
    _check_dtype(op, "x", x, _LINEAR_FLOAT_DTYPES)
    int8 = packed_values.dtype == torch.int8
    if not int8 and x.dtype != packed_values.dtype:
        raise TypeError(f"{op}: x ({str(x.dtype).removeprefix('torch.')}) must have the dtype of packed_values "
                        f"({str(packed_values.dtype).removeprefix('torch.')})")
    if out_features < 0 or in_features < 0:
        raise ValueError(f"{op}: out_features and in_features must be >= 0, got {out_features} and {in_features}")
    if in_features % m:
        raise ValueError(f"{op}: in_features ({in_features}) must be a multiple of m={m}")
    if int8 and in_features > _INT8_MAX_IN_FEATURES:
        raise ValueError(f"{op}: int8 weights support in_features <= {_INT8_MAX_IN_FEATURES} (int32 accumulation)")
    if tuple(packed_values.shape) != (out_features, in_features // m * n):
        raise ValueError(f"{op}: packed_values must have shape {[out_features, in_features // m * n]}, "
                         f"got {list(packed_values.shape)}")
    if tuple(packed_meta.shape) != (out_features, _meta_row_bytes(in_features)):
        raise ValueError(f"{op}: packed_meta must have shape {[out_features, _meta_row_bytes(in_features)]} "
                         f"(the output of sparseflow.nm_pack), got {list(packed_meta.shape)}")
    if not (packed_values.is_contiguous() and packed_meta.is_contiguous()):
        raise ValueError(f"{op}: packed_values and packed_meta must be contiguous (as nm_pack returns them)")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{op}: x must be [..., in_features={in_features}], got shape {list(x.shape)}")
    if bias is not None:
        _check_dtype(op, "bias", bias, (torch.float32, x.dtype))
        if bias.dim() != 1 or bias.shape[0] != out_features:
            raise ValueError(f"{op}: bias must be [out_features={out_features}], got shape {list(bias.shape)}")
    if int8:
        if weight_scale is None:
            raise ValueError(f"{op}: int8 packed_values need weight_scale [out_features]")
        _check_dtype(op, "weight_scale", weight_scale, (torch.float32,))
        if weight_scale.dim() != 1 or weight_scale.shape[0] != out_features:
            raise ValueError(f"{op}: weight_scale must be [out_features={out_features}], got shape "
                             f"{list(weight_scale.shape)}")
    elif weight_scale is not None:
        raise ValueError(f"{op}: weight_scale is only for int8 packed_values")
    out = out_dtype or x.dtype
    if out not in _LINEAR_FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float32, bfloat16 or float16, got {str(out).removeprefix('torch.')}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of none, relu, gelu, silu, got {activation!r}")
    return x.new_empty((*x.shape[:-1], out_features), dtype=out)


# ---------------------------------------------------------------------------------------------------------
# CUDA 2:4 path: nm_pack_cutlass, and the CUDA side of nm_pack / nm_linear (the fakes above call these for
# CUDA tensors). Layouts: csrc/nm/nm_cutlass.h (targets 80 and 90).

_NM_LINEAR_ACTIVATIONS = ("none", "relu", "gelu", "silu")
# Per target: row, metadata-column and values-column padding, metadata dtype, dense columns per metadata element
# (csrc/nm/nm_cutlass.h).
_CUTLASS_LAYOUTS = {80: (32, 64, 64, torch.int16, 16), 90: (64, 128, 16, torch.uint8, 8)}
_TARGET_OF_META_DTYPE = {torch.int16: 80, torch.uint8: 90}


def _round_up(v: int, to: int) -> int:
    return (v + to - 1) // to * to


def nm_cutlass_packed_shapes(rows: int, cols: int, target: int = 80) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of (packed_values, packed_meta) of a [rows, cols] 2:4 weight in the CUTLASS layout of `target`."""
    row_align, col_align, values_align, _, cols_per_meta = _CUTLASS_LAYOUTS[target]
    rows_p, cols_p = _round_up(rows, row_align), _round_up(cols, col_align)
    return (rows_p, _round_up(cols, values_align) // 2), (rows_p, cols_p // cols_per_meta)


def nm_cuda_pack_target(device: torch.device, rows: int, cols: int) -> int:
    """The layout nm_pack produces on `device` (csrc/nm/nm_cutlass_cuda.cpp, cuda_pack_target): 90 on sm90 with
    the sm90a kernels built, rows a multiple of 8 and cols of 16; else 80. Without a GPU (fakes only): 80."""
    if not torch.cuda.is_available() or "90a" not in _loader.BUILD_INFO["cuda_archs"].split(";"):
        return 80
    index = device.index if device.index is not None else torch.cuda.current_device()
    sm90 = torch.cuda.get_device_capability(index) == (9, 0)
    return 90 if sm90 and rows % 8 == 0 and cols % 16 == 0 else 80


def _nm_cutlass_pack_checks(op: str, values, indices, n: int, m: int, target: int | None = None) -> None:
    if (n, m) != (2, 4):
        raise ValueError(f"{op}: the CUTLASS sparse tensor-core layout is 2:4 only, got n:m = {n}:{m}")
    if target is not None and target not in _CUTLASS_LAYOUTS:
        raise ValueError(f"{op}: target must be 80 (CUTLASS 2.x SparseGemm, sm80 and later) or 90 (CUTLASS 3.x, "
                         f"sm90a), got {target}")
    _check_dtype(op, "values", values, (torch.float16, torch.bfloat16))
    _check_dtype(op, "indices", indices, (torch.uint8,))
    _check_dim(op, "values", values, 2, "[rows, cols/2]")
    if values.shape != indices.shape:
        raise ValueError(
            f"{op}: values and indices must have the same shape, got {list(values.shape)} and {list(indices.shape)}"
        )
    if values.device != indices.device:
        raise ValueError(f"{op}: values and indices must be on the same device, got {values.device} and {indices.device}")
    if values.shape[1] % 2:
        raise ValueError(f"{op}: the column count of values ({values.shape[1]}) must be a multiple of n=2")


def _nm_cutlass_packed_like(values, target: int):
    vshape, mshape = nm_cutlass_packed_shapes(values.shape[0], values.shape[1] * 2, target)
    return values.new_empty(vshape), values.new_empty(mshape, dtype=_CUTLASS_LAYOUTS[target][3])


@torch.library.register_fake("sparseflow::nm_pack_cutlass")
def _nm_pack_cutlass_fake(values, indices, n, m, target=80):
    _nm_cutlass_pack_checks("sparseflow.nm_pack_cutlass", values, indices, n, m, target)
    return _nm_cutlass_packed_like(values, target)


def nm_pack_fake_cuda(values, indices, n, m):
    """nm_pack's fake for CUDA tensors: nm_pack_cutlass's layout for the target the GPU gets."""
    op = "sparseflow.nm_pack"
    if (n, m) != (2, 4):
        raise ValueError(f"{op}: on CUDA only 2:4 is supported (sparse tensor cores), got n:m = {n}:{m}")
    _nm_cutlass_pack_checks(op, values, indices, n, m)
    return _nm_cutlass_packed_like(values, nm_cuda_pack_target(values.device, values.shape[0], values.shape[1] * 2))


def nm_linear_fake_cuda(x, packed_values, packed_meta, n, m, out_features, in_features, bias=None,
                        weight_scale=None, activation="none", out_dtype=None):
    """nm_linear's fake for CUDA tensors: the checks of csrc/nm/nm_cutlass_cuda.cpp that need no data."""
    op = "sparseflow.nm_linear"
    if (n, m) != (2, 4):
        raise ValueError(f"{op}: on CUDA only 2:4 is supported (sparse tensor cores), got n:m = {n}:{m}")
    if out_features < 0 or in_features < 0:
        raise ValueError(f"{op}: out_features and in_features must be >= 0, got {out_features} and {in_features}")
    _check_dtype(op, "x", x, (torch.float16, torch.bfloat16))
    if packed_values.dtype != x.dtype:
        raise TypeError(f"{op}: packed_values must have the dtype of x ({x.dtype}), got {packed_values.dtype}")
    _check_dtype(op, "packed_meta", packed_meta, (torch.int16, torch.uint8))
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{op}: x must be [..., in_features] with in_features={in_features}, got shape {list(x.shape)}")
    target = _TARGET_OF_META_DTYPE[packed_meta.dtype]
    vshape, mshape = nm_cutlass_packed_shapes(out_features, in_features, target)
    if tuple(packed_values.shape) != vshape:
        raise ValueError(f"{op}: packed_values must be {list(vshape)} (nm_pack's target-{target} layout), got "
                         f"{list(packed_values.shape)}")
    if tuple(packed_meta.shape) != mshape:
        raise ValueError(f"{op}: packed_meta must be {list(mshape)} (nm_pack's target-{target} layout), got "
                         f"{list(packed_meta.shape)}")
    if target == 80 and in_features % 64:
        raise ValueError(f"{op}: on CUDA in_features must be a multiple of 64 (the K tile of the sm80 2:4 kernels), "
                         f"got {in_features}")
    if target == 90 and (in_features % 16 or out_features % 8):
        raise ValueError(f"{op}: weights packed for sm90 (uint8 packed_meta) need in_features a multiple of 16 and "
                         f"out_features of 8 (TMA), got {in_features} and {out_features}")
    if not (packed_values.is_contiguous() and packed_meta.is_contiguous()):
        raise ValueError(f"{op}: packed_values and packed_meta must be contiguous and 16-byte aligned, as nm_pack "
                         "returns them")
    for arg, t in (("packed_values", packed_values), ("packed_meta", packed_meta), ("bias", bias),
                   ("weight_scale", weight_scale)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: x and {arg} must be on the same device, got {x.device} and {t.device}")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if out_dtype not in (x.dtype, torch.float32):
        raise TypeError(f"{op}: out_dtype must be the dtype of x ({x.dtype}) or float32 on CUDA, got {out_dtype}")
    if bias is not None:
        if bias.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"{op}: bias must have the dtype of x ({x.dtype}) or float32, got {bias.dtype}")
        if tuple(bias.shape) != (out_features,):
            raise ValueError(f"{op}: bias must be [{out_features}], got shape {list(bias.shape)}")
    if weight_scale is not None:
        raise ValueError(f"{op}: weight_scale is only for int8 packed_values")
    if activation not in _NM_LINEAR_ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of none, relu, gelu, silu, got {activation!r}")
    return x.new_empty((*x.shape[:-1], out_features), dtype=out_dtype)


# ---------------------------------------------------------------------------------------------------------
# CUDA block-sparse path: the CUDA side of bsr_pack / bsr_linear (csrc/bsr/bsr_cuda.h), called by the fakes
# above for CUDA tensors: fp16/bf16 T x T tiles; meta stays a CPU tensor (layout id 4, T in slot 6).

_BSR_CUDA_BLOCKS = (16, 32, 64, 128)


def bsr_cuda_tile(kernel: str, R: int, C: int) -> tuple[int, bool]:
    """(T, recut) of bsr_pack on CUDA for R x C canonical blocks (csrc/bsr/bsr_cuda.cpp, cuda_tile): "auto" keeps
    square 16/32/64/128 blocks as they are and re-cuts others into 16 x 16 tiles; "TxT" re-cuts into T x T tiles
    unless the blocks already are T x T. Raises ValueError for other kernel names."""
    if kernel == "auto":
        square = R == C and R in _BSR_CUDA_BLOCKS
        return (R if square else 16), not square
    for t in _BSR_CUDA_BLOCKS:
        if kernel == f"{t}x{t}":
            return t, (R, C) != (t, t)
    raise ValueError(f"sparseflow.bsr_pack: kernel {kernel!r} is not a CUDA layout; on CUDA use 'auto', '16x16', "
                     "'32x32', '64x64' or '128x128' (the tensor-core tile the blocks are re-cut into)")


def bsr_pack_fake_cuda(crow, col, values, out_features, in_features, kernel="auto"):
    """bsr_pack's fake for CUDA tensors (checks of csrc/bsr/bsr_cuda.cpp that need no data). Blocks kept as they
    are give static shapes; a re-cut stores only the tiles holding a non-zero, a data-dependent count."""
    op = "sparseflow.bsr_pack"
    _check_dtype(op, "crow", crow, (torch.int32,))
    _check_dtype(op, "col", col, (torch.int32,))
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: values must have dtype Half or BFloat16 on CUDA (the tensor-core kernel's), got "
                        f"{str(values.dtype).removeprefix('torch.')}; float32 and int8 block weights run on the CPU "
                        "kernels (bsr_pack on a CPU tensor)")
    _check_dim(op, "crow", crow, 1, "[out_features/R + 1]")
    _check_dim(op, "col", col, 1, "[nnz_blocks]")
    _check_dim(op, "values", values, 3, "[nnz_blocks, R, C]")
    for arg, t in (("col", col), ("values", values)):
        if t.device != crow.device:
            raise ValueError(f"{op}: crow and {arg} must be on the same device, got {crow.device} and {t.device}")
    if out_features < 0:
        raise ValueError(f"{op}: out_features must be >= 0, got {out_features}")
    if not 0 <= in_features <= 65536:
        raise ValueError(f"{op}: in_features must be in [0, 65536] (indices are 16-bit), got {in_features}")
    _, R, C = values.shape
    if R < 1 or C < 1:
        raise ValueError(f"{op}: values must hold R x C blocks with R, C >= 1, got shape {list(values.shape)}")
    if crow.shape[0] != -(-out_features // R) + 1:
        raise ValueError(f"{op}: crow must have ceil(out_features/R) + 1 = {-(-out_features // R) + 1} entries")
    if col.shape[0] != values.shape[0]:
        raise ValueError(f"{op}: col and values must describe the same blocks")
    T, recut = bsr_cuda_tile(kernel, R, C)
    meta = torch.empty(8, dtype=torch.int64, device="cpu")
    if not recut:
        nnz = values.shape[0]
        return (meta, crow.new_empty(crow.shape), crow.new_empty((nnz,), dtype=torch.int16),
                values.new_empty(values.shape), crow.new_empty((0,)))
    tiles = torch.library.get_ctx().new_dynamic_size()
    return (meta, crow.new_empty((-(-out_features // T) + 1,)), crow.new_empty((tiles,), dtype=torch.int16),
            values.new_empty((tiles, T, T)), crow.new_empty((0,)))


def bsr_linear_fake_cuda(x, meta, rowptr, indices, packed_values, compensation, out_features, in_features, bias=None,
                         weight_scale=None, activation="none", out_dtype=None):
    """bsr_linear's fake for CUDA tensors (the block size comes from packed_values' shape: meta holds no data)."""
    op = "sparseflow.bsr_linear"
    _check_dtype(op, "meta", meta, (torch.int64,))
    if meta.dim() != 1 or meta.numel() != 8 or meta.device.type != "cpu":
        raise ValueError(f"{op}: meta must be the 1-D int64 CPU tensor of 8 entries returned by bsr_pack, got "
                         f"shape {list(meta.shape)} on {meta.device}")
    _check_dtype(op, "x", x, (torch.float16, torch.bfloat16))
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"{op}: x must have shape [..., in_features={in_features}], got {list(x.shape)}")
    _check_dtype(op, "packed_values", packed_values, (torch.float16, torch.bfloat16))
    if x.dtype != packed_values.dtype:
        raise TypeError(f"{op}: x must have the weight's dtype {packed_values.dtype}, got {x.dtype}")
    _check_dtype(op, "rowptr", rowptr, (torch.int32,))
    _check_dtype(op, "indices", indices, (torch.int16,))
    _check_dtype(op, "compensation", compensation, (torch.int32,))
    if packed_values.dim() != 3 or packed_values.shape[1] != packed_values.shape[2] or \
            packed_values.shape[1] not in _BSR_CUDA_BLOCKS:
        raise ValueError(f"{op}: packed_values must be [nnz, T, T] with T in 16, 32, 64, 128, got "
                         f"{list(packed_values.shape)}")
    T = packed_values.shape[1]
    if rowptr.shape != (-(-out_features // T) + 1,) or indices.shape != (packed_values.shape[0],):
        raise ValueError(f"{op}: rowptr and indices do not match out_features={out_features} and packed_values")
    for arg, t in (("rowptr", rowptr), ("indices", indices), ("packed_values", packed_values),
                   ("compensation", compensation), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: x and {arg} must be on the same device, got {x.device} and {t.device}")
    if in_features % 8:
        raise ValueError(f"{op}: on CUDA in_features must be a multiple of 8 (16-byte loads of x), got {in_features}")
    out = out_dtype or x.dtype
    if out not in (x.dtype, torch.float32):
        raise TypeError(f"{op}: out_dtype must be the dtype of x ({x.dtype}) or float32 on CUDA, got {out}")
    if activation not in _NM_LINEAR_ACTIVATIONS:
        raise ValueError(f"{op}: activation must be 'none', 'relu', 'gelu' or 'silu', got {activation!r}")
    if bias is not None:
        _check_dtype(op, "bias", bias, (torch.float32, x.dtype))
        if bias.shape != (out_features,):
            raise ValueError(f"{op}: bias must have shape [{out_features}], got {list(bias.shape)}")
    if weight_scale is not None:
        raise ValueError(f"{op}: weight_scale applies to int8 weights only")
    return x.new_empty((*x.shape[:-1], out_features), dtype=out)


def sparseflow_op_names() -> list[str]:
    """Every op registered under torch.ops.sparseflow (schema names, without overloads)."""
    return sorted(
        name.split("::", 1)[1].split(".", 1)[0]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("sparseflow::")
    )


def _raise_no_cuda_kernel(qualname: str, reason: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(
            f"{qualname} has no CUDA kernel here: {reason}. See `python -m sparseflow.info`."
        )

    return kernel


def register_cuda_fallbacks() -> None:
    """Give every op without a compiled CUDA kernel a CUDA kernel that raises a clear error.

    The dispatcher's own message ("Could not run ... with arguments from the 'CUDA' backend") does not
    say why; this one does (CPU-only build, CPU-only torch, or an op whose CUDA kernel is not written).
    """
    for name in sparseflow_op_names():
        qualname = f"sparseflow::{name}"
        if name in CUDA_FALLBACKS or torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"):
            continue
        reason = _loader.cuda_load_error or "this op's CUDA kernel is not implemented yet"
        torch.library.impl(qualname, "CUDA")(_raise_no_cuda_kernel(f"sparseflow.{name}", reason))
        CUDA_FALLBACKS[name] = reason


register_cuda_fallbacks()
