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


def nm_pack(values: torch.Tensor, indices: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a canonical N:M weight (the output of :func:`nm_compress`) into the kernel layout of its device.

    Call once per weight (e.g. when a module is built) and keep both tensors (they are plain tensors, so they
    survive ``state_dict`` save/load); :func:`nm_linear` never repacks. ``values`` is float32, bfloat16,
    float16 or int8 ``[out_features, in_features // m * n]``. On CPU the result is ``(values copy, packed_meta)`` with
    ``packed_meta`` uint8 ``[out_features, ceil(in_features / 64) * 8]``, a bitmask of the kept columns
    (layout in ``csrc/nm/nm.h``; the same for every CPU ISA level, so a packed weight runs on any CPU).
    Raises ``IndexError`` naming the first group whose positions are out of ``[0, m)`` or not ascending.
    """
    return torch.ops.sparseflow.nm_pack(values, indices, n, m)


def nm_linear(
    x: torch.Tensor,
    packed_values: torch.Tensor,
    packed_meta: torch.Tensor,
    n: int,
    m: int,
    out_features: int,
    in_features: int,
    bias: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
    activation: str = "none",
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``act(x @ W.T + bias)`` for an N:M weight ``W [out_features, in_features]`` packed by :func:`nm_pack`.

    ``x`` is ``[..., in_features]`` (any leading shape, any strides), float32, bfloat16 or float16; float
    weights need ``x`` of their dtype. ``activation`` is ``"none"``, ``"relu"``, ``"gelu"`` (erf form) or
    ``"silu"``. The result has ``x``'s leading shape and ``out_dtype`` (float32, bfloat16 or float16; default
    ``x.dtype``). Accumulation is fp32 (16-bit weights and activations are widened exactly); the bias and the
    activation are applied in fp32 and the result is rounded once.

    int8 weights need ``weight_scale`` (float32 ``[out_features]``, per output channel). ``x`` is then
    quantized per token inside the op: symmetric int8, ``scale = amax / 127``, ``q = round(x * 127 / amax)``
    (half to even), and ``y = act(fma(acc, scale * weight_scale, bias))`` from the exact int32 accumulator
    ``acc = q @ W.T`` (``in_features <= 131072`` keeps it in range). The AVX512-VNNI kernel feeds ``q + 128`` as
    u8 to ``vpdpbusd`` and subtracts ``128 * sum(W[j])``; the result is the same integer.

    The packed tensors are trusted: pass them as :func:`nm_pack` returned them.
    """
    return torch.ops.sparseflow.nm_linear(x, packed_values, packed_meta, n, m, out_features, in_features, bias,
                                          weight_scale, activation, out_dtype)
