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
