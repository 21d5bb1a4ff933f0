"""The CPU block-sparse layouts of ``csrc/bsr/bsr.h`` read back into a canonical ``BlockSparseWeight``'s tensors.

``bsr_pack`` on CPU re-cuts the canonical R x C blocks into native blocks (4x1 / 16x1 int8 tiles, float 4x1
tiles, 16x1 / 1x16 float blocks) and drops the all-zero ones. When the canonical weight stores no all-zero
block (``from_dense`` never does) the packed tensors hold everything the canonical ones do, so ``SparseLinear``
keeps only the packed copy and rebuilds ``crow`` / ``col`` / ``values`` from it to save, read or move the weight
(a reshuffle, no arithmetic; a stored -0.0 comes back as 0.0, as the kernels see it)."""

from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

# meta slots and layout ids (bsr.h): layout -> (native block rows, native block cols, whether 4-block tiles)
_META_LAYOUT, _META_OUT, _META_IN = 1, 3, 4
_NATIVE = {1: (4, 1, True), 2: (16, 1, False), 3: (1, 16, False), 5: (16, 1, True), 6: (4, 1, True)}
# Entries of the native blocks handled at once (bounds the int64 temporaries at ~100 MB).
_CHUNK_ENTRIES = 1 << 22


def is_cpu_layout(meta: torch.Tensor) -> bool:
    """Whether ``meta`` (bsr_pack's first output) describes one of the CPU layouts."""
    return meta.device.type == "cpu" and int(meta[_META_LAYOUT]) in _NATIVE


def packed_holds_canonical(values: torch.Tensor) -> bool:
    """Whether the canonical blocks ``values [nnz, R, C]`` can be rebuilt from a packed copy: none of them is
    all zero (the pack drops those)."""
    return bool((values != 0).flatten(1).any(1).all()) if values.shape[0] else True


def _native_entries(meta: torch.Tensor, rowptr: torch.Tensor, indices: torch.Tensor,
                    packed_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Every native block's entries as ``[blocks, rows * cols]`` values, with the first output row and the
    first input channel of each block, and the native block's rows and cols."""
    rows, cols, tiled = _NATIVE[int(meta[_META_LAYOUT])]
    blocks = indices.shape[0]
    if tiled:  # tile t: element 4c + j = W[rows * r + c, k of block 4t + j]
        values = packed_values.reshape(blocks // 4, rows, 4).transpose(1, 2).reshape(blocks, rows)
    else:
        values = packed_values.reshape(blocks, rows * cols)
    block_row = torch.repeat_interleave(torch.arange(rowptr.shape[0] - 1), rowptr.diff().long(), output_size=blocks)
    first_k = indices.long() & 0xFFFF  # uint16 stored as int16
    return values, block_row * rows, first_k, rows, cols


def unpack(meta: torch.Tensor, rowptr: torch.Tensor, indices: torch.Tensor, packed_values: torch.Tensor,
           block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The canonical ``(crow, col, values)`` with ``block = (R, C)`` of a weight ``bsr_pack`` packed on CPU
    (a valid packed weight assumed): the blocks holding a non-zero, in row-major order. Native blocks of the
    canonical shape are selected as they are (the all-zero ones are tile padding); other shapes regroup the
    non-zeros.

    The number of blocks depends on the values, so this reads real data even under a FakeTensorMode (a module's
    buffers stay real tensors there, e.g. while a move to another device is traced)."""
    with unset_fake_temporarily():
        return _unpack(meta, rowptr, indices, packed_values, block)


def _unpack(meta: torch.Tensor, rowptr: torch.Tensor, indices: torch.Tensor, packed_values: torch.Tensor,
            block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    R, C = block
    out_features, in_features = int(meta[_META_OUT]), int(meta[_META_IN])
    out_blocks, in_blocks = -(-out_features // R), -(-in_features // C)
    values, row0, k0, rows, cols = _native_entries(meta, rowptr, indices, packed_values)
    if (rows, cols) == (R, C):  # packed as they are: the native blocks are the canonical ones, plus zero padding
        keep = (values != 0).any(1)
        crow = torch.zeros(out_blocks + 1, dtype=torch.int32)
        crow[1:] = torch.bincount(row0[keep] // R, minlength=out_blocks).cumsum(0)
        return crow, (k0[keep] // C).to(torch.int32), values[keep].reshape(-1, R, C)
    # Chunks of whole canonical block-rows (native block-rows are ordered by output row), so the chunks' block
    # lists concatenate in row-major order.
    step = math.lcm(R, rows)
    entries_per_step = max(1, values.numel() * step // max(1, out_features))
    chunk_rows = step * max(1, _CHUNK_ENTRIES // entries_per_step)
    starts = torch.searchsorted(row0, torch.arange(0, out_features + chunk_rows, chunk_rows))
    crow_counts = torch.zeros(out_blocks, dtype=torch.int64)
    cols_out, values_out = [], []
    for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist()):
        if lo == hi:
            continue
        chunk = values[lo:hi]
        b, e = (chunk != 0).nonzero(as_tuple=True)
        n = row0[lo:hi][b] + e // cols  # the entry's output row and input channel
        k = k0[lo:hi][b] + e % cols
        ids, where = torch.unique(n // R * in_blocks + k // C, sorted=True, return_inverse=True)
        crow_counts += torch.bincount(ids // in_blocks, minlength=out_blocks)
        cols_out.append((ids % in_blocks).to(torch.int32))
        blocks = chunk.new_zeros(ids.shape[0], R, C)
        blocks[where, n % R, k % C] = chunk[b, e]
        values_out.append(blocks)
    crow = torch.zeros(out_blocks + 1, dtype=torch.int32)
    crow[1:] = crow_counts.cumsum(0)
    col = torch.cat(cols_out) if cols_out else torch.zeros(0, dtype=torch.int32)
    return crow, col, torch.cat(values_out) if values_out else torch.zeros(0, R, C, dtype=packed_values.dtype)
