"""The CPU lane layouts of ``csrc/nm/nm_lanes.h`` (int8 2:4 / 4:8, float32 / bfloat16 2:4), read back into the
canonical N:M tensors. ``SparseLinear`` holds only ``nm_pack``'s output for these layouts and rebuilds the
canonical values and indices from it when they are saved, read or moved (pure reshuffles, no arithmetic)."""

from __future__ import annotations

import torch

LANE_ROWS = 16


def uses_lane_layout(dtype: torch.dtype, n: int, m: int) -> bool:
    """Whether ``nm_pack`` on CPU reorders a weight of this dtype and pattern into 16-row blocks."""
    if dtype == torch.int8:
        return (n, m) in ((2, 4), (4, 8))
    return dtype in (torch.bfloat16, torch.float32) and (n, m) == (2, 4)


def lane_blocks(rows: int) -> list[tuple[int, int]]:
    """(first row, rows in the block) of each 16-row block."""
    return [(first, min(LANE_ROWS, rows - first)) for first in range(0, rows, LANE_ROWS)]


def from_lanes(flat: torch.Tensor, rows: int, widths: list[tuple[int, int]]) -> list[torch.Tensor]:
    """A block's pieces are stored unit by unit, one piece per row of the block; for pieces of (units, width)
    each, give them back per row: one ``[rows, units, width]`` tensor per entry of ``widths``."""
    parts = [[] for _ in widths]
    at = 0
    for _, h in lane_blocks(rows):
        for i, (units, width) in enumerate(widths):
            size = units * h * width
            parts[i].append(flat[at:at + size].reshape(units, h, width).transpose(0, 1))
            at += size
    return [torch.cat(p) if p else flat.new_zeros(0, u, w) for p, (u, w) in zip(parts, widths)]


def meta_nibbles(packed_meta: torch.Tensor) -> torch.Tensor:
    """The lane meta's nibbles per row, ``[rows, 8 * dwords per row]`` (int64): nibble j of a row's dword v
    describes its group-of-4 columns 4 (8v + j) .. +3."""
    rows, words, device = packed_meta.shape[0], packed_meta.shape[1] // 4, packed_meta.device
    (meta_bytes,) = from_lanes(packed_meta.reshape(-1), rows, [(words, 4)])
    dwords = (meta_bytes.long() << (8 * torch.arange(4, device=device))).sum(-1)  # [rows, words]
    return ((dwords[..., None] >> (4 * torch.arange(8, device=device))) & 0xF).reshape(rows, 8 * words)


def unpack(packed_values: torch.Tensor, packed_meta: torch.Tensor, n: int, m: int,
           in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The canonical (values, indices) of a weight ``nm_pack`` put in a lane layout (valid meta assumed)."""
    rows, dtype = packed_values.shape[0], packed_values.dtype
    kept_per_row = in_features // m * n
    if in_features == 0:
        return packed_values.new_zeros(rows, 0), packed_meta.new_zeros(rows, 0)
    flat = packed_values.reshape(-1).view(torch.uint8)
    if dtype == torch.int8:
        # 4 values per 8-column unit, then (in_features % 8 == 4, 2:4 only) 2 for the last 4 columns;
        # the meta nibbles are the kept masks of groups of 4 columns.
        units, tail = in_features // 8, in_features % 8 // 2
        full, last = from_lanes(flat, rows, [(units, 4), (1, tail)])
        values = torch.cat([full.reshape(rows, 4 * units), last.reshape(rows, tail)], 1).view(torch.int8)
        nibbles = meta_nibbles(packed_meta)[:, :in_features // 4]
        kept = (nibbles[..., None] >> torch.arange(4, device=nibbles.device)) & 1
        # the n kept positions of each group, ascending (a stable sort puts them first; no data-dependent
        # shape, so it also runs under FakeTensorMode)
        positions = torch.argsort(1 - kept.reshape(-1, m), dim=-1, stable=True)[:, :n]
    else:
        # dword units: bf16 a group's 2 values, fp32 one value; nibble = first | second << 2.
        units = kept_per_row * packed_values.element_size() // 4
        (pieces,) = from_lanes(flat, rows, [(units, 4)])
        values = pieces.reshape(rows, 4 * units).view(dtype)
        nibbles = meta_nibbles(packed_meta)[:, :in_features // 4]
        positions = torch.stack([nibbles & 3, nibbles >> 2 & 3], -1)
    return values.contiguous(), positions.to(torch.uint8).reshape(rows, kept_per_row)
