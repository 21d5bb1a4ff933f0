"""SparseLinear: an nn.Linear whose weight is sparse, run on sparseflow's kernels.

The module keeps the canonical sparse weight (``sparseflow.formats``) as its state: device-independent,
versioned, what ``state_dict()`` saves. For the device it lives on it packs that weight once into the
kernel layout (``nm_pack`` / ``bsr_pack``) - at construction, on ``.to(device)`` and after
``load_state_dict`` - never per call. Packing is deterministic, so a saved and reloaded module has the
same packed weight and the same outputs.

Dense fallback: sparse kernels do not win everywhere (e.g. N:M at large M on CPU, low sparsity). With
``fallback="measure"`` the module times its sparse kernel against ``F.linear`` for a few token counts
when it packs, and routes each token-count bucket to the faster path (keeping a dense copy of the
weight only if some bucket needs it). ``fallback="never"`` always runs sparse; ``"always"`` always dense
(a reference mode).

Memory: N:M on CPU holds one copy of the sparse weight. Row-major layouts: the kernel reads the ``w_values``
buffer itself and adds only a bitmask (one bit per dense weight element). The lane layouts (int8 2:4 / 4:8,
float32 / bfloat16 2:4, ``csrc/nm/nm_lanes.h``) reorder the values: the module then holds only the packed
tensors, ``w_values`` / ``w_indices`` are empty, and the canonical tensors are rebuilt from the packed ones
(a reshuffle) for ``state_dict()``, ``weight_sparse``, ``to_dense()`` and moves. Block-sparse weights on CPU
hold one copy too: the packed native blocks (``csrc/bsr/bsr.h``), from which ``crow`` / ``col`` / ``values`` are
rebuilt the same way (``sparseflow._bsr_layouts``) - unless the canonical weight stores an all-zero block, which
the pack drops, so then the module keeps the canonical tensors beside the packed ones. N:M and block weights on
CUDA hold both (CUTLASS tiles; the canonical tensors stay). A dense fallback copy, kept when some bucket runs
``F.linear``, costs the full dense weight on top (``fallback="never"`` avoids it).

On CUDA the sparse kernels take float16/bfloat16 weights (block formats of any R x C are re-cut into
tensor-core tiles by ``bsr_pack``). A float32 or int8 weight moved to a GPU has no sparse kernel there: with
``fallback="measure"`` or ``"always"`` it runs ``F.linear`` on a dense copy (cuBLAS); ``fallback="never"``
refuses the move with a TypeError.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import _bsr_layouts, _lanes, ops
from ..formats import BlockSparseWeight, NMWeight, SparseWeight

ACTIVATIONS = ("none", "relu", "gelu", "silu")
_ACTIVATION_FNS = {"none": lambda y: y, "relu": F.relu, "gelu": F.gelu, "silu": F.silu}

# Token-count buckets for the sparse/dense decision: (upper bound of M, M used to measure).
M_BUCKETS = ((4, 1), (24, 16), (96, 64), (None, 256))

# Weight dtypes the CUDA kernels of nm_linear / bsr_linear take.
CUDA_WEIGHT_DTYPES = (torch.float16, torch.bfloat16)

FormatSpec = str | tuple[int, int]

# The canonical tensors a one-copy layout replaces (rebuilt from the packed ones), per weight kind.
_REBUILT_FROM_PACKED = {"nm": ("values", "indices"), "bsr": ("crow", "col", "values")}


def _bucket(m_tokens: int) -> int:
    for i, (upper, _) in enumerate(M_BUCKETS):
        if upper is None or m_tokens <= upper:
            return i
    return len(M_BUCKETS) - 1


def parse_format(spec: FormatSpec) -> tuple[str, tuple[int, int]]:
    """'2:4' / '4:8' -> ('nm', (n, m)); (R, C) or 'RxC' -> ('bsr', (R, C))."""
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, int) and v > 0 for v in spec):
        return "bsr", spec
    if isinstance(spec, str):
        text = spec.strip().lower()
        for sep, kind in ((":", "nm"), ("x", "bsr")):
            parts = text.split(sep)
            if len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts):
                return kind, (int(parts[0]), int(parts[1]))
    raise ValueError(f"sparseflow.SparseLinear: format must be 'n:m' (e.g. '2:4'), 'RxC' or (R, C) blocks, got {spec!r}")


def sparse_weight_from_dense(dense: torch.Tensor, format: FormatSpec, *, dtype: torch.dtype | None = None,
                             prune: bool = False) -> SparseWeight:
    """The canonical sparse weight of ``format`` ('n:m', 'RxC' or (R, C)) for a dense weight with zeros."""
    kind, params = parse_format(format)
    if kind == "nm":
        return NMWeight.from_dense(dense.detach(), n=params[0], m=params[1], prune=prune, dtype=dtype)
    return BlockSparseWeight.from_dense(dense.detach(), block=params, dtype=dtype)


class SparseLinear(nn.Module):
    """``y = activation(x @ W.T + bias)`` with ``W`` an :class:`NMWeight` or :class:`BlockSparseWeight`."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None = None, *, activation: str = "none",
                 out_dtype: torch.dtype | None = None,
                 fallback: Literal["measure", "never", "always"] = "measure"):
        super().__init__()
        if not isinstance(weight, (NMWeight, BlockSparseWeight)):
            raise TypeError(f"sparseflow.SparseLinear: weight must be an NMWeight or BlockSparseWeight, got {type(weight).__name__}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"sparseflow.SparseLinear: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if fallback not in ("measure", "never", "always"):
            raise ValueError(f"sparseflow.SparseLinear: fallback must be 'measure', 'never' or 'always', got {fallback!r}")
        weight.validate()
        self.out_features, self.in_features = weight.shape
        if isinstance(weight, NMWeight) and weight.padded_shape[1] != self.in_features:
            raise ValueError(
                f"sparseflow.SparseLinear: in_features={self.in_features} is not a multiple of m={weight.m}; "
                "N:M kernels need whole groups (use a block format or pad the layer)")
        self.kind = "nm" if isinstance(weight, NMWeight) else "bsr"
        self.pattern = (weight.n, weight.m) if self.kind == "nm" else weight.block
        self.weight_format = type(weight)
        self.activation = activation
        self.out_dtype = out_dtype
        self.fallback = fallback
        for name, t in weight.state_dict().items():
            self.register_buffer(f"w_{name}", t)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._packed: tuple[torch.Tensor, ...] | None = None
        # True while w_values / w_indices are empty and the canonical tensors live reordered in _packed
        self._canonical_in_packed = False
        self._dense_weight: torch.Tensor | None = None
        self._use_dense: list[bool] = [False] * len(M_BUCKETS)
        self._pack()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, linear: nn.Linear, format: FormatSpec = "2:4", *, dtype: torch.dtype | None = None,
                   activation: str = "none", fallback: Literal["measure", "never", "always"] = "measure",
                   prune: bool = False) -> SparseLinear:
        """Build from an ``nn.Linear`` whose weight already has the format's zeros (``prune=True`` for N:M
        keeps the largest n of every m instead). ``dtype``: weight storage/compute dtype (float32,
        bfloat16, float16 or int8 with per-channel scales); default: the linear's dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"sparseflow.SparseLinear.from_dense: expected nn.Linear, got {type(linear).__name__}")
        weight = sparse_weight_from_dense(linear.weight, format, dtype=dtype, prune=prune)
        return cls.from_sparse_weight(weight, linear, activation=activation, fallback=fallback)

    @classmethod
    def from_sparse_weight(cls, weight: SparseWeight, linear: nn.Linear, *, activation: str = "none",
                           fallback: Literal["measure", "never", "always"] = "measure") -> SparseLinear:
        """Build with an already converted weight, taking the bias and output dtype from ``linear``."""
        bias = linear.bias
        if bias is not None and weight.dtype != torch.int8:
            bias = bias.detach().to(weight.dtype)
        out_dtype = linear.weight.dtype if weight.dtype == torch.int8 else None
        return cls(weight, bias, activation=activation, out_dtype=out_dtype, fallback=fallback)

    @property
    def weight_sparse(self) -> SparseWeight:
        """The canonical sparse weight (a view of this module's buffers, or rebuilt from the packed layout)."""
        sd = {name[2:]: t for name, t in self._buffers.items() if name.startswith("w_")}
        if self._canonical_in_packed:
            sd.update(self._canonical_from_packed())
        return self.weight_format.from_state_dict(sd)

    def _canonical_from_packed(self) -> dict[str, torch.Tensor]:
        """The canonical tensors that the packed ones replace (all but ``scale``), by state-dict name."""
        if self.kind == "nm":
            tensors = _lanes.unpack(*self._packed, *self.pattern, self.in_features)
        else:
            meta, rowptr, indices, packed_values, _ = self._packed
            tensors = _bsr_layouts.unpack(meta, rowptr, indices, packed_values, self.pattern)
        return dict(zip(_REBUILT_FROM_PACKED[self.kind], tensors))

    def _restore_canonical(self) -> None:
        """Fill the canonical buffers again from the packed layout (before a move or a repack)."""
        if self._canonical_in_packed:
            for name, t in self._canonical_from_packed().items():
                setattr(self, f"w_{name}", t)
            self._canonical_in_packed = False

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._canonical_in_packed:
            for name, t in self._canonical_from_packed().items():
                destination[prefix + f"w_{name}"] = t

    def to_dense(self) -> nn.Linear:
        """An equivalent ``nn.Linear`` (int8 weights are dequantized to the output dtype)."""
        w = self.weight_sparse
        dtype = self.out_dtype or w.dtype
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(w.to_dense(dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    # ------------------------------------------------------------------ packing
    def _pack(self) -> None:
        self._restore_canonical()  # packing again packs the canonical tensors
        self._packed = None
        self._dense_weight = None
        values = self.w_values
        if values.device.type == "meta":
            return
        if values.device.type == "cuda" and values.dtype not in CUDA_WEIGHT_DTYPES:  # decided before reading data
            if self.fallback == "never":
                raise TypeError(
                    f"sparseflow.SparseLinear: {str(values.dtype).removeprefix('torch.')} weights have no sparse CUDA "
                    "kernel (float16/bfloat16 only; float32 and int8 run sparse on CPU); build the layer with dtype="
                    "torch.float16 or torch.bfloat16 (or .half() a float32 one), or use fallback='measure' to run it "
                    "densely (F.linear) on the GPU")
            w = self.weight_sparse
            self._use_dense = [True] * len(M_BUCKETS)
            self._dense_weight = w.to_dense(self.out_dtype or w.dtype)
            return
        w = self.weight_sparse
        on_cpu = values.device.type == "cpu"
        lanes = self.kind == "nm" and on_cpu and _lanes.uses_lane_layout(values.dtype, *self.pattern)
        if self.kind == "nm":
            packed_values, packed_meta = torch.ops.sparseflow.nm_pack(w.values, w.indices, w.n, w.m)
            if on_cpu and not lanes and values.is_contiguous():
                # The other CPU layouts keep the canonical values as they are (csrc/nm/nm.h): the kernel reads
                # the w_values buffer itself instead of nm_pack's copy.
                packed_values = values
            self._packed = (packed_values, packed_meta)
        else:
            self._packed = tuple(torch.ops.sparseflow.bsr_pack(w.crow, w.col, w.values, self.out_features, self.in_features))
        one_copy = lanes or (self.kind == "bsr" and _bsr_layouts.is_cpu_layout(self._packed[0])
                             and _bsr_layouts.packed_holds_canonical(w.values))
        self._use_dense = [self.fallback == "always"] * len(M_BUCKETS)
        if self.fallback == "measure":
            self._measure()
        if any(self._use_dense):
            self._dense_weight = w.to_dense(self.out_dtype or w.dtype)
        if one_copy:  # the packed tensors are the one copy (the empty buffers keep the dtypes and the device)
            for name in _REBUILT_FROM_PACKED[self.kind]:
                t = getattr(self, f"w_{name}")
                setattr(self, f"w_{name}", t.new_empty((0,) + tuple(t.shape[1:])))
            self._canonical_in_packed = True

    def _compute_dtype(self) -> torch.dtype:
        w_dtype = self.w_values.dtype
        return self.out_dtype if w_dtype == torch.int8 else w_dtype

    @torch.no_grad()
    def _measure(self) -> None:
        """Route each token-count bucket to the faster of the sparse kernel and F.linear."""
        device = self.w_values.device
        dtype = self._compute_dtype()
        dense = self.weight_sparse.to_dense(dtype)
        for i, (_, m_tokens) in enumerate(M_BUCKETS):
            x = torch.randn(m_tokens, self.in_features, device=device, dtype=dtype)
            sparse_s = _time(lambda: self._sparse_forward(x), device)
            dense_s = _time(lambda: F.linear(x, dense, self.bias), device)
            self._use_dense[i] = dense_s < sparse_s

    def _apply(self, fn, recurse=True):
        self._restore_canonical()  # the move applies to the canonical tensors
        super()._apply(fn, recurse)
        self._pack()  # a device or dtype move invalidates the packed layout
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The sparse tensors' sizes depend on the weight (nnz), so they are replaced, not copied into.
        mine = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        sd = {k[2:]: v for k, v in mine.items() if k.startswith("w_")}
        if not sd:
            missing_keys.extend(prefix + n for n in self._buffers if n.startswith("w_"))
            return
        try:
            weight = SparseWeight.from_state_dict(sd)
            weight.validate()
        except (TypeError, ValueError, IndexError) as e:
            error_msgs.append(f"{prefix}: invalid sparse weight: {e}")
            return
        pattern = (weight.n, weight.m) if isinstance(weight, NMWeight) else getattr(weight, "block", None)
        if (type(weight) is not self.weight_format or tuple(weight.shape) != (self.out_features, self.in_features)
                or pattern != self.pattern):
            # (a 4:8 checkpoint in a 2:4 layer would pack and run as 2:4: wrong numbers)
            error_msgs.append(f"{prefix}: checkpoint holds {weight!r}, this layer is {self.weight_format.__name__} "
                              f"{(self.out_features, self.in_features)} with pattern {self.pattern}")
            return
        dtype = self.w_values.dtype
        if weight.dtype != dtype:  # float to float converts, as load_state_dict does for dense tensors
            if torch.int8 in (weight.dtype, dtype):
                error_msgs.append(f"{prefix}: checkpoint weight is {weight.dtype}, this layer's is {dtype} (int8 and float "
                                  "weights do not convert; build the layer with the checkpoint's dtype)")
                return
            weight = dataclasses.replace(weight, values=weight.values.to(dtype))
        if "bias" in mine and (self.bias is None or mine["bias"].shape != self.bias.shape):
            error_msgs.append(f"{prefix}bias: shape {tuple(mine['bias'].shape)} does not match this layer")
            return
        device = self.w_values.device
        for name in [n for n in self._buffers if n.startswith("w_")]:
            del self._buffers[name]
        for name, t in weight.state_dict().items():
            self.register_buffer(f"w_{name}", t.to(device))
        self._canonical_in_packed = False  # the loaded buffers are the canonical tensors
        if "bias" in mine:
            self.bias = mine["bias"].to(device=device, dtype=self.bias.dtype)
        elif self.bias is not None:
            missing_keys.append(prefix + "bias")
        if strict:
            unexpected_keys.extend(prefix + k for k in mine if not k.startswith("w_") and k != "bias")
        self._pack()

    # ------------------------------------------------------------------ forward
    def _sparse_forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.w_scale if "w_scale" in self._buffers else None
        if self.kind == "nm":
            n, m = self.pattern
            return ops.nm_linear(x, *self._packed, n, m, self.out_features, self.in_features, self.bias, scale,
                                 self.activation, self.out_dtype)
        return ops.bsr_linear(x, *self._packed, self.out_features, self.in_features, self.bias, scale, self.activation,
                              self.out_dtype)

    def runs_sparse(self, m_tokens: int) -> bool:
        """Whether an input of m_tokens rows runs the sparse kernel (False: the measured dense fallback)."""
        return not self._use_dense[_bucket(m_tokens)]

    def kernel(self, m_tokens: int) -> str:
        """What runs an input of m_tokens rows: ``"F.linear (dense fallback)"``, or on CPU the sparse kernel's name
        (:func:`sparseflow.ops.bsr_linear_cpu_kernel` / :func:`~sparseflow.ops.nm_linear_cpu_kernel`), on CUDA
        ``"cuda:nm_linear"`` / ``"cuda:bsr_linear"``."""
        self._check_materialized()
        if self._use_dense[_bucket(m_tokens)]:
            return "F.linear (dense fallback)"
        device = self.w_values.device.type
        if device != "cpu":
            return f"{device}:{self.kind}_linear"
        if self.kind == "nm":
            return ops.nm_linear_cpu_kernel(self._packed[0].dtype, *self.pattern, m_tokens)
        return ops.bsr_linear_cpu_kernel(self._packed[0], m_tokens)

    def _check_materialized(self) -> None:
        if self._packed is None and self._dense_weight is None:
            raise RuntimeError("sparseflow.SparseLinear: the weight is on the meta device; move the module to a real device first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_materialized()
        m_tokens = x.numel() // max(x.shape[-1], 1)
        if self._use_dense[_bucket(m_tokens)]:
            return _ACTIVATION_FNS[self.activation](F.linear(x.to(self._dense_weight.dtype), self._dense_weight, self.bias))
        return self._sparse_forward(x)

    def extra_repr(self) -> str:
        w = self.weight_sparse
        dense_buckets = [M_BUCKETS[i][1] for i, d in enumerate(self._use_dense) if d]
        return (f"in_features={self.in_features}, out_features={self.out_features}, weight={w!r}, "
                f"bias={self.bias is not None}, activation={self.activation}, dense_for_M={dense_buckets}")


def _time(fn, device: torch.device, repeats: int = 5) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best
