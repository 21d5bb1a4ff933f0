"""Typed, documented wrappers over ``torch.ops.sparseflow``. Each calls exactly one op."""

from __future__ import annotations

import torch

from . import _loader  # noqa: F401  (loads the kernels)


def nm_compress(dense: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a dense ``[rows, cols]`` matrix whose every group of ``m`` columns has at most ``n`` non-zeros.

    Returns ``(values, indices)``, both ``[rows, cols // m * n]``: the kept entries in column order and
    their uint8 positions inside each group (strictly ascending). Groups with fewer than ``n``
    non-zeros are padded with zeros at the lowest free positions. ``-0.0`` counts as zero.
    Raises ``ValueError`` naming the first row and group that has more than ``n`` non-zeros.
    """
    return torch.ops.sparseflow.nm_compress(dense, n, m)


def nm_decompress(values: torch.Tensor, indices: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Inverse of :func:`nm_compress`: returns the dense ``[rows, cols // n * m]`` matrix.

    Raises ``IndexError`` naming the first group whose positions are out of ``[0, m)`` or not ascending.
    """
    return torch.ops.sparseflow.nm_decompress(values, indices, n, m)


# ---- CUDA 2:4 layout (branch cuda)

def nm_pack_cutlass(values: torch.Tensor, indices: torch.Tensor, n: int = 2, m: int = 4,
                    target: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a canonical 2:4 weight (:func:`nm_compress`'s output) into the operands of CUTLASS's sparse
    tensor-core GEMM for ``target``: 80, CUTLASS 2.x ``SparseGemm`` (``nm_linear``'s kernel on sm80 and later),
    or 90, CUTLASS 3.x on sm90a (``nm_linear``'s kernel on H100/H200 when both dimensions are multiples of 8).

    Works on any device, so a weight can be packed on a CPU and moved to the GPU (``nm_pack`` on a CUDA
    tensor picks the target for its GPU). Returns ``(packed_values, packed_meta)``: the values zero-padded to
    ``[rows_p, cols_p // 2]`` and the metadata, int16 ``[rows_p, cols_p // 16]`` (target 80) or uint8
    ``[rows_p, cols_p // 8]`` (target 90) in CUTLASS's order; ``rows_p``/``cols_p`` round the row/column
    counts up to 32/64 (80) or 64/128 (90). The metadata dtype tells ``nm_linear`` which layout it has.
    Only float16 and bfloat16 have a 2:4 tensor-core layout. Raises ``IndexError`` naming the first group
    whose positions are not strictly ascending in ``[0, 4)``.
    """
    return torch.ops.sparseflow.nm_pack_cutlass(values, indices, n, m, target)
