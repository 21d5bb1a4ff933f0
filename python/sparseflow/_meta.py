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
def _nm_compress_fake(dense, n, m):
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


# ---------------------------------------------------------------------------------------------------------
# CUDA 2:4 path (branch cuda): nm_pack_cutlass, and the CUDA side of nm_pack / nm_linear.
# The CUDA layout is the CUTLASS 2.x one (csrc/nm/nm_cutlass.h): rows padded to 32, columns to 64.

_CUTLASS_ROW_ALIGN = 32
_CUTLASS_COL_ALIGN = 64
_NM_LINEAR_ACTIVATIONS = ("none", "relu", "gelu", "silu")


def _round_up(v: int, to: int) -> int:
    return (v + to - 1) // to * to


def nm_cutlass_packed_shapes(rows: int, cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of (packed_values, packed_meta) in the CUTLASS 2.x layout of a [rows, cols] 2:4 weight."""
    rows_p, cols_p = _round_up(rows, _CUTLASS_ROW_ALIGN), _round_up(cols, _CUTLASS_COL_ALIGN)
    return (rows_p, cols_p // 2), (rows_p, cols_p // 16)


def _nm_cutlass_pack_checks(op: str, values, indices, n: int, m: int, target: int | None = None) -> None:
    if (n, m) != (2, 4):
        raise ValueError(f"{op}: the CUTLASS sparse tensor-core layout is 2:4 only, got n:m = {n}:{m}")
    if target is not None and target != 80:
        raise ValueError(f"{op}: target must be 80 (the CUTLASS 2.x SparseGemm layout, used on sm80..sm90), got {target}")
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


def _nm_cutlass_packed_like(values):
    vshape, mshape = nm_cutlass_packed_shapes(values.shape[0], values.shape[1] * 2)
    return values.new_empty(vshape), values.new_empty(mshape, dtype=torch.int16)


@torch.library.register_fake("sparseflow::nm_pack_cutlass")
def _nm_pack_cutlass_fake(values, indices, n, m, target=80):
    _nm_cutlass_pack_checks("sparseflow.nm_pack_cutlass", values, indices, n, m, target)
    return _nm_cutlass_packed_like(values)


def nm_pack_fake_cuda(values, indices, n, m):
    """nm_pack's fake for CUDA tensors: the layout of nm_pack_cutlass(target=80)."""
    op = "sparseflow.nm_pack"
    if (n, m) != (2, 4):
        raise ValueError(f"{op}: on CUDA only 2:4 is supported (sparse tensor cores), got n:m = {n}:{m}")
    _nm_cutlass_pack_checks(op, values, indices, n, m)
    return _nm_cutlass_packed_like(values)


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
    _check_dtype(op, "packed_meta", packed_meta, (torch.int16,))
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{op}: x must be [..., in_features] with in_features={in_features}, got shape {list(x.shape)}")
    for arg, t in (("packed_values", packed_values), ("packed_meta", packed_meta), ("bias", bias),
                   ("weight_scale", weight_scale)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: x and {arg} must be on the same device, got {x.device} and {t.device}")
    vshape, mshape = nm_cutlass_packed_shapes(out_features, in_features)
    if tuple(packed_values.shape) != vshape:
        raise ValueError(f"{op}: packed_values must be {list(vshape)} (nm_pack's CUDA layout), got {list(packed_values.shape)}")
    if tuple(packed_meta.shape) != mshape:
        raise ValueError(f"{op}: packed_meta must be {list(mshape)} (nm_pack's CUDA layout), got {list(packed_meta.shape)}")
    if in_features % _CUTLASS_COL_ALIGN:
        raise ValueError(f"{op}: on CUDA in_features must be a multiple of {_CUTLASS_COL_ALIGN}, got {in_features}")
    if not (packed_values.is_contiguous() and packed_meta.is_contiguous()):
        raise ValueError(f"{op}: packed_values and packed_meta must be contiguous and 16-byte aligned, as nm_pack "
                         "returns them")
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


# Provisional (branch cuda): the fakes of nm_pack / nm_linear belong to branch cpu-nm. When merging, keep
# cpu-nm's registrations, make them call nm_pack_fake_cuda / nm_linear_fake_cuda for CUDA tensors, and
# delete these two.
@torch.library.register_fake("sparseflow::nm_pack")
def _nm_pack_fake(values, indices, n, m):
    if values.device.type == "cuda":
        return nm_pack_fake_cuda(values, indices, n, m)
    raise NotImplementedError("sparseflow.nm_pack: the CPU layout's fake is on branch cpu-nm")


@torch.library.register_fake("sparseflow::nm_linear")
def _nm_linear_fake(x, packed_values, packed_meta, n, m, out_features, in_features, bias=None, weight_scale=None,
                    activation="none", out_dtype=None):
    if x.device.type == "cuda":
        return nm_linear_fake_cuda(x, packed_values, packed_meta, n, m, out_features, in_features, bias,
                                   weight_scale, activation, out_dtype)
    raise NotImplementedError("sparseflow.nm_linear: the CPU layout's fake is on branch cpu-nm")


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
