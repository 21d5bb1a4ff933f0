"""Canonical sparse weight formats: the handoff between pruning and the kernels.

Pruning produces ordinary dense tensors with zeros. ``from_dense`` checks that the zeros follow the
format's pattern, packs the non-zeros and reports the real sparsity; ``to_dense`` gives the dense tensor
back. Two formats:

* :class:`NMWeight`: N:M semi-structured sparsity (at most ``n`` non-zeros in every group of ``m``
  consecutive input columns, e.g. 2:4).
* :class:`BlockSparseWeight`: block-sparse rows (BSR) with any positive ``R x C`` block.

Both hold plain tensors (values in float32/float16/bfloat16, or int8 with float32 per-output-channel
scales), may have a logical shape that is not a multiple of the group or block (packing pads with
zeros, ``to_dense`` crops), and round trip through ``state_dict()`` / ``from_state_dict()``: a flat dict
of tensors only, so it can go straight into ``safetensors`` or a module's buffers. The dict records the
format name and a format version; :meth:`SparseWeight.from_state_dict` picks the right class.

``validate()`` checks every invariant and says precisely what is wrong (which row, group, block or
index; expected vs got) with the project's exception types: ``TypeError`` for dtypes, ``ValueError``
for shapes, devices and values, ``IndexError`` for bad entries of an index tensor.

Example::

    w = NMWeight.from_dense(pruned_linear.weight, n=2, m=4)   # ValueError names the first bad group
    print(w.sparsity, w.nbytes)
    safetensors.torch.save_file(w.state_dict(), "w.safetensors")
    w2 = SparseWeight.from_state_dict(safetensors.torch.load_file("w.safetensors"))
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F

from . import ops

__all__ = ["SparseWeight", "NMWeight", "BlockSparseWeight"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
VALUE_DTYPES = FLOAT_DTYPES + (torch.int8,)
_MAX_M = 64  # the limit of the nm_compress / nm_decompress kernels

_FORMATS: dict[str, type[SparseWeight]] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_names(dtypes) -> str:
    return ", ".join(_dtype_name(d) for d in dtypes)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _first(mask: torch.Tensor) -> list[int] | None:
    """The lowest (row-major) index where ``mask`` is true, or None."""
    hits = mask.nonzero()
    return hits[0].tolist() if hits.shape[0] else None


def _check_dense(op: str, dense) -> torch.Tensor:
    if not isinstance(dense, torch.Tensor):
        raise TypeError(f"{op}: dense must be a torch.Tensor, got {type(dense).__name__}")
    if dense.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: dense must have dtype {_dtype_names(FLOAT_DTYPES)}, got {_dtype_name(dense.dtype)}"
            + (" (pass a floating-point tensor and dtype=torch.int8 to quantize)" if dense.dtype == torch.int8 else "")
        )
    if dense.dim() != 2:
        raise ValueError(f"{op}: dense must be 2-D [out_features, in_features], got shape {list(dense.shape)}")
    return dense.detach()  # packed weights are inference data: never carry autograd history


def _check_target_dtype(op: str, dtype) -> None:
    if dtype is not None and dtype not in VALUE_DTYPES:
        raise TypeError(f"{op}: dtype must be None or one of {_dtype_names(VALUE_DTYPES)}, got {dtype}")


def _quantize_rows(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``scale = absmax / 127``, ``q = round(x / scale)``; all-zero rows get scale 0."""
    x = dense.to(torch.float32)
    absmax = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    scale = absmax / 127
    q = torch.round(x / torch.where(scale > 0, scale, 1).unsqueeze(1)).clamp_(-127, 127)
    return q.to(torch.int8), scale


