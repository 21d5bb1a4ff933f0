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


_LINEAR_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
_LINEAR_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ACTIVATIONS = ("none", "relu", "gelu", "silu")
_INT8_MAX_IN_FEATURES = 131072


def _meta_row_bytes(in_features: int) -> int:
    return (in_features + 63) // 64 * 8


@torch.library.register_fake("sparseflow::nm_pack")
def _nm_pack_fake(values, indices, n, m):
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
