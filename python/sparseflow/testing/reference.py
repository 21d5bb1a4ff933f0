"""Readable PyTorch references of every sparseflow op: the oracle for tests, fuzzing and benchmarks.

Each reference has the op's signature, validates its input with the same exception types as the op
(TypeError: dtype; ValueError: shape or value; IndexError: index), and favours clarity over speed.
"""

from __future__ import annotations

import torch

from sparseflow import _lanes

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


def nm_prune_mask(dense: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask of the n largest magnitudes of every group of m columns.

    Equal magnitudes: the lower position wins. NaN is larger than every number (inf included), NaNs tie.
    """
    rows, cols = dense.shape
    groups = dense.reshape(rows, cols // m, m)
    magnitude = groups.to(torch.float32).to(torch.float64).abs()  # exact for every pack dtype; int8 -128 -> 128
    nan = magnitude.isnan()
    # Exact integer ranks of the magnitudes (0 = smallest), NaN ranked above all of them.
    levels, rank = torch.unique(torch.where(nan, torch.inf, magnitude), return_inverse=True)
    rank = rank + nan * len(levels)
    position = torch.arange(m, device=dense.device)
    key = rank * m + (m - 1 - position)  # distinct within a group; on equal rank the lower position is larger
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=dense.device)
    if keep.numel():
        keep.scatter_(-1, key.topk(n, dim=-1).indices, True)
    return keep.reshape(rows, cols)


def nm_compress(dense: torch.Tensor, n: int, m: int, prune: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the non-zeros of every group of m columns (at most n), padded to n with the lowest free slots.

    prune=True first zeroes all but the n largest magnitudes of each group (``nm_prune_mask``).
    """
    _check_n_m(n, m)
    if dense.dtype not in PACK_DTYPES:
        raise TypeError(f"dense must have a dtype in {PACK_DTYPES}, got {dense.dtype}")
    if dense.dim() != 2 or dense.shape[1] % m:
        raise ValueError(f"dense must be 2-D with a multiple of m={m} columns, got {list(dense.shape)}")
    if prune:  # zero by bit pattern: works for every dtype, float8 included
        keep = nm_prune_mask(dense, n, m)
        dense = torch.where(keep, _as_bits(dense), 0).view(dense.dtype)
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


def _check_compressed(values: torch.Tensor, indices: torch.Tensor, n: int, m: int, dtypes) -> None:
    """The checks of a compressed (values, indices, n, m) argument set: nm_decompress's and nm_pack's."""
    _check_n_m(n, m)
    if values.dtype not in dtypes:
        raise TypeError(f"values must have a dtype in {dtypes}, got {values.dtype}")
    if indices.dtype != torch.uint8:
        raise TypeError(f"indices must be uint8, got {indices.dtype}")
    if values.dim() != 2 or values.shape != indices.shape or values.shape[1] % n:
        raise ValueError(f"values and indices must be equal 2-D shapes with a multiple of n={n} columns")
    if values.device != indices.device:
        raise ValueError("values and indices must be on the same device")


def nm_decompress(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Scatter each group's n values to their positions in a zero group of m."""
    _check_compressed(values, indices, n, m, PACK_DTYPES)
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


# ---------------------------------------------------------------------------------------- block-sparse (BSR)
# The packed layouts are described in csrc/bsr/bsr.h; these functions are their readable specification.

BSR_VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.int8)
BSR_FORMAT_VERSION = 1
BSR_LAYOUTS = {1: "4x1", 2: "16x1", 3: "1x16", 5: "int8 16x1", 6: "float 4x1"}
_BSR_NATIVE = {"4x1": (4, 1, 4), "16x1": (16, 1, 1), "1x16": (1, 16, 1), "int8 16x1": (16, 1, 4),
               "float 4x1": (4, 1, 4)}  # rows, cols, blocks per tile
_BSR_INT8_LAYOUTS = ("4x1", "int8 16x1")
_BSR_TILED_LAYOUTS = ("4x1", "int8 16x1", "float 4x1")  # [blocks / 4, rows, 4] values
_BSR_SPAN_LAYOUTS = ("4x1", "float 4x1")  # may hold span-16 tiles
_BSR_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}
BSR_MAX_IN_FEATURES = 65536
BSR_TILE_SPAN = 16  # meta slot 6 of 4x1 weights whose tiles each lie within 16 input channels, else 0
ACTIVATIONS = ("none", "relu", "gelu", "silu")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def bsr_to_dense(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, out_features: int,
                 in_features: int) -> torch.Tensor:
    """The dense [out_features, in_features] matrix of canonical BSR arrays (overhanging entries dropped)."""
    nnz, R, C = values.shape
    rows, cols = _ceil_div(out_features, R) * R, _ceil_div(in_features, C) * C
    dense = torch.zeros(rows // R, R, cols // C, C, dtype=values.dtype, device=values.device)
    block_row = torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff().long())
    dense[block_row, :, col.long(), :] = values
    return dense.reshape(rows, cols)[:out_features, :in_features]


