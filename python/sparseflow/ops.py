"""Typed, documented wrappers over ``torch.ops.sparseflow``. Each calls exactly one op."""

from __future__ import annotations

import torch

from . import _C, _loader  # noqa: F401  (_loader loads the kernels)

_NM_LINEAR = torch.ops.sparseflow.nm_linear.default
_BSR_LINEAR = torch.ops.sparseflow.bsr_linear.default


def _call(direct, overload, tensors: tuple, *args):
    """A per-call op through its direct binding in ``sparseflow._C`` (csrc/op_bindings.cpp) where it may: the
    same op through the same dispatcher, ~5 us less per call than torch.ops' generic argument conversion.
    torch.ops takes the call while torch.compile traces (it must see the torch.ops call), when a tensor
    subclass or a mode has __torch_function__ (only torch.ops calls it), and after pybind11 refuses an
    argument of the wrong Python type: its message lists every argument's value, torch's names the argument.
    A TypeError the op itself raised (e.g. for x's dtype) propagates as it is, without running the op again."""
    if not torch.compiler.is_compiling() and not torch.overrides.has_torch_function(tensors):
        try:
            return direct(*args)
        except TypeError as error:
            if "incompatible function arguments" not in str(error):  # pybind11's conversion failure
                raise
    return overload(*args)