def _convert(dense: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tensor to store (cast or int8-quantized) and its scale (None unless int8)."""
    if dtype == torch.int8:
        return _quantize_rows(dense)
    return (dense if dtype is None else dense.to(dtype)), None


def _dequantize(values: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor:
    if scale is None:
        return values if dtype is None else values.to(dtype)
    dense = values.to(torch.float32) * scale.unsqueeze(1)
    return dense if dtype is None else dense.to(dtype)


def _count_nonzero(op: str, t: torch.Tensor) -> int:
    if t.device.type == "meta":
        raise ValueError(f"{op}: the weight is on the meta device, which holds no values to count")
    return int(torch.count_nonzero(t))


def _check_int_pair(op: str, name: str, value, minimum: int) -> tuple[int, int]:
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ValueError(f"{op}: {name} must be a tuple of 2 ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum} in both dims, got {value}")
    return value


def _check_tensor(op: str, name: str, t, dtypes, dim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype {_dtype_names(dtypes)}, got {_dtype_name(t.dtype)}")
    if t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D {layout}, got shape {list(t.shape)}")


def _encode_name(name: str) -> torch.Tensor:
    return torch.tensor(list(name.encode("ascii")), dtype=torch.uint8)


def _read_header(op: str, sd) -> tuple[str, int]:
    if not isinstance(sd, Mapping):
        raise TypeError(f"{op}: expected a state dict (a mapping of names to tensors), got {type(sd).__name__}")
    for key in ("format", "format_version"):
        if key not in sd:
            raise ValueError(
                f"{op}: the state dict has no {key!r} entry; it was not written by SparseWeight.state_dict()"
            )
    fmt, version = sd["format"], sd["format_version"]
    if not (isinstance(fmt, torch.Tensor) and fmt.dtype == torch.uint8 and fmt.dim() == 1):
        raise ValueError(f"{op}: 'format' must be a 1-D uint8 tensor of ASCII bytes, got {fmt!r}")
    if not (isinstance(version, torch.Tensor) and version.dim() == 0 and not version.is_floating_point()):
        raise ValueError(f"{op}: 'format_version' must be a 0-D integer tensor, got {version!r}")
    return bytes(fmt.tolist()).decode("ascii", errors="replace"), int(version)


def _read_ints(op: str, key: str, t) -> int | tuple[int, ...]:
    if not (isinstance(t, torch.Tensor) and t.dim() <= 1 and t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{op}: {key!r} must be a 0-D or 1-D int64 tensor, got {t!r}")
    value = t.tolist()
    return tuple(value) if isinstance(value, list) else value


class SparseWeight:
    """Common base of the sparse weight formats: state-dict versioning, device moves, sizes.

    Subclasses are dataclasses that declare their tensors in ``_tensor_fields`` and their integer
    metadata (ints and int tuples) in ``_int_fields``; ``scale`` (optional) is common to all.
    """

    format_name: ClassVar[str]  # stored in the state dict; never change it for an existing format
    format_version: ClassVar[int]  # bump when the stored layout changes, and keep reading the old one
    _tensor_fields: ClassVar[tuple[str, ...]]
    _int_fields: ClassVar[tuple[str, ...]]

    values: torch.Tensor
    shape: tuple[int, int]
    scale: torch.Tensor | None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _FORMATS[cls.format_name] = cls

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {name: getattr(self, name) for name in self._tensor_fields}
        if self.scale is not None:
            tensors["scale"] = self.scale
        return tensors

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored values (``torch.int8`` when quantized)."""
        return self.values.dtype

    @property
    def nbytes(self) -> int:
        """Bytes actually stored by the tensors (values, indices, scales), padding included."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    @property
    def density(self) -> float:
        """Fraction of non-zeros in the logical dense matrix: ``1 - sparsity``."""
        return 1.0 - self.sparsity

    @property
    def sparsity(self) -> float:
        """Fraction of zeros in the logical ``shape`` (padding excluded); 0.0 for an empty matrix.

        Counts the stored values, so for int8 weights entries that quantized to 0 count as zeros.
        Raises ``ValueError`` on the meta device.
        """
        numel = self.shape[0] * self.shape[1]
        if numel == 0:
            return 0.0
        nonzero = _count_nonzero(f"sparseflow.{type(self).__name__}.sparsity", self.values)
        return 1.0 - nonzero / numel

    def to(self, device: torch.device | str) -> SparseWeight:
        """A copy with every tensor moved to ``device`` (tensors already there are shared, as Tensor.to does)."""
        return dataclasses.replace(self, **{k: t.to(device) for k, t in self._tensors().items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A flat dict of tensors: the format's tensors, its metadata as int64 tensors, ``format`` (the
        format name as ASCII bytes in a uint8 tensor) and ``format_version`` (0-D int64).

        Only tensors, so it can be saved with ``safetensors.torch.save_file`` or registered as buffers.
        The data tensors are the weight's own (not copies); metadata tensors are on the CPU.
        """
        sd = {"format": _encode_name(self.format_name), "format_version": torch.tensor(self.format_version)}
        for name in self._int_fields:
            sd[name] = torch.tensor(getattr(self, name), dtype=torch.int64)
        sd.update(self._tensors())
        return sd

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> SparseWeight:
        """Rebuild a weight from :meth:`state_dict` output, then :meth:`validate` it.

        Called on :class:`SparseWeight` itself, returns an instance of whichever format the dict holds.
        Raises ``ValueError`` if the dict holds another format, an unknown ``format_version``, or missing
        or unexpected keys (each named).
        """
        op = f"sparseflow.{cls.__name__}.from_state_dict"
        name, version = _read_header(op, sd)
        target = _FORMATS.get(name) if cls is SparseWeight else cls
        if target is None:
            raise ValueError(f"{op}: unknown format {name!r}; known formats: {', '.join(sorted(_FORMATS))}")
        if name != target.format_name:
            raise ValueError(f"{op}: the state dict holds format {name!r}, expected {target.format_name!r}")
        if version != target.format_version:
            newer = " (written by a newer sparseflow?)" if version > target.format_version else ""
            raise ValueError(
                f"{op}: format_version {version} of {name!r} is not supported: this sparseflow reads version "
                f"{target.format_version}{newer}"
            )
        required = {"format", "format_version", *target._int_fields, *target._tensor_fields}
        missing = sorted(required - sd.keys())
        if missing:
            raise ValueError(f"{op}: the state dict is missing {', '.join(map(repr, missing))}")
        unexpected = sorted(sd.keys() - required - {"scale"})
        if unexpected:
            raise ValueError(f"{op}: unexpected keys in the state dict: {', '.join(map(repr, unexpected))}")
        fields = {k: _read_ints(op, k, sd[k]) for k in target._int_fields}
        fields.update({k: sd[k] for k in target._tensor_fields})
        weight = target(**fields, scale=sd.get("scale"))
        weight.validate()
        return weight

    def validate(self) -> None:
        """Check every invariant of the format; raise with a message naming what is wrong.

        ``TypeError``: a dtype (expected vs got). ``ValueError``: metadata, a shape, mixed devices, a
        non-zero value in the padding, a bad scale. ``IndexError``: an invalid entry of an index tensor
        (which row / group / block, which entry, its value and the valid range). Checks that need
        values are skipped on the meta device.
        """
        op = f"sparseflow.{type(self).__name__}.validate"
        _check_int_pair(op, "shape", self.shape, 0)
        self._check_structure(op)
        self._check_scale(op)
        devices = {k: t.device for k, t in self._tensors().items()}
        if len(set(devices.values())) > 1:
            listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
            raise ValueError(f"{op}: all tensors must be on one device, got {listing}")
        if self.device.type != "meta":
            self._check_data(op)
            if self.scale is not None:
                bad = _first(~torch.isfinite(self.scale) | (self.scale < 0))
                if bad is not None:
                    value = self.scale[bad[0]].item()
                    raise ValueError(f"{op}: scale[{bad[0]}] is {value}; scales must be finite and >= 0")

    def _check_scale(self, op: str) -> None:
        out = self.shape[0]
        if self.values.dtype == torch.int8:
            if self.scale is None:
                raise ValueError(f"{op}: int8 values need a float32 scale [out_features={out}], got scale=None")
            _check_tensor(op, "scale", self.scale, (torch.float32,), 1, f"[out_features={out}]")
            if self.scale.shape[0] != out:
                raise ValueError(f"{op}: scale must have shape [{out}] (out_features), got {list(self.scale.shape)}")
        elif self.scale is not None:
            raise ValueError(f"{op}: scale is only for int8 values; values are {_dtype_name(self.values.dtype)}")

    def _check_structure(self, op: str) -> None:
        raise NotImplementedError

    def _check_data(self, op: str) -> None:
        raise NotImplementedError


@dataclasses.dataclass(eq=False)
class NMWeight(SparseWeight):
    """An N:M sparse weight ``[out_features, in_features]``: at most ``n`` non-zeros in every group of
    ``m`` consecutive input columns.

    Attributes:
        values: ``[out, ceil(in/m)*n]`` the kept entries of each group in column order (float32,
            float16, bfloat16, or int8 with ``scale``). Groups with fewer than ``n`` non-zeros hold zeros.
        indices: uint8, same shape: the position of each value inside its group of ``m``, strictly
            ascending within the group; exactly the layout of ``torch.ops.sparseflow.nm_compress``.
        n, m: the pattern (``1 <= n <= m <= 64``).
        shape: the logical ``(out_features, in_features)``. When ``in_features`` is not a multiple of
            ``m`` the last group is padded with zeros, which ``to_dense`` crops.
        scale: float32 ``[out]`` per-output-channel scales when values are int8 (``dense ~= values *
            scale[:, None]``), else None.

    ``validate()`` checks n/m, shapes and dtypes, one device, and (with data) that every group's indices
    are strictly ascending in ``[0, m)`` and that padding positions hold zeros.
    """

    values: torch.Tensor
    indices: torch.Tensor
    n: int
    m: int
    shape: tuple[int, int]
    scale: torch.Tensor | None = None

    format_name: ClassVar[str] = "sparseflow.nm"
    format_version: ClassVar[int] = 1
    _tensor_fields: ClassVar[tuple[str, ...]] = ("values", "indices")
    _int_fields: ClassVar[tuple[str, ...]] = ("n", "m", "shape")

    def __post_init__(self):
        self.shape = tuple(self.shape)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(out, ceil(in/m)*m)``: the dense shape the packed tensors describe."""
        return self.shape[0], _ceil_div(self.shape[1], self.m) * self.m

    @classmethod
    def from_dense(cls, dense: torch.Tensor, n: int = 2, m: int = 4, *, prune: bool = False,
                   dtype: torch.dtype | None = None) -> NMWeight:
        """Pack a dense ``[out, in]`` float32/float16/bfloat16 matrix with at most ``n`` non-zeros per group of ``m``.

        Args:
            dense: the weight (not modified). ``in`` need not be a multiple of ``m``.
            n, m: the pattern, e.g. 2:4.
            prune: keep the ``n`` largest-magnitude entries of every group (zeroing the rest; on ties the
                lowest positions win, NaN counts as the largest) instead of requiring the pattern; a
                convenience for unpruned tensors (``nm_compress(..., prune=True)``).
            dtype: the stored dtype: None keeps ``dense.dtype``; float32/float16/bfloat16 cast;
                ``torch.int8`` quantizes symmetrically per output channel (``scale = absmax / 127`` of
                each row after pruning) and stores the scales.

        Raises ``ValueError`` naming the first row and group with more than ``n`` non-zeros (the
        pattern is checked on ``dense`` itself, before any cast or quantization).
        """
        op = "sparseflow.NMWeight.from_dense"
        dense = _check_dense(op, dense)
        _check_target_dtype(op, dtype)
        if not 1 <= m <= _MAX_M or not 1 <= n <= m:
            raise ValueError(f"{op}: need 1 <= n <= m <= {_MAX_M}, got n={n}, m={m}")
        out, in_features = dense.shape
        padded_in = _ceil_div(in_features, m) * m
        padded = F.pad(dense, (0, padded_in - in_features)) if padded_in != in_features else dense
        if prune:  # one pass of the kernel: the same rule on every device (ties: the lower position)
            values, indices = ops.nm_compress(padded, n, m, prune=True)
            if dtype is not None:  # the pruned matrix, to cast or quantize below
                padded = ops.nm_decompress(values, indices, n, m)
        else:
            try:
                values, indices = ops.nm_compress(padded, n, m)
            except ValueError as e:
                raise ValueError(f"{op}: {e} (pass prune=True to keep the {n} largest of every {m})") from e
        stored, scale = _convert(padded, dtype)
        if stored is not padded:  # re-pack: a cast or quantization can turn small values into zeros
            values, indices = ops.nm_compress(stored, n, m)
        return cls(values, indices, n, m, (out, in_features), scale)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``shape`` matrix (padding cropped), in ``dtype`` (default: the stored dtype, or
        float32 ``values * scale[:, None]`` for int8 weights)."""
        dense = ops.nm_decompress(self.values, self.indices, self.n, self.m)
        if dense.shape[1] != self.shape[1]:
            dense = dense[:, : self.shape[1]].contiguous()
        return _dequantize(dense, self.scale, dtype)

    def _check_structure(self, op: str) -> None:
        n, m = self.n, self.m
        if not (isinstance(n, int) and isinstance(m, int)) or not 1 <= m <= _MAX_M or not 1 <= n <= m:
            raise ValueError(f"{op}: need integers 1 <= n <= m <= {_MAX_M}, got n={n!r}, m={m!r}")
        out, in_features = self.shape
        packed = [out, _ceil_div(in_features, m) * n]
        layout = f"[out, ceil(in/m)*n] = {packed} for shape {self.shape} and {n}:{m}"
        _check_tensor(op, "values", self.values, VALUE_DTYPES, 2, layout)
        _check_tensor(op, "indices", self.indices, (torch.uint8,), 2, layout)
        for name, t in (("values", self.values), ("indices", self.indices)):
            if list(t.shape) != packed:
                raise ValueError(f"{op}: {name} must have shape {layout}, got {list(t.shape)}")

    def _check_data(self, op: str) -> None:
        n, m = self.n, self.m
        out, in_features = self.shape
        groups = _ceil_div(in_features, m)
        pos = self.indices.reshape(out, groups, n).to(torch.int64)
        bad = _first(pos >= m)
        if bad is not None:
            row, group, slot = bad
            raise IndexError(
                f"{op}: indices of row {row}, group {group} are {pos[row, group].tolist()}: entry {slot} is "
                f"{pos[row, group, slot].item()}, expected a position in [0, {m})"
            )
        bad = _first(pos[..., 1:] <= pos[..., :-1])
        if bad is not None:
            row, group, slot = bad
            raise IndexError(
                f"{op}: indices of row {row}, group {group} are {pos[row, group].tolist()}: entry {slot + 1} "
                f"({pos[row, group, slot + 1].item()}) does not follow entry {slot} ({pos[row, group, slot].item()}); "
                "positions must be strictly ascending"
            )
        column = pos + torch.arange(groups, device=pos.device).unsqueeze(-1) * m
        bad = _first((column >= in_features) & (self.values.reshape(out, groups, n) != 0))
        if bad is not None:
            row, group, slot = bad
            raise ValueError(
                f"{op}: row {row}, group {group}, entry {slot} holds a non-zero value at column "
                f"{column[row, group, slot].item()}, past in_features={in_features} (padding must be zero)"
            )

    def __repr__(self) -> str:
        quant = f", scale=float32[{self.scale.shape[0]}]" if self.scale is not None else ""
        return (
            f"NMWeight({self.n}:{self.m}, shape={self.shape}, dtype={_dtype_name(self.values.dtype)}{quant}, "
            f"device={self.device}, nbytes={self.nbytes})"
        )


@dataclasses.dataclass(eq=False)
class BlockSparseWeight(SparseWeight):
    """A block-sparse weight ``[out_features, in_features]`` in BSR layout with ``R x C`` blocks.

    The matrix is seen as padded to ``(ceil(out/R)*R, ceil(in/C)*C)`` (zeros) and cut into
    ``out_blocks x in_blocks`` blocks; only blocks with a non-zero are stored.

    Attributes:
        crow: int32 ``[out_blocks + 1]``: blocks of block-row ``i`` are ``crow[i]:crow[i+1]``.
        col: int32 ``[nnz_blocks]``: block-column of each block, strictly increasing within a block-row.
        values: ``[nnz_blocks, R, C]`` (float32, float16, bfloat16, or int8 with ``scale``).
        block: ``(R, C)``, any positive sizes.
        shape: the logical ``(out_features, in_features)``; ``to_dense`` crops the padding.
        scale: float32 ``[out]`` per-output-channel scales when values are int8, else None.

    ``validate()`` checks the block, shapes and dtypes (crow/col int32), one device, and (with data)
    that crow starts at 0, never decreases and ends at ``nnz_blocks``, that every col is in
    ``[0, in_blocks)`` and strictly increasing within its block-row, and that padding holds zeros.
    """

    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    block: tuple[int, int]
    shape: tuple[int, int]
    scale: torch.Tensor | None = None

    format_name: ClassVar[str] = "sparseflow.bsr"
    format_version: ClassVar[int] = 1
    _tensor_fields: ClassVar[tuple[str, ...]] = ("crow", "col", "values")
    _int_fields: ClassVar[tuple[str, ...]] = ("block", "shape")

    def __post_init__(self):
        self.shape = tuple(self.shape)
        self.block = tuple(self.block)

    @property
    def blocks_shape(self) -> tuple[int, int]:
        """``(out_blocks, in_blocks)`` = ``(ceil(out/R), ceil(in/C))``."""
        return _ceil_div(self.shape[0], self.block[0]), _ceil_div(self.shape[1], self.block[1])

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(out_blocks*R, in_blocks*C)``: the dense shape the blocks tile."""
        ob, ib = self.blocks_shape
        return ob * self.block[0], ib * self.block[1]

    @property
    def nnz_blocks(self) -> int:
        """Number of stored blocks."""
        return self.col.shape[0]

    @property
    def block_sparsity(self) -> float:
        """Fraction of the ``out_blocks * in_blocks`` blocks that are not stored; 0.0 when there are none."""
        ob, ib = self.blocks_shape
        return 1.0 - self.nnz_blocks / (ob * ib) if ob * ib else 0.0

    @classmethod
    def from_dense(cls, dense: torch.Tensor, block: tuple[int, int] = (16, 16), *,
                   dtype: torch.dtype | None = None) -> BlockSparseWeight:
        """Pack a dense ``[out, in]`` float32/float16/bfloat16 matrix, keeping every block that has a non-zero.

        Args:
            dense: the weight (not modified); its dims need not be multiples of the block.
            block: ``(R, C)``, any positive sizes.
            dtype: the stored dtype: None keeps ``dense.dtype``; float32/float16/bfloat16 cast;
                ``torch.int8`` quantizes symmetrically per output channel (``scale = absmax / 127``).
                Blocks are chosen on the stored values, so a block whose values all cast or quantize to
                zero is dropped.

        Vectorised (no loop over blocks). ``dense`` must hold data: the meta device raises ``ValueError``
        since the number of blocks depends on the values (build on a real device, then ``.to("meta")``).
        """
        op = "sparseflow.BlockSparseWeight.from_dense"
        dense = _check_dense(op, dense)
        _check_target_dtype(op, dtype)
        R, C = _check_int_pair(op, "block", tuple(block), 1)
        if dense.device.type == "meta":
            raise ValueError(f"{op}: dense is on the meta device; which blocks to keep depends on its values")
        out, in_features = dense.shape
        stored, scale = _convert(dense, dtype)
        ob, ib = _ceil_div(out, R), _ceil_div(in_features, C)
        if (ob * R, ib * C) != (out, in_features):
            stored = F.pad(stored, (0, ib * C - in_features, 0, ob * R - out))
        keep = (stored != 0).reshape(ob, R, ib, C).any(dim=(1, 3))
        block_row, col = keep.nonzero(as_tuple=True)  # row-major: columns ascend within each block-row
        crow = torch.zeros(ob + 1, dtype=torch.int32, device=dense.device)
        crow[1:] = keep.sum(dim=1).cumsum(dim=0)
        values = stored.reshape(ob, R, ib, C).transpose(1, 2)[block_row, col]
        return cls(crow, col.to(torch.int32), values, (R, C), (out, in_features), scale)

    @classmethod
    def from_bsr(cls, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], *,
                 scale: torch.Tensor | None = None) -> BlockSparseWeight:
        """Wrap existing BSR tensors (block size taken from ``values [nnz_blocks, R, C]``) and :meth:`validate`.

        The tensors are used as given (not copied); crow and col must be int32 (use ``.int()``).
        """
        op = "sparseflow.BlockSparseWeight.from_bsr"
        _check_tensor(op, "values", values, VALUE_DTYPES, 3, "[nnz_blocks, R, C]")
        weight = cls(crow, col, values, tuple(values.shape[1:]), tuple(shape), scale)
        weight.validate()
        return weight

    def _block_rows(self) -> torch.Tensor:
        """The block-row of every stored block (int64 [nnz_blocks])."""
        ob = self.blocks_shape[0]
        rows = torch.arange(ob, device=self.crow.device)
        return torch.repeat_interleave(rows, self.crow.diff(), output_size=self.nnz_blocks)

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``shape`` matrix (padding cropped), in ``dtype`` (default: the stored dtype, or
        float32 ``values * scale[:, None]`` for int8 weights)."""
        (R, C), (ob, ib) = self.block, self.blocks_shape
        blocks = self.values.new_zeros(ob, ib, R, C)
        blocks[self._block_rows(), self.col.to(torch.int64)] = self.values
        dense = blocks.transpose(1, 2).reshape(ob * R, ib * C)
        if dense.shape != self.shape:
            dense = dense[: self.shape[0], : self.shape[1]].contiguous()
        return _dequantize(dense, self.scale, dtype)

    def to_torch_bsr(self) -> torch.Tensor:
        """A ``torch.sparse_bsr_tensor`` of the padded matrix (``padded_shape``) sharing these tensors.

        Holds the stored values: for int8 weights the scales are not applied.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
            return torch.sparse_bsr_tensor(self.crow, self.col, self.values, size=self.padded_shape,
                                           check_invariants=False)  # validate() covers them

    def _check_structure(self, op: str) -> None:
        R, C = _check_int_pair(op, "block", self.block, 1)
        ob, _ = self.blocks_shape
        _check_tensor(op, "crow", self.crow, (torch.int32,), 1, "[out_blocks + 1]")
        _check_tensor(op, "col", self.col, (torch.int32,), 1, "[nnz_blocks]")
        _check_tensor(op, "values", self.values, VALUE_DTYPES, 3, "[nnz_blocks, R, C]")
        if self.crow.shape[0] != ob + 1:
            raise ValueError(
                f"{op}: crow must have out_blocks + 1 = {ob + 1} entries (shape {self.shape}, block {self.block}), "
                f"got {self.crow.shape[0]}"
            )
        expected = [self.nnz_blocks, R, C]
        if list(self.values.shape) != expected:
            raise ValueError(
                f"{op}: values must have shape [nnz_blocks, R, C] = {expected} (col has {self.nnz_blocks} "
                f"entries, block {self.block}), got {list(self.values.shape)}"
            )

    def _check_data(self, op: str) -> None:
        crow, col = self.crow.to(torch.int64), self.col.to(torch.int64)
        nnz, (ob, ib) = self.nnz_blocks, self.blocks_shape
        if crow[0].item() != 0:
            raise IndexError(f"{op}: crow[0] must be 0, got {crow[0].item()}")
        bad = _first(crow.diff() < 0)
        if bad is not None:
            i = bad[0]
            raise IndexError(
                f"{op}: crow must be non-decreasing: crow[{i + 1}] = {crow[i + 1].item()} < crow[{i}] = "
                f"{crow[i].item()} (block-row {i})"
            )
        if crow[-1].item() != nnz:
            raise IndexError(
                f"{op}: crow[-1] = crow[{ob}] must equal nnz_blocks = {nnz} (the length of col), got {crow[-1].item()}"
            )
        rows = self._block_rows()
        bad = _first((col < 0) | (col >= ib))
        if bad is not None:
            j = bad[0]
            raise IndexError(
                f"{op}: col[{j}] = {col[j].item()} (block {j}, in block-row {rows[j].item()}) is out of range "
                f"[0, {ib}) (in_blocks for in_features={self.shape[1]}, C={self.block[1]})"
            )
        bad = _first((col[1:] <= col[:-1]) & (rows[1:] == rows[:-1]))
        if bad is not None:
            j = bad[0] + 1
            raise IndexError(
                f"{op}: col must be strictly increasing within each block-row: in block-row {rows[j].item()}, "
                f"col[{j}] = {col[j].item()} follows col[{j - 1}] = {col[j - 1].item()}"
            )
        self._check_padding(op, rows, col)

    def _check_padding(self, op: str, rows: torch.Tensor, col: torch.Tensor) -> None:
        (R, C), (ob, ib), (out, in_features) = self.block, self.blocks_shape, self.shape
        # Element (r, c) of block j lies at dense row rows[j]*R + r, column col[j]*C + c.
        past_rows = (rows * R).unsqueeze(1) + torch.arange(R, device=rows.device) >= out  # [nnz, R]
        past_cols = (col * C).unsqueeze(1) + torch.arange(C, device=col.device) >= in_features  # [nnz, C]
        in_padding = past_rows.unsqueeze(2) | past_cols.unsqueeze(1)
        bad = _first(((self.values != 0) & in_padding).any(dim=(1, 2)))
        if bad is not None:
            j = bad[0]
            raise ValueError(
                f"{op}: block {j} (block-row {rows[j].item()}, block-col {col[j].item()}) holds non-zero values "
                f"in the padding past shape {self.shape} (padding must be zero)"
            )

    def __repr__(self) -> str:
        quant = f", scale=float32[{self.scale.shape[0]}]" if self.scale is not None else ""
        ob, ib = self.blocks_shape
        return (
            f"BlockSparseWeight(block={self.block}, shape={self.shape}, nnz_blocks={self.nnz_blocks} of "
            f"{ob * ib}, dtype={_dtype_name(self.values.dtype)}{quant}, device={self.device}, nbytes={self.nbytes})"
        )