def _check_canonical(crow, col, values, out_features, in_features, kernel):
    if crow.dtype != torch.int32 or col.dtype != torch.int32:
        raise TypeError(f"crow and col must be int32, got {crow.dtype} and {col.dtype}")
    if values.dtype not in BSR_VALUE_DTYPES:
        raise TypeError(f"values must have dtype float32, bfloat16 or int8, got {values.dtype}")
    if crow.dim() != 1 or col.dim() != 1 or values.dim() != 3:
        raise ValueError("crow and col must be 1-D and values 3-D [nnz, R, C]")
    if not (crow.device == col.device == values.device):
        raise ValueError("crow, col and values must be on the same device")
    if out_features < 0 or not 0 <= in_features <= BSR_MAX_IN_FEATURES:
        raise ValueError(f"out_features must be >= 0 and in_features in [0, {BSR_MAX_IN_FEATURES}]")
    nnz, R, C = values.shape
    if R < 1 or C < 1:
        raise ValueError(f"blocks must be at least 1x1, got {R}x{C}")
    if len(crow) != _ceil_div(out_features, R) + 1:
        raise ValueError(f"crow must have ceil(out_features/R) + 1 entries, got {len(crow)}")
    if len(col) != nnz:
        raise ValueError(f"col has {len(col)} entries for {nnz} blocks")
    is_int8 = values.dtype == torch.int8
    if kernel not in ("auto", "4x1", "16x1", "1x16") or (kernel == "1x16" and is_int8):
        raise ValueError(f"kernel {kernel!r} does not fit {values.dtype} weights")
    crow_l, col_l = crow.long().cpu(), col.long().cpu()
    if crow_l[0] != 0 or (crow_l.diff() < 0).any() or crow_l[-1] != nnz:
        raise IndexError("crow must start at 0, never decrease and end at the number of blocks")
    if ((col_l < 0) | (col_l >= _ceil_div(in_features, C))).any():
        raise IndexError("col is out of range")
    for b in range(len(crow_l) - 1):
        if (col_l[crow_l[b]:crow_l[b + 1]].diff() <= 0).any():
            raise IndexError(f"col must be strictly ascending in block-row {b}")
    if is_int8:  # int8 16x1 tiles are 16x4; 'auto' takes them when canonical blocks cover whole 16-row strips
        return "int8 16x1" if kernel == "16x1" or (kernel == "auto" and R % 16 == 0) else "4x1"
    if kernel != "auto":
        return "float 4x1" if kernel == "4x1" else kernel
    # the fewest stored zeros: 1x16 for wide blocks, 16x1 for whole 16-row strips, else float 4x1
    if C > R:
        return "1x16"
    return "float 4x1" if R % 16 else "16x1"


def _bsr_tiles(columns: list[int], group: int, span: int) -> list[list[int]]:
    """A block-row's ascending block-columns cut into tiles: runs of up to `group`, each also ending before a
    column `span` or more after its first one (span 0: no limit)."""
    tiles = []
    for c in columns:
        if tiles and len(tiles[-1]) < group and (span == 0 or c - tiles[-1][0] < span):
            tiles[-1].append(c)
        else:
            tiles.append([c])
    return tiles


