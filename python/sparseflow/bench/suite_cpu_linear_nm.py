"""``cpu-linear``: ``nm_linear`` (N:M sparse linear) on CPU against torch's dense and sparse paths, and the
one-off ``nm_pack``.

Baselines, measured in the same run:
- ``F.linear``: dense torch at the weight's dtype (fp32: MKL sgemm/sgemv; bf16: oneDNN); for int8 weights the
  fp32 dense linear of the dequantized weight.
- ``torch._int_mm`` (int8): dense s8 x s8 -> s32 matmul on pre-quantized activations; it skips the per-token
  quantization and the dequantization that nm_linear does inside, so it does less work.
- ``quantized.linear_dynamic`` (int8): torch's dynamic-quantization linear (fbgemm/oneDNN, per-channel int8
  weight, activations quantized per call, fp32 out): the same job as nm_linear's int8 path, dense.
- ``csr`` (fp32, M <= 8): ``torch.sparse.mm`` with the weight in CSR (torch's general sparse path).
- ``reference`` (nm_pack): the plain-torch reference of the packing.
- ``torch.ops`` ("call cost" rows, a 16x64 weight at one token): the same op called through
  ``torch.ops.sparseflow.nm_linear`` instead of ``sparseflow.ops.nm_linear``'s direct binding; with so little
  work the times are the per-call cost of each path.

Weights bigger than the last-level cache (11008x4096 and 4096x11008 at every dtype but int8) stream from DRAM;
the smaller ones stay in the LLC when the cache is hot: use ``--cold-cache`` for decode (M = 1) figures.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from .. import ops
from ..testing import reference as ref
from ..testing.op_db import assert_bitwise_equal, nm_linear_tolerance_check
from .registry import Case, Prepared, SuiteContext, suite
from .suite_nm_pack import _nm_dense

SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int8: "int8"}
CHECK_ROWS = 256  # output features checked against the float64 reference (it is slow at full size)


def _weight(rows: int, cols: int, n: int, m: int, dtype: torch.dtype):
    """(dense weight as F.linear takes it, packed values, packed meta, weight_scale or None)."""
    dense = _nm_dense(rows, cols, n, m, torch.device("cpu"))
    scale = None
    if dtype == torch.int8:
        scale = (dense.abs().amax(1) / 127).clamp_min(1e-8)
        dense = (dense / scale[:, None]).round().clamp(-127, 127)
    values, indices = ops.nm_compress(dense.to(dtype), n, m)
    packed_values, packed_meta = ops.nm_pack(values, indices, n, m)
    return dense.to(dtype), packed_values, packed_meta, scale


def _linear_setup(tokens: int, rows: int, cols: int, n: int, m: int, dtype: torch.dtype,
                  via_torch_ops: bool = False) -> Prepared:
    dense, pv, pm, scale = _weight(rows, cols, n, m, dtype)
    g = torch.Generator().manual_seed(tokens + rows)
    x = torch.randn(tokens, cols, generator=g).to(torch.float32 if dtype == torch.int8 else dtype)
    args = (x, pv, pm, n, m, rows, cols, None, scale, "none", None)
    baselines, skipped = {}, {}
    if via_torch_ops:  # the same op called through torch.ops instead of sparseflow.ops' direct binding
        baselines["torch.ops"] = lambda: torch.ops.sparseflow.nm_linear.default(*args)
    if dtype == torch.int8:
        w_fp32 = dense.float() * scale[:, None]
        baselines["F.linear fp32"] = lambda: F.linear(x, w_fp32)
        xq, _ = ref.quantize_per_token_s8(x)
        w_t = dense.t()  # [cols, rows], column-major: _int_mm's preferred B layout
        baselines["torch._int_mm"] = lambda: torch._int_mm(xq, w_t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
            wq = torch.quantize_per_channel(w_fp32, scale, torch.zeros(rows, dtype=torch.long), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(wq, None)
        baselines["quantized.linear_dynamic"] = lambda: torch.ops.quantized.linear_dynamic(x, packed, True)
    else:
        baselines["F.linear"] = lambda: F.linear(x, dense)
        if dtype == torch.float32 and tokens <= 8:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
                csr = dense.to_sparse_csr()
            baselines["csr"] = lambda: torch.sparse.mm(csr, x.t()).t()
        elif dtype == torch.float32:
            skipped["csr"] = "measured at M <= 8 only (it is far slower than dense here; bounds the suite's time)"

    def check():
        part = (x, pv[:CHECK_ROWS], pm[:CHECK_ROWS], n, m, min(rows, CHECK_ROWS), cols, None,
                None if scale is None else scale[:CHECK_ROWS], "none", None)
        y = ops.nm_linear(*args)
        nm_linear_tolerance_check(y[:, :CHECK_ROWS].contiguous(), part)

    return Prepared(lambda: ops.nm_linear(*args), baselines, check, skipped,
                    kernel=ops.nm_linear_cpu_kernel(dtype, n, m, tokens))


def _pack_setup(rows: int, cols: int, n: int, m: int, dtype: torch.dtype) -> Prepared:
    dense = _nm_dense(rows, cols, n, m, torch.device("cpu")).round().to(dtype)
    values, indices = ops.nm_compress(dense, n, m)

    def check():
        assert_bitwise_equal(ops.nm_pack(values, indices, n, m), ref.nm_pack(values, indices, n, m))

    return Prepared(lambda: ops.nm_pack(values, indices, n, m),
                    {"reference": lambda: ref.nm_pack(values, indices, n, m)}, check)


def _packed_bytes(rows: int, cols: int, n: int, m: int, dtype: torch.dtype) -> int:
    return rows * (cols // m * n) * torch.empty((), dtype=dtype).element_size() + rows * ref.meta_row_bytes(cols)


@suite("cpu-linear", ops=("nm_pack", "nm_linear"), devices=("cpu",))
def cpu_linear(ctx: SuiteContext):
    """N:M linear y = x W^T on CPU (2:4 at M = 1, 8, 32, 128; 1:4 and 4:8 decode; fp32, bf16, int8)."""
    shapes = ctx.pick(full=[(768, 3072), (3072, 768), (4096, 4096), (11008, 4096), (4096, 11008)],
                      quick=[(4096, 4096), (11008, 4096)], tiny=[(24, 64)])
    tokens_list = ctx.pick(full=(1, 8, 32, 128), quick=(1, 8, 128), tiny=(1, 3))
    extra = ctx.pick(full=[(1, 4), (4, 8)], quick=[(1, 4)], tiny=[(4, 8)])
    cases = [(rows, cols, 2, 4, tokens) for rows, cols in shapes for tokens in tokens_list]
    cases += [(rows, cols, n, m, 1) for rows, cols in shapes[-2:] for n, m in extra]
    for rows, cols, n, m, tokens in cases:
        for dtype in (torch.float32, torch.bfloat16, torch.int8):
            weight_bytes = _packed_bytes(rows, cols, n, m, dtype)
            io_bytes = tokens * (cols + rows) * (2 if dtype == torch.bfloat16 else 4)
            yield Case(f"nm_linear {n}:{m} {SHORT[dtype]} M={tokens} {rows}x{cols}", "nm_linear",
                       {"M": tokens, "N": rows, "K": cols, "n": n, "m": m}, dtype,
                       setup=functools.partial(_linear_setup, tokens, rows, cols, n, m, dtype),
                       sparsity=1 - n / m, flops=2.0 * tokens * rows * cols, bytes=weight_bytes + io_bytes,
                       family=f"nm_linear {SHORT[dtype]} {rows}x{cols} M={tokens}")
    # Per-call cost: a weight so small that the call is mostly argument conversion, allocation and checks.
    for dtype in (torch.float32, torch.int8):
        yield Case(f"nm_linear 2:4 {SHORT[dtype]} M=1 16x64 call cost", "nm_linear",
                   {"M": 1, "N": 16, "K": 64, "n": 2, "m": 4}, dtype,
                   setup=functools.partial(_linear_setup, 1, 16, 64, 2, 4, dtype, True), sparsity=0.5,
                   flops=2.0 * 16 * 64, bytes=_packed_bytes(16, 64, 2, 4, dtype),
                   family=f"nm_linear {SHORT[dtype]} call cost")
    rows, cols = shapes[0]
    for dtype in (torch.float32, torch.bfloat16, torch.int8):
        yield Case(f"nm_pack 2:4 {SHORT[dtype]} {rows}x{cols}", "nm_pack",
                   {"rows": rows, "cols": cols, "n": 2, "m": 4}, dtype,
                   setup=functools.partial(_pack_setup, rows, cols, 2, 4, dtype), sparsity=0.5,
                   bytes=_packed_bytes(rows, cols, 2, 4, dtype) + rows * cols // 2)
