"""Readable PyTorch references of every sparseflow op: the oracle for tests, fuzzing and benchmarks.

Each reference has the op's signature, validates its input with the same exception types as the op
(TypeError: dtype; ValueError: shape or value; IndexError: index), and favours clarity over speed.
"""

from __future__ import annotations

import torch

PACK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.float8_e4m3fn)


def _check_n_m(n: int, m: int) -> None:
    if not 1 <= m <= 64:
        raise ValueError(f"m must be in [1, 64], got m={m}")
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, m], got n={n}, m={m}")


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    # float8 has no comparison kernels; -0.0 counts as zero everywhere (it compares equal to 0).
    return t.to(torch.float32) != 0 if t.dtype == torch.float8_e4m3fn else t != 0


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def nm_compress(dense: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the non-zeros of every group of m columns (at most n), padded to n with the lowest free slots."""
    _check_n_m(n, m)
    if dense.dtype not in PACK_DTYPES:
        raise TypeError(f"dense must have a dtype in {PACK_DTYPES}, got {dense.dtype}")
    if dense.dim() != 2 or dense.shape[1] % m:
        raise ValueError(f"dense must be 2-D with a multiple of m={m} columns, got {list(dense.shape)}")
    rows, cols = dense.shape
    groups = dense.reshape(rows, cols // m, m)
    nonzero = _nonzero(groups)
    counts = nonzero.sum(-1)
    if (counts > n).any():
        row, group = (counts > n).nonzero()[0].tolist()
        raise ValueError(f"dense is not {n}:{m} sparse: row {row}, group {group} has {counts[row, group]} non-zeros")
    # Keep every non-zero plus the lowest zeros needed to make n; boolean indexing keeps positions ascending.
    position = torch.arange(m, device=dense.device).expand_as(nonzero)
    zero_rank = torch.cumsum(~nonzero, dim=-1) - 1  # 0 for the first zero of the group, 1 for the next...
    keep = nonzero | (zero_rank < (n - counts).unsqueeze(-1))
    indices = position[keep].reshape(rows, cols // m, n)
    bits = _as_bits(groups)  # gather by bit pattern: works for every dtype, float8 included
    values = torch.gather(bits, -1, indices)
    kept_nonzero = torch.gather(nonzero, -1, indices)
    values = torch.where(kept_nonzero, values, torch.zeros_like(values))  # padding is +0.0, even for -0.0
    packed = (rows, cols // m * n)
    return values.view(dense.dtype).reshape(packed), indices.reshape(packed).to(torch.uint8)


def nm_decompress(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Scatter each group's n values to their positions in a zero group of m."""
    _check_n_m(n, m)
    if values.dtype not in PACK_DTYPES:
        raise TypeError(f"values must have a dtype in {PACK_DTYPES}, got {values.dtype}")
    if indices.dtype != torch.uint8:
        raise TypeError(f"indices must be uint8, got {indices.dtype}")
    if values.dim() != 2 or values.shape != indices.shape or values.shape[1] % n:
        raise ValueError(f"values and indices must be equal 2-D shapes with a multiple of n={n} columns")
    if values.device != indices.device:
        raise ValueError("values and indices must be on the same device")
    rows = values.shape[0]
    groups = values.shape[1] // n
    pos = indices.reshape(rows, groups, n).long()
    ascending = (pos[..., 1:] > pos[..., :-1]).all(-1) if n > 1 else torch.ones_like(pos[..., 0], dtype=torch.bool)
    valid = ascending & (pos < m).all(-1)
    if not valid.all():
        row, group = (~valid).nonzero()[0].tolist()
        raise IndexError(f"indices of row {row}, group {group} are {pos[row, group].tolist()}")
    dense = torch.zeros(rows, groups, m, dtype=values.dtype, device=values.device)
    if dense.numel():
        _as_bits(dense).scatter_(-1, pos, _as_bits(values).reshape(rows, groups, n))
    return dense.reshape(rows, groups * m)