def bsr_pack(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, out_features: int, in_features: int,
             kernel: str = "auto"):
    """Re-cut canonical BSR into native blocks (dropping all-zero ones); see csrc/bsr/bsr.h for the layouts."""
    layout = _check_canonical(crow, col, values, out_features, in_features, kernel)
    rows, cols, group = _BSR_NATIVE[layout]
    dense = bsr_to_dense(crow, col, values, out_features, in_features).cpu()
    N, K = out_features, in_features
    block_rows = _ceil_div(N, rows)
    padded = torch.zeros(block_rows * rows, _ceil_div(K, cols) * cols, dtype=dense.dtype)
    padded[:N, :K] = dense
    blocks = padded.reshape(block_rows, rows, _ceil_div(K, cols), cols).permute(0, 2, 1, 3)  # [br, K/cols, rows, cols]
    nonzero = (blocks != 0).flatten(2).any(-1)
    row_columns = [nonzero[r].nonzero().flatten().tolist() for r in range(block_rows)]
    span = 0
    if layout in _BSR_SPAN_LAYOUTS:  # tiles within 16 input channels when they add at most 1/4 more blocks
        plain, spanned = (sum(len(_bsr_tiles(c, group, s)) * group for c in row_columns) for s in (0, BSR_TILE_SPAN))
        span = BSR_TILE_SPAN if 4 * spanned <= 5 * plain else 0
    rowptr, indices, vals = [0], [], []
    for r in range(block_rows):
        kc, pad = [], []
        for tile in _bsr_tiles(row_columns[r], group, span):
            kc += tile + tile[-1:] * (group - len(tile))  # padding blocks repeat the tile's last index...
            pad += [False] * len(tile) + [True] * (group - len(tile))
        kc = torch.tensor(kc, dtype=torch.long)
        count = len(kc)
        b = blocks[r, kc].clone()  # [count, rows, cols]
        b[torch.tensor(pad, dtype=torch.bool)] = 0  # ...and hold zeros
        b[b == 0] = 0  # -0.0 is stored as +0.0
        rowptr.append(rowptr[-1] + count)
        indices.append(kc * cols)
        if layout in _BSR_TILED_LAYOUTS:  # tile t: element 4c + j = W[rows * r + c, k of block 4t + j]
            vals.append(b.reshape(count // 4, 4, rows).transpose(1, 2).contiguous())
        else:
            vals.append(b.reshape(count, 16))
    nnz = rowptr[-1]
    indices = torch.cat(indices).to(torch.int16) if indices else torch.zeros(0, dtype=torch.int16)
    empty_shape = (0, rows, 4) if layout in _BSR_TILED_LAYOUTS else (0, 16)
    values_out = torch.cat(vals) if vals else torch.zeros(empty_shape, dtype=dense.dtype)
    compensation = (dense.to(torch.int32).sum(1, dtype=torch.int32) if layout in _BSR_INT8_LAYOUTS
                    else torch.zeros(0, dtype=torch.int32))
    layout_id = {v: k for k, v in BSR_LAYOUTS.items()}[layout]
    meta = torch.tensor([BSR_FORMAT_VERSION, layout_id, _BSR_DTYPE_CODE[dense.dtype], N, K, nnz, span, 0])
    dev = values.device
    return (meta, torch.tensor(rowptr, dtype=torch.int32, device=dev), indices.to(dev), values_out.to(dev),
            compensation.to(dev))


# CUDA layout (csrc/bsr/bsr_cuda.h): T x T tiles of float16/bfloat16, layout id 4, T in meta slot 6.
BSR_CUDA_LAYOUT = 4
BSR_CUDA_TILES = (16, 32, 64, 128)
_BSR_CUDA_DTYPE_CODE = {torch.bfloat16: 1, torch.float16: 4}


def bsr_cuda_tile(kernel: str, R: int, C: int) -> tuple[int, bool]:
    """(T, re-cut?) of the CUDA layout for R x C blocks: "auto" keeps square 16/32/64/128 blocks and cuts others
    into 16 x 16 tiles (the least fill-in); "TxT" cuts into T x T tiles unless the blocks already are T x T."""
    if kernel == "auto":
        return (R, False) if R == C and R in BSR_CUDA_TILES else (16, True)
    for t in BSR_CUDA_TILES:
        if kernel == f"{t}x{t}":
            return t, (R, C) != (t, t)
    raise ValueError(f"kernel {kernel!r} is not a CUDA layout")


def bsr_pack_cuda(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, out_features: int,
                  in_features: int, kernel: str = "auto"):
    """bsr_pack on CUDA, on any device: (meta [CPU], rowptr, indices, packed_values [nnz, T, T], compensation [0]).

    Blocks kept as they are (bsr_cuda_tile): the canonical arrays with col * T as indices and the overhang
    zeroed, all-zero blocks included. Re-cut: the padded dense matrix cut into T x T tiles, the tiles holding a
    non-zero stored in row-major order (-0.0 counts as zero and is stored as +0.0).
    """
    if values.dtype not in _BSR_CUDA_DTYPE_CODE:
        raise TypeError(f"values must be float16 or bfloat16 on CUDA, got {values.dtype}")
    _check_canonical(crow, col, values.float(), out_features, in_features, "auto")
    nnz, R, C = values.shape
    T, recut = bsr_cuda_tile(kernel, R, C)
    N, K = out_features, in_features
    tile_rows, tile_cols = _ceil_div(N, T), _ceil_div(K, T)
    padded = torch.zeros(tile_rows * T, tile_cols * T, dtype=values.dtype, device=values.device)
    padded[:N, :K] = bsr_to_dense(crow, col, values, N, K)
    tiles = padded.reshape(tile_rows, T, tile_cols, T).transpose(1, 2)  # [tile row, tile col, T, T]
    if recut:
        keep = (tiles != 0).flatten(2).any(-1)
        tile_row, tile_col = keep.nonzero().unbind(1)
        rowptr = torch.cat([keep.new_zeros(1, dtype=torch.int32), keep.sum(1).cumsum(0).to(torch.int32)])
        packed = tiles[tile_row, tile_col].clone()
        packed[packed == 0] = 0  # -0.0 -> +0.0
    else:
        tile_row = torch.repeat_interleave(torch.arange(tile_rows, device=crow.device), crow.diff().long())
        tile_col = col.long()
        rowptr = crow.clone()
        packed = tiles[tile_row, tile_col].clone()
    first = tile_col.long() * T
    indices = torch.where(first >= 1 << 15, first - (1 << 16), first).to(torch.int16)  # the same 16 bits
    meta = torch.tensor([BSR_FORMAT_VERSION, BSR_CUDA_LAYOUT, _BSR_CUDA_DTYPE_CODE[values.dtype], N, K,
                         packed.shape[0], T, 0])
    return meta, rowptr, indices, packed.contiguous(), torch.zeros(0, dtype=torch.int32, device=values.device)


def bsr_pack_on_device(crow, col, values, out_features: int, in_features: int, kernel: str = "auto"):
    """bsr_pack as the op does it on the device of `values`: the CPU layouts (bsr_pack) or the CUDA tiles
    (bsr_pack_cuda)."""
    pack = bsr_pack_cuda if values.device.type == "cuda" else bsr_pack
    return pack(crow, col, values, out_features, in_features, kernel)


def _bsr_unpack_cuda(meta, rowptr, indices, packed_values, N: int, K: int) -> torch.Tensor:
    T, nnz = int(meta[6]), int(meta[5])
    dtype = {v: k for k, v in _BSR_CUDA_DTYPE_CODE.items()}.get(int(meta[2]))
    if T not in BSR_CUDA_TILES or dtype is None:
        raise ValueError("meta is not a CUDA layout of this build")
    if packed_values.dtype != dtype:
        raise TypeError(f"packed_values must be {dtype}, got {packed_values.dtype}")
    tile_rows, tile_cols = _ceil_div(N, T), _ceil_div(K, T)
    if rowptr.shape != (tile_rows + 1,) or indices.shape != (nnz,) or packed_values.shape != (nnz, T, T):
        raise ValueError("the packed tensors' shapes do not match meta")
    rp = rowptr.long().cpu()
    if rp[0] != 0 or (rp.diff() < 0).any() or rp[-1] != nnz:
        raise IndexError("rowptr is corrupted")
    first = indices.long().cpu() & 0xFFFF
    if nnz and (first.max() >= K or (first % T).any()):
        raise IndexError("a packed index is out of range or not a multiple of T")
    tiles = torch.zeros(tile_rows, tile_cols, T, T, dtype=torch.float64)
    tile_row = torch.repeat_interleave(torch.arange(tile_rows), rp.diff())
    tiles.index_put_((tile_row, first // T), packed_values.cpu().double(), accumulate=True)
    dense = tiles.transpose(1, 2).reshape(tile_rows * T, tile_cols * T)
    return dense[:N, :K].to(dtype).to(packed_values.device)


def bsr_unpack(meta, rowptr, indices, packed_values, compensation, out_features: int,
               in_features: int) -> torch.Tensor:
    """The dense [out, in] weight held by bsr_pack's tensors (CPU or CUDA layout), validating them like
    bsr_linear does."""
    if meta.dtype != torch.int64 or meta.shape != (8,):
        raise (TypeError if meta.dtype != torch.int64 else ValueError)("meta must be int64 [8]")
    version, layout_id, dcode, N, K, nnz = meta[:6].tolist()
    if version == BSR_FORMAT_VERSION and layout_id == BSR_CUDA_LAYOUT and (N, K) == (out_features, in_features):
        return _bsr_unpack_cuda(meta, rowptr, indices, packed_values, N, K)
    if version != BSR_FORMAT_VERSION or layout_id not in BSR_LAYOUTS or dcode not in (0, 1, 2):
        raise ValueError("meta is not a packed BSR weight of this format version")
    if (N, K) != (out_features, in_features):
        raise ValueError(f"the weight was packed for [{N}, {K}], not [{out_features}, {in_features}]")
    layout = BSR_LAYOUTS[layout_id]
    dtype = {v: k for k, v in _BSR_DTYPE_CODE.items()}[dcode]
    if (dtype == torch.int8) != (layout in _BSR_INT8_LAYOUTS):
        raise ValueError("meta pairs a layout with a dtype it does not hold")
    if packed_values.dtype != dtype:
        raise TypeError(f"packed_values must be {dtype}, got {packed_values.dtype}")
    if rowptr.dtype != torch.int32 or indices.dtype != torch.int16 or compensation.dtype != torch.int32:
        raise TypeError("rowptr must be int32, indices int16 and compensation int32")
    rows, cols, group = _BSR_NATIVE[layout]
    block_rows = _ceil_div(N, rows)
    is_int8, tiled = layout in _BSR_INT8_LAYOUTS, layout in _BSR_TILED_LAYOUTS
    vshape = (nnz // 4, rows, 4) if tiled else (nnz, 16)
    if (rowptr.shape != (block_rows + 1,) or indices.shape != (nnz,) or packed_values.shape != vshape
            or nnz % group or compensation.shape != ((N,) if is_int8 else (0,))):
        raise ValueError("the packed tensors' shapes do not match meta")
    rp = rowptr.long().cpu()
    counts = rp.diff()
    if rp[0] != 0 or (counts < 0).any() or (counts % group).any() or rp[-1] != nnz:
        raise IndexError("rowptr is corrupted")
    idx = indices.long().cpu() & 0xFFFF
    if nnz and idx.max() >= K:
        raise IndexError(f"a packed index is {int(idx.max())}, out of range for in_features={K}")
    span = int(meta[6])
    if span not in (0, BSR_TILE_SPAN) or (span and layout not in _BSR_SPAN_LAYOUTS):
        raise ValueError(f"meta holds tile span {span} (0, or {BSR_TILE_SPAN} for the 4x1 layouts)")
    if span:
        offsets = idx.reshape(-1, 4) - idx.reshape(-1, 4)[:, :1]  # from each tile's first index
        if ((offsets < 0) | (offsets >= span)).any():
            raise IndexError(f"meta says every tile lies within {span} input channels, but a tile's indices span "
                             "further")
    if tiled:
        blocks = packed_values.cpu().transpose(1, 2).reshape(nnz, rows, 1)
    else:
        blocks = packed_values.cpu().reshape(nnz, rows, cols)
    dense = torch.zeros(block_rows * rows, K + cols, dtype=torch.float64)
    block_row = torch.repeat_interleave(torch.arange(block_rows), counts)
    for c in range(cols):  # rows of a block are consecutive output channels, cols consecutive inputs
        r_idx = block_row[:, None] * rows + torch.arange(rows)
        dense.index_put_((r_idx, (idx + c)[:, None].expand(-1, rows)), blocks[:, :, c].double(), accumulate=True)
    return dense[:N, :K].to(dtype).to(packed_values.device)


def quantize_per_token_u8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The int8 path's dynamic activation quantization: (xq uint8, scale fp32, zero point int32) per row.

    x ~= scale * (xq - zp); scale = (max(0, max x) - min(0, min x)) / 255 (1 for an all-zero row),
    zp = round(-min / scale), xq = clamp(round(x * (1 / scale)) + zp, 0, 255); fp32, round half to even.
    """
    x = x.float()
    if x.shape[-1] == 0:
        lo = hi = torch.zeros(x.shape[:-1], device=x.device)
    else:
        lo, hi = x.amin(-1).clamp(max=0), x.amax(-1).clamp(min=0)
    scale = (hi - lo) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.round(-lo / scale).clamp(0, 255)
    inv = 1 / scale
    xq = torch.clamp(torch.round(x * inv[..., None]) + zp[..., None], 0, 255)
    return xq.to(torch.uint8), scale, zp.to(torch.int32)


def bsr_int8_accumulator(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The int32 accumulator of the int8 path, sum_k (xq - zp) * W, for x [M, K] and an int8 weight [N, K]."""
    xq, _, zp = quantize_per_token_u8(x)
    acc = (xq.long() - zp.long()[:, None]) @ weight.long().t()
    return acc.to(torch.int32)


def _activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(y)
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    if activation == "silu":
        return torch.nn.functional.silu(y)
    return y


def _check_bsr_linear(x, weight_dtype, bias, weight_scale, activation, out_dtype):
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"x must be float32 or bfloat16, got {x.dtype}")
    if weight_dtype != torch.int8 and x.dtype != weight_dtype:
        raise TypeError(f"x must have the weight's dtype {weight_dtype}, got {x.dtype}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}")
    allowed = (torch.float32, torch.bfloat16) + ((torch.int32,) if weight_dtype == torch.int8 else ())
    if out_dtype is not None and out_dtype not in allowed:
        raise TypeError(f"out_dtype must be one of {allowed}, got {out_dtype}")
    if out_dtype == torch.int32 and (bias is not None or activation != "none"):
        raise ValueError("out_dtype=int32 returns the raw accumulator: no bias or activation")
    if bias is not None and bias.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"bias must be float32 or {x.dtype}, got {bias.dtype}")
    if weight_dtype == torch.int8:
        if weight_scale is None and out_dtype != torch.int32:
            raise ValueError("int8 weights need weight_scale")
        if weight_scale is not None and weight_scale.dtype != torch.float32:
            raise TypeError(f"weight_scale must be float32, got {weight_scale.dtype}")
    elif weight_scale is not None:
        raise ValueError("weight_scale applies to int8 weights only")


def _linear_compute(x2, weight, bias, weight_scale, activation, dt):
    if weight.dtype == torch.int8:
        acc = bsr_int8_accumulator(x2, weight)
        _, sx, _ = quantize_per_token_u8(x2)
        y = acc.to(dt) * (sx[:, None] * weight_scale[None, :]).to(dt)
    else:
        y = torch.nn.functional.linear(x2.to(dt), weight.to(dt))
    if bias is not None:
        y = y + bias.to(dt)
    return _activate(y, activation)


def bsr_linear_dense(x: torch.Tensor, weight: torch.Tensor, bias=None, weight_scale=None, activation="none",
                     out_dtype=None, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = act(x @ W^T + bias) for a dense weight [N, K], computed like bsr_linear.

    Float weights: computed in ``compute_dtype`` (default: x's dtype, i.e. torch's own low-precision
    result). int8 weights: the exact int32 accumulator of the per-token-quantized x, dequantized in
    ``compute_dtype`` (default float32); out_dtype=int32 returns the accumulator itself. ``compute_dtype``
    float64 gives the accurate result the tolerances are measured against (then not cast to out_dtype).
    """
    _check_bsr_linear(x, weight.dtype, bias, weight_scale, activation, out_dtype)
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} input features, the weight {K}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must have shape [{N}]")
    if weight.dtype == torch.int8 and weight_scale is not None and weight_scale.shape != (N,):
        raise ValueError(f"weight_scale must have shape [{N}]")
    x2 = x.reshape(x.shape[:-1].numel(), K)
    out_dtype = out_dtype or x.dtype
    if out_dtype == torch.int32:
        y = bsr_int8_accumulator(x2, weight)
    else:
        dt = compute_dtype or (torch.float32 if weight.dtype == torch.int8 else x.dtype)
        y = _linear_compute(x2, weight, bias, weight_scale, activation, dt)
        if compute_dtype != torch.float64:
            y = y.to(out_dtype)
    return y.reshape(*x.shape[:-1], N)


def bsr_linear(x, meta, rowptr, indices, packed_values, compensation, out_features: int, in_features: int,
               bias=None, weight_scale=None, activation: str = "none", out_dtype=None,
               compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """bsr_linear on the dense weight that bsr_pack's tensors hold (see bsr_linear_dense)."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"x must be float32 or bfloat16, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"x must have shape [..., {in_features}]")
    if meta.dtype == torch.int64 and meta.shape == (8,) and int(meta[2]) in (0, 1, 2):
        wdtype = {v: k for k, v in _BSR_DTYPE_CODE.items()}[int(meta[2])]
        _check_bsr_linear(x, wdtype, bias, weight_scale, activation, out_dtype)  # dtype errors before data errors
    weight = bsr_unpack(meta, rowptr, indices, packed_values, compensation, out_features, in_features)
    return bsr_linear_dense(x, weight, bias, weight_scale, activation, out_dtype, compute_dtype)


# ---------------------------------------------------------------------------------------------- N:M linear

LINEAR_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
LINEAR_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT8_MAX_IN_FEATURES = 131072
META_CHUNK = 64


def meta_row_bytes(in_features: int) -> int:
    return (in_features + META_CHUNK - 1) // META_CHUNK * 8


def _meta_bit_of_column(int8_layout: bool, device) -> torch.Tensor:
    """For each column c of a 64-column chunk, its bit inside the chunk's 64-bit meta word.

    float weights: bit c. int8 weights: the 4 columns of group-of-4 g sit in nibble g/2 (g even) or 8 + g//2
    (g odd), the order the VNNI kernel's broadcast + vpsrlvd leaves the nibbles in.
    """
    c = torch.arange(META_CHUNK, device=device)
    if not int8_layout:
        return c
    group = c // 4
    nibble = torch.where(group % 2 == 0, group // 2, 8 + group // 2)
    return nibble * 4 + c % 4


# The lane layouts' geometry (which weights take them, 16-row blocks, reading pieces and nibbles back) comes from
# the package: the readers below and the kernels' exact tests check it against the C++ packer.
LANE_ROWS = _lanes.LANE_ROWS
uses_lane_layout = _lanes.uses_lane_layout
_lane_blocks = _lanes.lane_blocks
_from_lanes = _lanes.from_lanes
_meta_nibbles = _lanes.meta_nibbles


def _to_lanes(parts: list[torch.Tensor], rows: int) -> torch.Tensor:
    """Per-row pieces [rows, units, width] -> the lane layout: per block, unit by unit, one piece per row."""
    out = []
    for first, h in _lane_blocks(rows):
        out += [p[first:first + h].transpose(0, 1).reshape(-1) for p in parts]
    return torch.cat(out) if out else torch.zeros(0, dtype=parts[0].dtype, device=parts[0].device)


def _nibble_meta(nibbles: torch.Tensor, in_features: int) -> torch.Tensor:
    """Per-row nibbles [rows, groups] -> lane-layout meta: 8 nibbles to a dword, one dword per row per unit."""
    rows, words = nibbles.shape[0], meta_row_bytes(in_features) // 4
    nibbles = torch.nn.functional.pad(nibbles.long(), (0, 8 * words - nibbles.shape[1]))
    dwords = (nibbles.reshape(rows, words, 8) << (4 * torch.arange(8, device=nibbles.device))).sum(-1)
    meta_bytes = (dwords[..., None] >> (8 * torch.arange(4, device=nibbles.device))) & 0xFF
    return _to_lanes([meta_bytes.to(torch.uint8)], rows).reshape(rows, meta_row_bytes(in_features))


def _lane_pack(values: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, in_features = kept.shape
    units = in_features // 8
    v = values.view(torch.uint8)
    packed_values = _to_lanes([v[:, :4 * units].reshape(rows, units, 4), v[:, 4 * units:].reshape(rows, 1, in_features % 8 // 2)],
                              rows)
    masks = (kept.reshape(rows, in_features // 4, 4).long() << torch.arange(4, device=kept.device)).sum(-1)  # [rows, groups]
    return packed_values.view(torch.int8).reshape(rows, in_features // 2), _nibble_meta(masks, in_features)


def _lane_unpack(packed_values: torch.Tensor, packed_meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """The kept columns of each 8-column unit, in order, take its 4 values in order (the last unit of 2:4 with
    in_features % 8 == 4: 4 columns, 2 values); the kernels' rule for meta that keeps 4 per unit."""
    rows, device = packed_values.shape[0], packed_values.device
    units, words = in_features // 8, packed_meta.shape[1] // 4
    full, half = _from_lanes(packed_values.reshape(-1).view(torch.uint8), rows, [(units, 4), (1, in_features % 8 // 2)])
    values = torch.cat([full.reshape(rows, 4 * units), half.reshape(rows, in_features % 8 // 2)], 1).view(torch.int8)
    nibbles = _meta_nibbles(packed_meta)
    bits = ((nibbles[..., None] >> torch.arange(4, device=device)) & 1).bool().reshape(rows, 32 * words)
    padded = 8 * ((in_features + 7) // 8)
    # rank: how many kept columns of its unit a column is (itself included)
    rank = bits[:, :padded].long().reshape(rows, padded // 8, 8).cumsum(-1).reshape(rows, padded)[:, :in_features]
    bits = bits[:, :in_features]
    unit_of = torch.arange(in_features, device=device) // 8
    per_unit = torch.where(8 * unit_of + 8 > in_features, 2, 4)  # values the column's unit holds
    take = bits & (rank <= per_unit)
    index = (4 * unit_of + rank - 1).clamp(0, max(values.shape[1] - 1, 0))
    gathered = values.gather(1, index.expand(rows, in_features))
    return torch.where(take, gathered, torch.zeros((), dtype=torch.int8, device=device))


def _float_lane_pack(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 / fp32 2:4: the row-major values in dword units (bf16: a group's 2 values; fp32: one value), lane by
    lane; the meta nibble of a group holds its 2 positions."""
    rows, groups = values.shape[0], values.shape[1] // 2
    units = values.view(torch.uint8).reshape(rows, values.shape[1] * values.element_size() // 4, 4)
    packed_values = _to_lanes([units], rows).view(values.dtype).reshape(rows, 2 * groups)
    positions = indices.long().reshape(rows, groups, 2)
    return packed_values, _nibble_meta(positions[..., 0] | positions[..., 1] << 2, 4 * groups)


def _float_lane_unpack(packed_values: torch.Tensor, packed_meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """Each group's 2 values added at their positions (the kernels' rule, also for a corrupted meta)."""
    rows, groups, device = packed_values.shape[0], in_features // 4, packed_values.device
    if groups == 0:
        return packed_values.new_zeros(rows, 0)
    units = groups * 2 * packed_values.element_size() // 4
    (pieces,) = _from_lanes(packed_values.reshape(-1).view(torch.uint8), rows, [(units, 4)])
    values = pieces.reshape(rows, 4 * units).view(packed_values.dtype).float()  # [rows, 2 * groups], column order
    nibbles = _meta_nibbles(packed_meta)[:, :groups]
    positions = torch.stack([nibbles & 3, nibbles >> 2 & 3], -1).reshape(rows, 2 * groups)
    columns = positions + 4 * (torch.arange(2 * groups, device=device) // 2)
    dense = torch.zeros(rows, in_features, device=device).scatter_add_(1, columns, values)
    return dense.to(packed_values.dtype)


def nm_pack(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU layout: (a copy of values, a bitmask of the kept columns; see csrc/nm/nm.h), or for int8 2:4 / 4:8
    and bf16 / fp32 2:4 the lane layouts of csrc/nm/nm_lanes.h."""
    _check_compressed(values, indices, n, m, LINEAR_WEIGHT_DTYPES)
    rows, in_features = values.shape[0], values.shape[1] // n * m
    # nm_decompress validates the positions (IndexError) and gives the kept columns.
    kept = nm_decompress(torch.ones_like(values, dtype=torch.int8), indices, n, m).bool()
    if values.dtype != torch.int8 and uses_lane_layout(values.dtype, n, m):
        return _float_lane_pack(values.contiguous(), indices)
    if uses_lane_layout(values.dtype, n, m):
        return _lane_pack(values.contiguous(), kept)
    row_bytes = meta_row_bytes(in_features)
    padded = torch.zeros(rows, row_bytes * 8, dtype=torch.bool, device=values.device)
    padded[:, :in_features] = kept
    chunks = padded.reshape(rows, row_bytes // 8, META_CHUNK)
    bits = torch.zeros_like(chunks)
    bits[..., _meta_bit_of_column(values.dtype == torch.int8, values.device)] = chunks
    weights = 2 ** torch.arange(8, device=values.device)
    meta = (bits.reshape(rows, row_bytes, 8).long() * weights).sum(-1).to(torch.uint8)
    return values.contiguous().clone(), meta


def nm_unpack(packed_values: torch.Tensor, packed_meta: torch.Tensor, in_features: int, n: int, m: int) -> torch.Tensor:
    """The dense weight [out_features, in_features] (in packed_values' dtype) of a CPU-packed N:M weight."""
    if packed_values.dtype != torch.int8 and uses_lane_layout(packed_values.dtype, n, m):
        return _float_lane_unpack(packed_values, packed_meta, in_features)
    if uses_lane_layout(packed_values.dtype, n, m):
        return _lane_unpack(packed_values, packed_meta, in_features)
    rows = packed_values.shape[0]
    device = packed_values.device
    row_bytes = packed_meta.shape[1]
    bits = (packed_meta.reshape(rows, row_bytes, 1).long() >> torch.arange(8, device=device)) & 1
    chunks = bits.reshape(rows, row_bytes // 8, META_CHUNK).bool()
    kept = chunks[..., _meta_bit_of_column(packed_values.dtype == torch.int8, device)]
    kept = kept.reshape(rows, row_bytes * 8)[:, :in_features]
    dense = torch.zeros(rows, in_features, dtype=packed_values.dtype, device=device)
    dense[kept] = packed_values.reshape(-1)  # row-major boolean indexing keeps each row's column order
    return dense


def _check_nm_linear(x, packed_values, packed_meta, n, m, out_features, in_features, bias, weight_scale, activation,
                  out_dtype):
    _check_n_m(n, m)
    if packed_values.dtype not in LINEAR_WEIGHT_DTYPES:
        raise TypeError(f"packed_values must have a dtype in {LINEAR_WEIGHT_DTYPES}, got {packed_values.dtype}")
    if packed_meta.dtype != torch.uint8:
        raise TypeError(f"packed_meta must be uint8, got {packed_meta.dtype}")
    if x.dtype not in LINEAR_FLOAT_DTYPES:
        raise TypeError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    int8 = packed_values.dtype == torch.int8
    if not int8 and x.dtype != packed_values.dtype:
        raise TypeError(f"x ({x.dtype}) must have the dtype of packed_values ({packed_values.dtype})")
    if out_features < 0 or in_features < 0 or in_features % m:
        raise ValueError(f"bad out_features={out_features} / in_features={in_features} for m={m}")
    if int8 and in_features > INT8_MAX_IN_FEATURES:
        raise ValueError(f"int8 weights support in_features <= {INT8_MAX_IN_FEATURES}")
    if tuple(packed_values.shape) != (out_features, in_features // m * n):
        raise ValueError(f"packed_values must have shape {(out_features, in_features // m * n)}")
    if tuple(packed_meta.shape) != (out_features, meta_row_bytes(in_features)):
        raise ValueError(f"packed_meta must have shape {(out_features, meta_row_bytes(in_features))}")
    if not (packed_values.is_contiguous() and packed_meta.is_contiguous()):
        raise ValueError("packed_values and packed_meta must be contiguous")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x must be [..., {in_features}], got {list(x.shape)}")
    if x.device != packed_values.device or x.device != packed_meta.device:
        raise ValueError("x, packed_values and packed_meta must be on the same device")
    if bias is not None:
        if bias.dtype not in (torch.float32, x.dtype):
            raise TypeError(f"bias must be float32 or {x.dtype}, got {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != out_features:
            raise ValueError(f"bias must be [{out_features}], got {list(bias.shape)}")
        if bias.device != x.device:
            raise ValueError("bias must be on the device of x")
    if int8:
        if weight_scale is None:
            raise ValueError("int8 packed_values need weight_scale")
        if weight_scale.dtype != torch.float32:
            raise TypeError(f"weight_scale must be float32, got {weight_scale.dtype}")
        if weight_scale.dim() != 1 or weight_scale.shape[0] != out_features:
            raise ValueError(f"weight_scale must be [{out_features}], got {list(weight_scale.shape)}")
        if weight_scale.device != x.device:
            raise ValueError("weight_scale must be on the device of x")
    elif weight_scale is not None:
        raise ValueError("weight_scale is only for int8 packed_values")
    if out_dtype is not None and out_dtype not in LINEAR_FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be float32, bfloat16 or float16, got {out_dtype}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def quantize_per_token_s8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nm_linear's dynamic activation quantization: symmetric s8 per token (row of the last dim), in fp32:
    scale = amax / 127, q = round_half_even(clamp(x * (127 / amax), -127, 127)); a zero row has scale 0, q 0."""
    x = x.float()
    magnitude = torch.where(x.isnan(), 0.0, x.abs())  # NaN is ignored; inf is not
    amax = magnitude.amax(-1, keepdim=True) if x.shape[-1] else x.new_zeros(*x.shape[:-1], 1)
    inv = torch.where(amax > 0, torch.tensor(127.0, device=x.device) / amax, torch.zeros_like(amax))
    q = (x * inv).nan_to_num(nan=-127.0).clamp(-127, 127).round().to(torch.int8)
    return q, (amax / 127.0).squeeze(-1)


def nm_linear_int8_accumulator(x, packed_values, packed_meta, n, m, out_features, in_features):
    """The exact int32 accumulator of the int8 path, acc[..., j] = sum_k q[..., k] * W[j, k], and the per-token
    activation scales; nm_linear returns act(fma(acc, x_scale * weight_scale[j], bias[j]))."""
    q, x_scale = quantize_per_token_s8(x)
    w = nm_unpack(packed_values, packed_meta, in_features, n, m)
    acc = (q.reshape(q.shape[:-1].numel(), in_features).long() @ w.long().T).to(torch.int32)  # exact in int64
    return acc.reshape(*x.shape[:-1], out_features), x_scale




def nm_linear(x, packed_values, packed_meta, n, m, out_features, in_features, bias=None, weight_scale=None,
              activation="none", out_dtype=None):
    """act(x @ W^T + bias) of a CPU-packed N:M weight, computed in float64 and rounded once to out_dtype.

    int8 weights: from the exact int32 accumulator, dequantized as acc * (x_scale * weight_scale) + bias.
    """
    y = nm_linear_float64(x, packed_values, packed_meta, n, m, out_features, in_features, bias, weight_scale,
                          activation, out_dtype)
    return y.to(out_dtype or x.dtype)


def nm_linear_float64(x, packed_values, packed_meta, n, m, out_features, in_features, bias=None, weight_scale=None,
                      activation="none", out_dtype=None):
    """nm_linear before the final rounding to out_dtype: the float64 oracle."""
    _check_nm_linear(x, packed_values, packed_meta, n, m, out_features, in_features, bias, weight_scale, activation,
                  out_dtype)
    if packed_values.dtype == torch.int8:
        acc, x_scale = nm_linear_int8_accumulator(x, packed_values, packed_meta, n, m, out_features, in_features)
        scale = x_scale.unsqueeze(-1) * weight_scale  # fp32 product, as in the kernel
        y = acc.double() * scale.double()
    else:
        w = nm_unpack(packed_values, packed_meta, in_features, n, m)
        y = x.double() @ w.double().T
    if bias is not None:
        y = y + bias.double()
    return _activate(y, activation)


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
