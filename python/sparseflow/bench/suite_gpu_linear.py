"""``gpu-linear``: sparse linear layers on the GPU (2:4 sparse tensor cores), LLM-sized.

Rows:
- ``nm_linear``: y = x @ Wᵀ with a 2:4 weight packed by ``nm_pack`` (fp16 / bf16, fp32 accumulation), from
  decode (1 to 16 tokens: the decode kernel, csrc/nm/nm_linear_decode.h) to prefill; the full run adds 8 and
  32 tokens to place the decode kernel's threshold (kDecodeMaxTokens) against the CUTLASS GEMMs. Baselines in the same run: ``F.linear`` dense at the same dtype
  (cuBLAS), and ``to_sparse_semi_structured`` (PyTorch's 2:4: cuSPARSELt or CUTLASS, whichever it picks;
  skipped with the reason when it refuses the GPU or shape).
- ``nm_pack_cutlass``: packing a canonical 2:4 weight for the tensor cores; baseline: PyTorch's
  ``to_sparse_semi_structured`` compress of the dense weight (it also finds the non-zeros).
- ``nm_compress`` 2:4 fp16 8192x8192, plain and ``prune=True`` (issue 6's packing target, <= 0.2 ms on an H100),
  with the baselines of the nm-pack suite (its setups), so that scripts/gpu_check.sh measures them too.
- ``bsr_linear``: y = x @ Wᵀ with W block-sparse in T x T blocks (T = 32, 64, 128; 50/70/90% of the blocks
  empty). Baselines: ``F.linear`` dense, and ``F.linear`` with the weight as a torch BSR tensor (PyTorch's
  block-sparse kernels; skipped with the reason when it refuses).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import ops
from ..testing import reference as ref
from .registry import Case, Prepared, SuiteContext, suite
from .suite_nm_pack import _compress_setup, _prune_setup

DTYPES = (torch.float16, torch.bfloat16)
SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def _weight_2_4(out_features: int, in_features: int, dtype, device) -> torch.Tensor:
    """A dense [out, in] weight with exactly 2 non-zeros in every group of 4, built on the device."""
    g = torch.Generator(device=device).manual_seed(out_features * 31 + in_features)
    shape = (out_features, in_features // 4, 4)
    scores = torch.rand(shape, generator=g, device=device)
    keep = scores > scores.kthvalue(2, dim=-1, keepdim=True).values
    w = torch.randn(shape, generator=g, device=device) / in_features**0.5
    return torch.where(keep, w, torch.zeros((), device=device)).reshape(out_features, in_features).to(dtype)


def _semi_structured_linear(x, w):
    """PyTorch's 2:4 linear, or the reason it cannot run here."""
    try:
        ws = torch.sparse.to_sparse_semi_structured(w)
        F.linear(x, ws)
        return (lambda: F.linear(x, ws)), None
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _linear_setup(tokens, out_features, in_features, dtype, device) -> Prepared:
    w = _weight_2_4(out_features, in_features, dtype, device)
    x = torch.randn(tokens, in_features, dtype=dtype, device=device)
    values, indices = ops.nm_compress(w, 2, 4)
    pv, pm = torch.ops.sparseflow.nm_pack(values, indices, 2, 4)

    def ours():
        return torch.ops.sparseflow.nm_linear(x, pv, pm, 2, 4, out_features, in_features)

    baselines = {"dense": lambda: F.linear(x, w)}
    skipped = {}
    fn, why = _semi_structured_linear(x, w)
    if fn is None:
        skipped["to_sparse_semi_structured"] = why
    else:
        baselines["to_sparse_semi_structured"] = fn

    def check():
        # FlashAttention's rule against an fp32 product: at most 2x torch's own low-precision error (+ a floor).
        exact = F.linear(x.float(), w.float())
        torch_err = (F.linear(x, w).float() - exact).abs().max().item()
        err = (ours().float() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-3, f"max error {err:.3g} vs torch's {torch_err:.3g}"

    return Prepared(ours, baselines, check, skipped)


def _pack_setup(out_features, in_features, dtype, device) -> Prepared:
    w = _weight_2_4(out_features, in_features, dtype, device)
    values, indices = ops.nm_compress(w, 2, 4)
    baselines = {"reference": lambda: ref.nm_pack_cutlass(values, indices, 2, 4)}
    skipped = {}
    try:
        torch.sparse.to_sparse_semi_structured(w)
        baselines["to_sparse_semi_structured"] = lambda: torch.sparse.to_sparse_semi_structured(w)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        skipped["to_sparse_semi_structured"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    def check():
        for a, b in zip(ops.nm_pack_cutlass(values, indices), ref.nm_pack_cutlass(values, indices, 2, 4)):
            assert torch.equal(a, b), "packed layout differs from the reference"

    return Prepared(lambda: ops.nm_pack_cutlass(values, indices), baselines, check, skipped)


def _bsr_weight(out_features, in_features, T, density, dtype, device):
    """(canonical crow, col, values, dense weight) with `density` of the T x T blocks stored, on the device."""
    g = torch.Generator(device=device).manual_seed(out_features + T)
    block_rows, block_cols = out_features // T, in_features // T
    keep = torch.rand(block_rows, block_cols, generator=g, device=device) < density
    crow = torch.zeros(block_rows + 1, dtype=torch.int32, device=device)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1].to(torch.int32)
    values = (torch.randn(int(crow[-1]), T, T, generator=g, device=device) / in_features**0.5).to(dtype)
    dense = torch.zeros(block_rows, T, block_cols, T, dtype=dtype, device=device)
    rows = keep.nonzero()[:, 0]
    dense[rows, :, col.long(), :] = values
    return crow, col, values, dense.reshape(out_features, in_features)


def _bsr_setup(tokens, out_features, in_features, T, density, dtype, device) -> Prepared:
    crow, col, values, w = _bsr_weight(out_features, in_features, T, density, dtype, device)
    packed = torch.ops.sparseflow.bsr_pack(crow, col, values, out_features, in_features, "auto")
    x = torch.randn(tokens, in_features, dtype=dtype, device=device)

    def ours():
        return torch.ops.sparseflow.bsr_linear(x, *packed, out_features, in_features)

    baselines = {"dense": lambda: F.linear(x, w)}
    skipped = {}
    try:
        w_bsr = w.to_sparse_bsr((T, T))
        F.linear(x, w_bsr)
        baselines["torch_bsr"] = lambda: F.linear(x, w_bsr)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        skipped["torch_bsr"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    def check():
        exact = F.linear(x.float(), w.float())
        torch_err = (F.linear(x, w).float() - exact).abs().max().item()
        err = (ours().float() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-3, f"max error {err:.3g} vs torch's {torch_err:.3g}"

    return Prepared(ours, baselines, check, skipped)


@suite("gpu-linear", ops=("nm_linear", "nm_pack_cutlass", "bsr_linear"), devices=("cuda",))
def gpu_linear(ctx: SuiteContext):
    """2:4 sparse-tensor-core linear (fp16, bf16) vs cuBLAS dense and PyTorch's 2:4, decode to prefill."""
    shapes = ctx.pick(
        full=[(4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192)],
        quick=[(4096, 4096), (14336, 4096)],
        tiny=[(64, 128)],
    )
    token_counts = ctx.pick(full=[1, 8, 16, 32, 128, 1024, 8192], quick=[1, 16, 512, 4096], tiny=[3])
    dtypes = ctx.pick(full=DTYPES, quick=DTYPES, tiny=(torch.float16,))
    for out_features, in_features in shapes:
        for dtype in dtypes:
            es = torch.finfo(dtype).bits // 8
            weight_bytes = out_features * in_features * (es // 2 + 1 / 8)  # values + 2-bit positions
            for tokens in token_counts:
                yield Case(
                    f"nm_linear 2:4 {SHORT[dtype]} {tokens}x{in_features}->{out_features}", "nm_linear",
                    params={"tokens": tokens, "out_features": out_features, "in_features": in_features, "n": 2, "m": 4},
                    dtype=dtype, sparsity=0.5, flops=2 * tokens * out_features * in_features,
                    bytes=weight_bytes + tokens * (in_features + out_features) * es,
                    family=f"nm_linear {SHORT[dtype]} {in_features}->{out_features}",
                    setup=functools.partial(_linear_setup, tokens, out_features, in_features, dtype, ctx.device))
            yield Case(
                f"nm_pack_cutlass {SHORT[dtype]} {out_features}x{in_features}", "nm_pack_cutlass",
                params={"rows": out_features, "cols": in_features, "n": 2, "m": 4}, dtype=dtype, sparsity=0.5,
                bytes=out_features * in_features * (es // 2 * 2 + 1 / 2 + 1 / 8),
                setup=functools.partial(_pack_setup, out_features, in_features, dtype, ctx.device))
    rows, cols = ctx.pick(full=(8192, 8192), quick=(8192, 8192), tiny=(64, 128))
    for prune, setup in ((False, _compress_setup), (True, _prune_setup)):
        yield Case(f"nm_compress{' prune=True' if prune else ''} 2:4 fp16 {rows}x{cols}", "nm_compress",
                   params={"rows": rows, "cols": cols, "n": 2, "m": 4}, dtype=torch.float16, sparsity=0.5,
                   bytes=rows * cols * 2 + rows * cols // 2 * 3,  # dense in; values + uint8 positions out
                   setup=functools.partial(setup, rows, cols, 2, 4, torch.float16, ctx.device))
    bsr_shapes = ctx.pick(full=[(4096, 4096), (8192, 8192)], quick=[(4096, 4096)], tiny=[(128, 128)])
    bsr_blocks = ctx.pick(full=(32, 64, 128), quick=(64,), tiny=(32,))
    bsr_tokens = ctx.pick(full=[16, 4096], quick=[16, 2048], tiny=[5])
    for out_features, in_features in bsr_shapes:
        for T in bsr_blocks:
            for density in ctx.pick(full=(0.5, 0.3, 0.1), quick=(0.5, 0.1), tiny=(0.5,)):
                for tokens in bsr_tokens:
                    dtype = torch.bfloat16
                    stored = out_features * in_features * density
                    yield Case(
                        f"bsr_linear {T}x{T} {1 - density:.0%} bf16 {tokens}x{in_features}->{out_features}",
                        "bsr_linear",
                        params={"tokens": tokens, "out_features": out_features, "in_features": in_features,
                                "block": T},
                        dtype=dtype, sparsity=1 - density, flops=2 * tokens * out_features * in_features,
                        bytes=stored * 2 + tokens * (in_features + out_features) * 2,
                        family=f"bsr_linear {T}x{T} bf16 {tokens}x{in_features}->{out_features}",
                        setup=functools.partial(_bsr_setup, tokens, out_features, in_features, T, density, dtype,
                                                ctx.device))
