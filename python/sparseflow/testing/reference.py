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


# ---------------------------------------------------------------------------------------------- N:M linear

LINEAR_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
LINEAR_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ACTIVATIONS = ("none", "relu", "gelu", "silu")
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


def _check_pack(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> None:
    _check_n_m(n, m)
    if values.dtype not in LINEAR_WEIGHT_DTYPES:
        raise TypeError(f"values must have a dtype in {LINEAR_WEIGHT_DTYPES}, got {values.dtype}")
    if indices.dtype != torch.uint8:
        raise TypeError(f"indices must be uint8, got {indices.dtype}")
    if values.dim() != 2 or values.shape != indices.shape or values.shape[1] % n:
        raise ValueError(f"values and indices must be equal 2-D shapes with a multiple of n={n} columns")
    if values.device != indices.device:
        raise ValueError("values and indices must be on the same device")


def nm_pack(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU layout: (a copy of values, a bitmask of the kept columns; see csrc/nm/nm.h)."""
    _check_pack(values, indices, n, m)
    rows, in_features = values.shape[0], values.shape[1] // n * m
    # nm_decompress validates the positions (IndexError) and gives the kept columns.
    kept = nm_decompress(torch.ones_like(values, dtype=torch.int8), indices, n, m).bool()
    row_bytes = meta_row_bytes(in_features)
    padded = torch.zeros(rows, row_bytes * 8, dtype=torch.bool, device=values.device)
    padded[:, :in_features] = kept
    chunks = padded.reshape(rows, row_bytes // 8, META_CHUNK)
    bits = torch.zeros_like(chunks)
    bits[..., _meta_bit_of_column(values.dtype == torch.int8, values.device)] = chunks
    weights = 2 ** torch.arange(8, device=values.device)
    meta = (bits.reshape(rows, row_bytes, 8).long() * weights).sum(-1).to(torch.uint8)
    return values.contiguous().clone(), meta


def nm_unpack(packed_values: torch.Tensor, packed_meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """The dense weight [out_features, in_features] (in packed_values' dtype) of a CPU-packed N:M weight."""
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


def _check_linear(x, packed_values, packed_meta, n, m, out_features, in_features, bias, weight_scale, activation,
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


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    q, x_scale = quantize_per_token(x)
    w = nm_unpack(packed_values, packed_meta, in_features)
    acc = (q.reshape(q.shape[:-1].numel(), in_features).long() @ w.long().T).to(torch.int32)  # exact in int64
    return acc.reshape(*x.shape[:-1], out_features), x_scale


def _activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    return {"none": lambda v: v, "relu": torch.relu, "gelu": torch.nn.functional.gelu,
            "silu": torch.nn.functional.silu}[activation](y)


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
    _check_linear(x, packed_values, packed_meta, n, m, out_features, in_features, bias, weight_scale, activation,
                  out_dtype)
    if packed_values.dtype == torch.int8:
        acc, x_scale = nm_linear_int8_accumulator(x, packed_values, packed_meta, n, m, out_features, in_features)
        scale = x_scale.unsqueeze(-1) * weight_scale  # fp32 product, as in the kernel
        y = acc.double() * scale.double()
    else:
        w = nm_unpack(packed_values, packed_meta, in_features)
        y = x.double() @ w.double().T
    if bias is not None:
        y = y + bias.double()
    return _activate(y, activation)