def nm_compress(dense: torch.Tensor, n: int = 2, m: int = 4, prune: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a dense ``[rows, cols]`` matrix whose every group of ``m`` columns has at most ``n`` non-zeros.

    Returns ``(values, indices)``, both ``[rows, cols // m * n]``: the kept entries in column order and
    their uint8 positions inside each group (strictly ascending). Groups with fewer than ``n``
    non-zeros are padded with zeros at the lowest free positions. ``-0.0`` counts as zero.
    Raises ``ValueError`` naming the first row and group that has more than ``n`` non-zeros.

    With ``prune=True`` any dense matrix is accepted: each group keeps its ``n`` entries of largest
    magnitude (magnitude pruning), in the same format. Equal magnitudes keep the lower position (``3`` and
    ``-3``, ``0.0`` and ``-0.0``); NaN counts as larger than every number, inf included, and NaNs tie
    with each other; int8 ``-128`` has magnitude 128. The result is bit-identical to ``nm_compress`` of
    the dense matrix with the other entries zeroed (kept zeros become the ``+0`` padding). It never
    raises for the data and, on CUDA, does not synchronize with the host.
    """
    return torch.ops.sparseflow.nm_compress(dense, n, m, prune)


def nm_decompress(values: torch.Tensor, indices: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Inverse of :func:`nm_compress`: returns the dense ``[rows, cols // n * m]`` matrix.

    Raises ``IndexError`` naming the first group whose positions are out of ``[0, m)`` or not ascending.
    """
    return torch.ops.sparseflow.nm_decompress(values, indices, n, m)


def bsr_pack(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, out_features: int, in_features: int,
             kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack a canonical block-sparse weight once into this device's kernel layout.

    ``crow`` int32 [ceil(out/R) + 1], ``col`` int32 [nnz] (block columns, strictly ascending per block-row)
    and ``values`` [nnz, R, C] (float32, bfloat16 or int8) describe W [out_features, in_features]; blocks may
    overhang the matrix. The blocks are re-cut into the kernel's native blocks (all-zero ones dropped):
    ``kernel`` "4x1" (int8, the paper's VNNI pattern; fp32/bf16: 4x4 tiles of 4 blocks), "16x1" (int8: 16x4
    tiles, the faster decode; fp32/bf16) or "1x16" (fp32/bf16), or "auto" (int8: 16x1 when R is a multiple of
    16, else 4x1; float: 1x16 when C > R, else 16x1 when R is a multiple of 16, else 4x1).
    in_features must be <= 65536 (16-bit indices).

    Returns ``(meta, rowptr, indices, packed_values, compensation)``: plain tensors, to be kept (e.g. as
    buffers, so they survive ``state_dict`` save/load) and passed to :func:`bsr_linear`. ``meta`` (int64, CPU)
    records the format version, layout, dtype and sizes; ``compensation`` holds each int8 output channel's
    weight sum (empty for float weights). Raises IndexError naming the first bad crow/col entry.
    On CUDA (float16/bfloat16 only; float32 and int8 block weights run on the CPU) the kernel works on square
    T x T tensor-core tiles, T in 16/32/64/128 (``csrc/bsr/bsr_cuda.h``): ``kernel`` "auto" keeps square
    blocks of those sizes as they are (all-zero ones included) and re-cuts any other R x C blocks into 16 x 16
    tiles; "TxT" (e.g. "64x64") re-cuts into T x T tiles unless the blocks already are T x T. A re-cut stores
    only the tiles holding a non-zero, so the number of tiles depends on the data (the pack synchronises
    once to read it) and the zeros it stores inside them (fill-in) cost as much as non-zeros.
    """
    return torch.ops.sparseflow.bsr_pack(crow, col, values, out_features, in_features, kernel)


def bsr_linear(x: torch.Tensor, meta: torch.Tensor, rowptr: torch.Tensor, indices: torch.Tensor,
               packed_values: torch.Tensor, compensation: torch.Tensor, out_features: int, in_features: int,
               bias: torch.Tensor | None = None, weight_scale: torch.Tensor | None = None,
               activation: str = "none", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``y = act(x @ W.T + bias)`` with W packed by :func:`bsr_pack`; x is ``[..., in_features]``.

    float32/bfloat16 weights take x of the same dtype and accumulate in fp32. int8 weights take float32 or
    bfloat16 x, quantize it per token inside the op (dynamic, asymmetric uint8 with a zero point), accumulate
    ``sum((xq - zp) * W)`` exactly in int32, and dequantize with the per-token scale and ``weight_scale``
    (float32 [out_features], required) fused with bias and activation. ``out_dtype``: float32 or bfloat16
    (default: x's dtype), or int32 for the int8 raw accumulator (no bias/activation then).
    ``activation``: "none", "relu", "gelu" (exact, erf) or "silu". On CUDA: float16/bfloat16, ``out_dtype``
    x's dtype or float32, in_features % 8; never synchronises (meta stays on the CPU), CUDA-graph safe.
    """
    tensors = (x, meta, rowptr, indices, packed_values, compensation, bias, weight_scale)
    return _call(_C.bsr_linear, _BSR_LINEAR, tensors, x, meta, rowptr, indices, packed_values, compensation,
                 out_features, in_features, bias, weight_scale, activation, out_dtype)


def bsr_linear_cpu_kernel(meta: torch.Tensor, tokens: int) -> str:
    """The kernel :func:`bsr_linear` runs on CPU for the weight packed with ``meta`` and an x of ``tokens`` rows,
    at the ISA level in force (``sparseflow._C.selected_cpu_isa()``): ``"<isa>:<kernel>"``, e.g.
    ``"avx512_vnni:decode_16x1"``, ``"avx512_bf16:16x1"``, ``"amx:int8_16x1"`` or ``"portable"``. The op's
    dispatch makes the same choice, so the name is the kernel that runs."""
    return _C.bsr_linear_cpu_kernel(meta, tokens)


def nm_pack(values: torch.Tensor, indices: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a canonical N:M weight (the output of :func:`nm_compress`) into the kernel layout of its device.

    Call once per weight (e.g. when a module is built) and keep both tensors (they are plain tensors, so they
    survive ``state_dict`` save/load); :func:`nm_linear` never repacks. ``values`` is float32, bfloat16,
    float16 or int8 ``[out_features, in_features // m * n]``. On CPU the result is ``(values copy, packed_meta)`` with
    ``packed_meta`` uint8 ``[out_features, ceil(in_features / 64) * 8]``, a bitmask of the kept columns
    (layout in ``csrc/nm/nm.h``; the same for every CPU ISA level, so a packed weight runs on any CPU); int8
    2:4 / 4:8 and float32 / bfloat16 2:4 reorder both into 16-row blocks, one 4-byte lane per row (the lane
    layouts, ``csrc/nm/nm_lanes.h``).
    On CUDA only 2:4 float16/bfloat16 packs, into the sparse-tensor-core layout of the GPU: what
    :func:`nm_pack_cutlass` gives for target 90 on sm90 (when out % 8 == 0 and in % 16 == 0), else target 80.
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

    On CUDA (2:4 float16/bfloat16 on sparse tensor cores, docs/cuda-kernels.md): ``x`` of the weight's dtype,
    ``out_dtype`` x's dtype or float32, bias of x's dtype or float32, no ``weight_scale``; in_features % 64 for
    weights packed for target 80, out % 8 and in % 16 for target 90. Never synchronises; CUDA-graph safe.

    The packed tensors are trusted: pass them as :func:`nm_pack` returned them.
    """
    return _call(_C.nm_linear, _NM_LINEAR, (x, packed_values, packed_meta, bias, weight_scale),
                 x, packed_values, packed_meta, n, m, out_features, in_features, bias, weight_scale, activation,
                 out_dtype)


def nm_linear_cpu_kernel(weight_dtype: torch.dtype, n: int, m: int, tokens: int) -> str:
    """The kernel :func:`nm_linear` runs on CPU for n:m weights of ``weight_dtype`` and a contiguous x of
    ``tokens`` rows, at the ISA level in force: ``"<isa>:<kernel>"``, e.g. ``"avx512_vnni:lanes"`` (the 2:4 / 4:8
    lane layout), ``"avx512:rows_wide"`` or ``"portable"``. The op's dispatch makes the same choice."""
    return _C.nm_linear_cpu_kernel(weight_dtype, n, m, tokens)


# ---- CUDA 2:4 layout (branch cuda)

def nm_pack_cutlass(values: torch.Tensor, indices: torch.Tensor, n: int = 2, m: int = 4,
                    target: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a canonical 2:4 weight (:func:`nm_compress`'s output) into the operands of CUTLASS's sparse
    tensor-core GEMM for ``target``: 80, CUTLASS 2.x ``SparseGemm`` (``nm_linear``'s kernel on sm80 and later),
    or 90, CUTLASS 3.x on sm90a (``nm_linear``'s kernel on H100/H200 when out % 8 == 0 and in % 16 == 0).

    Works on any device, so a weight can be packed on a CPU and moved to the GPU (``nm_pack`` on a CUDA
    tensor picks the target for its GPU). Returns ``(packed_values, packed_meta)``: the values zero-padded to
    ``[rows_p, cols_v // 2]`` and the metadata, int16 ``[rows_p, cols_p // 16]`` (target 80) or uint8
    ``[rows_p, cols_p // 8]`` (target 90) in CUTLASS's order; ``rows_p``/``cols_p``/``cols_v`` round the
    row/column counts up to 32/64/64 (80) or 64/128/16 (90). The metadata dtype tells ``nm_linear`` which
    layout it has.
    Only float16 and bfloat16 have a 2:4 tensor-core layout. Raises ``IndexError`` naming the first group
    whose positions are not strictly ascending in ``[0, 4)``.
    """
    return torch.ops.sparseflow.nm_pack_cutlass(values, indices, n, m, target)
