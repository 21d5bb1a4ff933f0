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


# ---------------------------------------------------------------------------------------------------------
# CUDA 2:4 layout (branch cuda): canonical 2:4 -> CUTLASS 2.x SparseGemm operands (csrc/nm/nm_cutlass.h).

# (rows, metadata columns, values columns) the packed tensors are padded to, per target: 80 reorders metadata
# rows in blocks of 32 and its kernels have a K tile of 64; 90 stores metadata in (64 x 128) atoms and the
# values with CUTLASS's fill_layoutA row stride (columns rounded up to 16).
CUTLASS_ALIGN = {80: (32, 64, 64), 90: (64, 128, 16)}


def cutlass_meta_offsets(rows_p: int, words: int, device=None) -> torch.Tensor:
    """Where metadata word (row, word) goes in the reordered buffer: CUTLASS's ``reorder_meta``
    (tools/util/include/cutlass/util/host_reorder.h) followed by ``ColumnMajorInterleaved<2>``."""
    row = torch.arange(rows_p, device=device).unsqueeze(1).expand(rows_p, words)
    col = torch.arange(words, device=device).unsqueeze(0).expand(rows_p, words)
    dst_row = row // 32 * 32 + (row % 8) * 4 + (row % 32) // 8  # interleave rows within blocks of 32
    dst_col = col.clone()
    down = (dst_row % 2 == 0) & (dst_col % 2 == 1)  # swap the off-diagonal entries of each 2x2 block
    up = (dst_row % 2 == 1) & (dst_col % 2 == 0)
    dst_row = dst_row + down.long() - up.long()
    dst_col = dst_col - down.long() + up.long()
    return (dst_col // 2) * rows_p * 2 + dst_row * 2 + dst_col % 2


def cutlass_sm90_meta_offsets(rows_p: int, cols_p: int, device=None) -> torch.Tensor:
    """Logical offset of dense element (row, col) in CUTLASS's sm90 16-bit metadata layout
    (``Sm90GemmSparseConfig::fill_layoutE`` with a K tile of 128): (64 x 128) atoms ordered
    ((8,2,4),(16,2,4)):((128,16,2048),(1,1024,32)), column-major over M then K. Byte = offset // 8."""
    row = torch.arange(rows_p, device=device).unsqueeze(1)
    col = torch.arange(cols_p, device=device).unsqueeze(0)
    m, k = row % 64, col % 128
    atom = (k % 16) + (m // 8 % 2) * 16 + (k // 32) * 32 + (m % 8) * 128 + (k // 16 % 2) * 1024 + (m // 16) * 2048
    return atom + (row // 64) * 64 * 128 + (col // 128) * rows_p * 128


def nm_pack_cutlass(values: torch.Tensor, indices: torch.Tensor, n: int, m: int,
                    target: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical 2:4 -> (packed_values [rows_p, cols_p/2], packed_meta), the operands of CUTLASS's sparse GEMM.

    Padding (CUTLASS_ALIGN) holds zero values at positions (0, 1); a group's 4-bit code is first | second << 2.
    packed_values is [rows_p, values_cols / 2]. Target 80: int16 words [rows_p, cols_p/16] of 4 groups (lowest group in the lowest
    bits) in CUTLASS 2.x's reordered order. Target 90: uint8 [rows_p, cols_p/8], byte offset // 8 of the
    group's first column in the sm90 layout, lower nibble first.
    """
    if (n, m) != (2, 4):
        raise ValueError(f"the CUTLASS layout is 2:4 only, got n:m = {n}:{m}")
    if target not in CUTLASS_ALIGN:
        raise ValueError(f"target must be 80 or 90, got {target}")
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"values must be float16 or bfloat16, got {values.dtype}")
    if indices.dtype != torch.uint8:
        raise TypeError(f"indices must be uint8, got {indices.dtype}")
    if values.dim() != 2 or values.shape != indices.shape:
        raise ValueError(f"values and indices must be equal 2-D shapes, got {list(values.shape)}, {list(indices.shape)}")
    if values.device != indices.device:
        raise ValueError("values and indices must be on the same device")
    if values.shape[1] % 2:
        raise ValueError(f"the column count of values must be even (2 per group), got {values.shape[1]}")
    rows, cols = values.shape[0], values.shape[1] * 2
    pairs = indices.reshape(rows, cols // 4, 2).long()
    valid = (pairs[..., 0] < pairs[..., 1]) & (pairs[..., 1] < 4)
    if not valid.all():
        row, group = (~valid).nonzero()[0].tolist()
        raise IndexError(f"indices of row {row}, group {group} are {pairs[row, group].tolist()}")
    row_align, col_align, values_align = CUTLASS_ALIGN[target]
    rows_p = -(-rows // row_align) * row_align
    cols_p = -(-cols // col_align) * col_align
    values_cols = -(-cols // values_align) * values_align
    packed_values = torch.zeros(rows_p, values_cols // 2, dtype=values.dtype, device=values.device)
    packed_values[:rows, : cols // 2] = values
    codes = torch.full((rows_p, cols_p // 4), 0x4, dtype=torch.int64, device=values.device)
    codes[:rows, : cols // 4] = pairs[..., 0] | (pairs[..., 1] << 2)
    if target == 90:
        bytes_ = codes[:, 0::2] | (codes[:, 1::2] << 4)  # groups at columns 8b and 8b + 4 share byte b
        first_cols = cutlass_sm90_meta_offsets(rows_p, cols_p, values.device)[:, 0::8]
        meta = torch.empty(rows_p * cols_p // 8, dtype=torch.int64, device=values.device)
        meta[(first_cols // 8).reshape(-1)] = bytes_.reshape(-1)
        return packed_values, meta.to(torch.uint8).reshape(rows_p, cols_p // 8)
    shifts = torch.tensor([0, 4, 8, 12], device=values.device)
    words = (codes.reshape(rows_p, cols_p // 16, 4) << shifts).sum(-1)  # 16-bit words, in int64
    meta = torch.empty(rows_p * (cols_p // 16), dtype=torch.int64, device=values.device)
    meta[cutlass_meta_offsets(rows_p, cols_p // 16, values.device).reshape(-1)] = words.reshape(-1)
    meta = torch.where(meta >= 1 << 15, meta - (1 << 16), meta)  # the same 16 bits as int16
    return packed_values, meta.to(torch.int16).reshape(rows_p, cols_p // 16)
