"""``nm-pack``: packing a dense N:M-sparse weight into (values, indices) and back.

Baselines, measured in the same run:
- ``reference``: ``sparseflow.testing.reference`` (the same result from plain torch ops, incl. validation);
- ``masked_select`` (compress): ``dense.masked_select(dense != 0)``, torch's own packing; it returns the
  values only (no indices), so it does less work than the op;
- ``scatter`` (decompress): ``zeros().scatter_()`` of the values at the int64-converted positions, no validation;
- ``to_sparse_semi_structured`` (CUDA, 2:4 only): PyTorch's semi-structured compress, and its ``to_dense()``.

``nm_compress prune=True`` rows (magnitude pruning of an unpruned weight, then packing) have their own:
- ``topk_gather``: ``abs().topk(n)`` per group, positions sorted, values gathered: the least plain torch can
  do for the same output (it does not pin ties or pad zero groups the canonical way);
- ``sort_mask``: the exact plain-torch path (NMWeight.from_dense before the op): a stable descending sort of
  the magnitudes, a keep mask, ``torch.where`` and ``nm_compress``; the check compares against it bitwise.
"""

from __future__ import annotations

import functools

import torch

from .. import ops
from ..testing import reference as ref
from ..testing.op_db import assert_bitwise_equal
from .registry import Case, Prepared, SuiteContext, suite

PATTERNS = ((2, 4), (4, 8))
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _nm_dense(rows: int, cols: int, n: int, m: int, device: torch.device) -> torch.Tensor:
    """fp32 [rows, cols] with exactly n non-zeros (never -0.0) in each group of m, built on the device."""
    g = torch.Generator(device=device).manual_seed(rows * 7919 + cols * 31 + n * m)
    shape = (rows, cols // m, m)
    scores = torch.rand(shape, generator=g, device=device)
    keep = scores > scores.kthvalue(m - n, dim=-1, keepdim=True).values  # the n highest scores
    values = torch.randn(shape, generator=g, device=device) * 4
    return torch.where(keep, values, torch.zeros((), device=device)).reshape(rows, cols)


def _semi_structured(dense: torch.Tensor):
    """PyTorch's 2:4 compress, or the reason it cannot run here."""
    try:
        return torch.sparse.to_sparse_semi_structured(dense), None
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _compress_setup(rows, cols, n, m, dtype, device) -> Prepared:
    dense = _nm_dense(rows, cols, n, m, device).to(dtype)
    baselines = {"reference": lambda: ref.nm_compress(dense, n, m),
                 "masked_select": lambda: dense.masked_select(dense != 0)}
    skipped = {}
    if device.type == "cuda":
        if (n, m) == (2, 4):
            sst, why = _semi_structured(dense)
            if sst is None:
                skipped["to_sparse_semi_structured"] = why
            else:
                baselines["to_sparse_semi_structured"] = lambda: torch.sparse.to_sparse_semi_structured(dense)
        else:
            skipped["to_sparse_semi_structured"] = f"2:4 only, not {n}:{m}"

    def check():
        assert_bitwise_equal(ops.nm_compress(dense, n, m), ref.nm_compress(dense, n, m))

    return Prepared(lambda: ops.nm_compress(dense, n, m), baselines, check, skipped)


def _decompress_setup(rows, cols, n, m, dtype, device) -> Prepared:
    dense = _nm_dense(rows, cols, n, m, device).to(dtype)
    values, indices = ops.nm_compress(dense, n, m)
    groups = cols // m

    def scatter():
        out = torch.zeros(rows, groups, m, dtype=dtype, device=device)
        out.scatter_(-1, indices.view(rows, groups, n).long(), values.view(rows, groups, n))
        return out.view(rows, cols)

    baselines = {"reference": lambda: ref.nm_decompress(values, indices, n, m), "scatter": scatter}
    skipped = {}
    if device.type == "cuda":
        if (n, m) == (2, 4):
            sst, why = _semi_structured(dense)
            if sst is None:
                skipped["to_sparse_semi_structured"] = why
            else:
                baselines["to_sparse_semi_structured"] = sst.to_dense
        else:
            skipped["to_sparse_semi_structured"] = f"2:4 only, not {n}:{m}"

    def check():
        assert_bitwise_equal(ops.nm_decompress(values, indices, n, m), ref.nm_decompress(values, indices, n, m))

    return Prepared(lambda: ops.nm_decompress(values, indices, n, m), baselines, check, skipped)


def _prune_setup(rows, cols, n, m, dtype, device) -> Prepared:
    g = torch.Generator(device=device).manual_seed(rows * 7919 + cols * 31 + n * m)
    dense = torch.randn(rows, cols, generator=g, device=device).to(dtype)  # unpruned: every entry non-zero
    groups = dense.view(rows, cols // m, m)

    def topk_gather():
        kept = groups.abs().topk(n, dim=-1).indices.sort(dim=-1).values
        return groups.gather(-1, kept), kept.to(torch.uint8)

    def sort_mask():
        order = groups.abs().argsort(dim=-1, descending=True, stable=True)[..., :n]
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=device).scatter_(-1, order, True)
        return ops.nm_compress(torch.where(keep, groups, 0).view(rows, cols), n, m)

    def check():
        assert_bitwise_equal(ops.nm_compress(dense, n, m, prune=True), sort_mask())

    return Prepared(lambda: ops.nm_compress(dense, n, m, prune=True),
                    {"topk_gather": topk_gather, "sort_mask": sort_mask}, check)


@suite("nm-pack", ops=("nm_compress", "nm_decompress"), devices=("cpu", "cuda"))
def nm_pack(ctx: SuiteContext):
    """N:M compress / decompress of LLM-sized weights (2:4, 4:8; fp16, bf16, fp32), and prune-and-compress
    of unpruned ones (``nm_compress prune=True``)."""
    gpu = ctx.device.type == "cuda"
    shapes = ctx.pick(
        full=[(4096, 4096), (11008, 4096)] + ([(8192, 8192)] if gpu else []),
        quick=[(4096, 4096)] if gpu else [(1024, 1024)],
        tiny=[(16, 64)],
    )
    for rows, cols in shapes:
        for n, m in PATTERNS:
            for dtype in DTYPES:
                es = torch.finfo(dtype).bits // 8
                dense_bytes = rows * cols * es
                packed_bytes = rows * cols // m * n * (es + 1)  # values + uint8 indices
                common = dict(params={"rows": rows, "cols": cols, "n": n, "m": m}, dtype=dtype,
                              sparsity=1 - n / m, bytes=dense_bytes + packed_bytes)
                tag = f"{n}:{m} {SHORT[dtype]} {rows}x{cols}"
                yield Case(f"nm_compress {tag}", "nm_compress", family=f"nm_compress {SHORT[dtype]} {rows}x{cols}",
                           setup=functools.partial(_compress_setup, rows, cols, n, m, dtype, ctx.device), **common)
                yield Case(f"nm_compress prune=True {tag}", "nm_compress",
                           family=f"nm_compress prune=True {SHORT[dtype]} {rows}x{cols}",
                           setup=functools.partial(_prune_setup, rows, cols, n, m, dtype, ctx.device), **common)
                yield Case(f"nm_decompress {tag}", "nm_decompress",
                           family=f"nm_decompress {SHORT[dtype]} {rows}x{cols}",
                           setup=functools.partial(_decompress_setup, rows, cols, n, m, dtype, ctx.device), **common)
