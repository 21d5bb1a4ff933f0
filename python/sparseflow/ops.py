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
