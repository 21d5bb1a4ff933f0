"""Suite "cpu-linear": bsr_linear against the best dense torch path of the same dtype, in the same run.

Baselines: fp32 ``F.linear`` (MKL) and torch CSR (``torch.sparse.mm``, fp32 only: torch has no bf16/int8 CSR
kernel on CPU, and its CPU BSR rejects non-square blocks such as 16x1 or 4x1); bf16 ``F.linear`` (oneDNN);
int8 ``torch._int_mm`` on pre-quantized int8 operands (it does not quantize or dequantize, which our op
does). Weights are random block patterns of the kernels' native blocks (int8 4x1, fp32/bf16 16x1 and 1x16).

Caches: the packed sparse weights of the 4096x4096 cases fit in the last-level cache while most dense
weights do not, which is part of what sparsity buys at small M; `cold=True` rotates through enough weight
copies (dense and sparse alike) to exceed the cache so both stream from DRAM.

``run(quick)`` returns plain dict rows; the harness prints and stores them.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from .. import ops
from ..testing.op_db import random_bsr

SHAPES = ((4096, 4096), (11008, 4096))  # (out_features N, in_features K)
TOKENS = (1, 8, 32, 128)
SPARSITIES = (0.5, 0.7, 0.9, 0.95)
# (dtype, canonical block = the kernel's native block)
KERNELS = (("int8", (4, 1)), ("bf16", (16, 1)), ("fp32", (16, 1)), ("fp32", (1, 16)))
THREADS = 2
LLC_BYTES = 36 << 20


def _median_ms(fns: dict[str, Callable[[], object]], budget_s: float, min_reps: int = 3) -> dict[str, float]:
    """Median time of each fn, measured in interleaved rounds so load drift hits all of them alike."""
    for fn in fns.values():  # warm-up (and first-touch of outputs)
        fn()
    start = time.perf_counter()
    for fn in fns.values():
        fn()
    one_round = time.perf_counter() - start
    rounds = max(min_reps, min(50, int(budget_s / max(one_round, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(ts)[len(ts) // 2] * 1e3 for name, ts in times.items()}


class _Rotating:
    """Calls fn(i) with i cycling over `copies` weight copies (cold-cache mode) or always 0."""

    def __init__(self, fn, copies: int):
        self.fn, self.copies, self.i = fn, copies, 0

    def __call__(self):
        self.i = (self.i + 1) % self.copies
        return self.fn(self.i)


def _weights(dtype: str, N: int, K: int, block: tuple[int, int], sparsity: float, seed: int):
    vdtype = {"int8": torch.int8, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    crow, col, values = random_bsr(N, K, *block, 1 - sparsity, vdtype, seed=seed)
    kernel = "4x1" if dtype == "int8" else f"{block[0]}x{block[1]}"
    t0 = time.perf_counter()
    packed = ops.bsr_pack(crow, col, values, N, K, kernel)
    pack_ms = (time.perf_counter() - t0) * 1e3
    return packed, pack_ms, (crow, col, values)


def _dense_fns(dtype: str, N: int, K: int, M: int, copies: int, seed: int) -> dict[str, Callable]:
    g = torch.Generator().manual_seed(seed)
    if dtype == "int8":
        ws = [torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).t() for _ in range(copies)]
        xq = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
        return {"torch._int_mm": _Rotating(lambda i: torch._int_mm(xq, ws[i]), copies)}
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    ws = [torch.randn(N, K, generator=g).to(tdtype) for _ in range(copies)]
    x = torch.randn(M, K, generator=g).to(tdtype)
    name = "F.linear (oneDNN)" if dtype == "bf16" else "F.linear (MKL)"
    return {name: _Rotating(lambda i: F.linear(x, ws[i]), copies)}


def _case_rows(dtype: str, block: tuple[int, int], N: int, K: int, tokens, sparsities, budget_s: float,
               cold: bool) -> list[dict]:
    rows = []
    dense_bytes = N * K * {"int8": 1, "bf16": 2, "fp32": 4}[dtype]
    dense_copies = max(1, -(-2 * LLC_BYTES // dense_bytes)) if cold else 1
    dense_ms: dict[int, dict[str, float]] = {}
    for M in tokens:
        dense_ms[M] = _median_ms(_dense_fns(dtype, N, K, M, dense_copies, seed=M), budget_s)
    for si, sparsity in enumerate(sparsities):
        packed, pack_ms, canonical = _weights(dtype, N, K, block, sparsity, seed=si)
        meta, rowptr, indices, values, comp = packed
        weight_bytes = sum(t.numel() * t.element_size() for t in (rowptr, indices, values, comp))
        copies = max(1, -(-2 * LLC_BYTES // weight_bytes)) if cold else 1
        weights = [packed] + [tuple(t.clone() for t in packed) for _ in range(copies - 1)]
        scale = torch.rand(N) * 0.01 + 1e-3 if dtype == "int8" else None
        csr = None
        if dtype == "fp32":
            from ..testing.reference import bsr_to_dense

            csr = bsr_to_dense(*canonical, N, K).to_sparse_csr()
        for M in tokens:
            xdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
            x = torch.randn(M, K).to(xdtype)
            fns = {"ours": _Rotating(lambda i: ops.bsr_linear(x, *weights[i], N, K, None, scale), copies)}
            if csr is not None and not cold:
                xt = x.t().contiguous()
                fns["torch CSR"] = lambda: torch.sparse.mm(csr, xt)
            ms = _median_ms(fns, budget_s)
            ours = ms.pop("ours")
            baselines = {**dense_ms[M], **ms}
            dense = next(iter(dense_ms[M].values()))
            rows.append({
                "case": f"bsr_linear {dtype} {block[0]}x{block[1]} {N}x{K}" + (" cold" if cold else ""),
                "M": M, "N": N, "K": K, "dtype": dtype, "block": f"{block[0]}x{block[1]}", "sparsity": sparsity,
                "ours_ms": ours, "baselines": baselines, "speedup": dense / ours,
                "speedup_vs_best_torch": min(baselines.values()) / ours,
                "gops_dense_eq_per_core": 2 * M * N * K / (ours * 1e-3) / 1e9 / torch.get_num_threads(),
                "weight_gbps": weight_bytes / (ours * 1e-3) / 1e9,
                "pack_ms": pack_ms, "threads": torch.get_num_threads(), "cold": cold,
            })
    return rows


def run(quick: bool = False, cold: bool = False, threads: int = THREADS) -> list[dict]:
    """Rows for every (kernel, shape, M, sparsity); quick: 4096x4096, M in (1, 32, 128), 50% and 90%."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shapes = SHAPES[:1] if quick else SHAPES
        tokens = (1, 32, 128) if quick else TOKENS
        sparsities = (0.5, 0.9) if quick else SPARSITIES
        budget = 0.3 if quick else 0.6
        rows = []
        for dtype, block in KERNELS:
            for N, K in shapes:
                rows += _case_rows(dtype, block, N, K, tokens, sparsities, budget, cold)
        return rows
    finally:
        torch.set_num_threads(previous)


def format_table(rows: list[dict]) -> str:
    """A plain-text table of rows (for a quick look without the harness)."""
    lines = [f"{'case':34} {'M':>4} {'sp':>5} {'ours ms':>9} {'dense ms':>9} {'x dense':>7} {'x best':>7} "
             f"{'GOPS/core':>9} {'w GB/s':>7}"]
    for r in rows:
        dense = next(iter(r["baselines"].values()))
        lines.append(f"{r['case']:34} {r['M']:>4} {r['sparsity']:>5.2f} {r['ours_ms']:>9.3f} {dense:>9.3f} "
                     f"{r['speedup']:>7.2f} {r['speedup_vs_best_torch']:>7.2f} {r['gops_dense_eq_per_core']:>9.0f} "
                     f"{r['weight_gbps']:>7.2f}")
    return "\n".join(lines)
