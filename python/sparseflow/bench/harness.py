"""The one timing protocol of every sparseflow benchmark: warm-up, repeated timing, median and spread.

On CUDA each call is timed with a pair of CUDA events on the current stream (GPU time, no host
synchronisation inside the pair); on CPU with ``time.perf_counter_ns``. The cold-cache option writes a
buffer larger than the last-level cache (CPU) or the L2 (GPU) before every timed call, outside the
timed region.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

# Enough samples for a stable median even with a generous time budget; also bounds the JSON size.
MAX_SAMPLES = 1000
# Fewest samples a max_time_s budget may stop at (a median of fewer says little).
MIN_SAMPLES = 3
# Length of one function's turn in measure_side_by_side (also how often the time budget is re-checked).
ROUND_MS = 25.0
DEFAULT_CPU_FLUSH_BYTES = 256 << 20
FLUSH_ENV = "SPARSEFLOW_BENCH_FLUSH_MB"


@dataclass
class Timing:
    """Statistics of one measured function, in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    samples_ms: list[float] = field(repr=False)
    device: str
    threads: int
    cold_cache: bool
    flush_bytes: int  # 0 when cold_cache is off

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def n(self) -> int:
        return len(self.samples_ms)


def _llc_bytes() -> int:
    """Size of the largest CPU cache from sysfs (0 when unknown)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = 0
    try:
        entries = os.listdir(base)
    except OSError:
        return 0
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = units.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * scale)
    return best


def default_flush_bytes(device: torch.device | str) -> int:
    """How much to write to evict the caches before a cold-cache sample.

    ``SPARSEFLOW_BENCH_FLUSH_MB`` overrides. CPU: 256 MiB or 4x the largest cache if that is bigger (server
    LLCs reach hundreds of MiB). GPU: twice the L2, since L2 replacement is not strictly LRU.
    """
    env = os.environ.get(FLUSH_ENV)
    if env:
        return int(float(env) * (1 << 20))
    device = torch.device(device)
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).L2_cache_size
    return max(DEFAULT_CPU_FLUSH_BYTES, 4 * _llc_bytes())


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats(samples_ms: list[float], device: torch.device, cold_cache: bool, flush_bytes: int) -> Timing:
    s = sorted(samples_ms)
    return Timing(
        median_ms=statistics.median(s), q1_ms=_percentile(s, 0.25), q3_ms=_percentile(s, 0.75),
        min_ms=s[0], max_ms=s[-1], samples_ms=list(samples_ms), device=str(device),
        threads=torch.get_num_threads(), cold_cache=cold_cache, flush_bytes=flush_bytes if cold_cache else 0,
    )


def _wanted(n: int, total_ms: float, estimate_ms: float, repeats: int, min_time_s: float,
            max_time_s: float | None) -> int:
    """How many more samples to take (0: stop)."""
    if n >= MAX_SAMPLES:
        return 0
    if max_time_s is not None and total_ms >= max_time_s * 1e3 and n >= min(repeats, MIN_SAMPLES):
        return 0
    by_time = math.ceil((min_time_s * 1e3 - total_ms) / max(estimate_ms, 1e-6))
    return min(max(repeats - n, by_time, 0), MAX_SAMPLES - n)


def measure(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10, min_time_s: float = 0.1,
            max_time_s: float | None = None, cold_cache: bool = False, flush_bytes: int | None = None,
            device: torch.device | str = "cpu") -> Timing:
    """Time ``fn()`` and return the median, quartiles, extremes and every sample (ms).

    ``warmup`` untimed calls first (at least one, which also estimates the cost; with ``max_time_s``, no more
    once they took half of it). Then samples until there
    are at least ``repeats`` and they add up to at least ``min_time_s``; with ``max_time_s`` it stops once
    the samples add up to that (keeping at least ``min(repeats, 3)``), so a slow baseline cannot stall a run.
    ``cold_cache`` writes ``flush_bytes`` (default :func:`default_flush_bytes`) before every timed call.
    """
    return measure_side_by_side([fn], warmup=warmup, repeats=repeats, min_time_s=min_time_s, max_time_s=max_time_s,
                                cold_cache=cold_cache, flush_bytes=flush_bytes, device=device)[0]


def measure_side_by_side(fns: Sequence[Callable[[], Any]], *, warmup: int = 3, repeats: int = 10,
                         min_time_s: float = 0.1, max_time_s: float | None = None, cold_cache: bool = False,
                         flush_bytes: int | None = None, device: torch.device | str = "cpu") -> list[Timing]:
    """:func:`measure` for several functions at once, their samples taken in interleaved rounds of ~ROUND_MS
    each, so that load from other processes on a shared machine hits ours and the baselines alike and
    their ratio stays meaningful. Returns one Timing per function, in order."""
    if repeats < 1 or warmup < 0 or min_time_s < 0:
        raise ValueError(f"measure: need repeats >= 1, warmup >= 0, min_time_s >= 0; got {repeats}, {warmup}, {min_time_s}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    flush_bytes = default_flush_bytes(device) if flush_bytes is None else flush_bytes
    flush = _make_flush(device, flush_bytes) if cold_cache else None
    timer = _time_cuda if device.type == "cuda" else _time_cpu
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside a timed call is noise, not the kernel's cost
    try:
        estimates = []
        for fn in fns:
            start = time.perf_counter()
            for _ in range(max(warmup - 1, 0)):
                if max_time_s is not None and time.perf_counter() - start >= max_time_s / 2:
                    break  # a slow function is warm after one call; don't spend its time budget twice
                fn()
            estimates.append(timer(fn, 1, flush, device)[0])
        samples: list[list[float]] = [[] for _ in fns]
        while True:
            wanted = [_wanted(len(s), sum(s), e, repeats, min_time_s, max_time_s) for s, e in zip(samples, estimates)]
            if not any(wanted):
                break
            for i, fn in enumerate(fns):
                if wanted[i]:
                    samples[i] += timer(fn, min(wanted[i], max(1, int(ROUND_MS / max(estimates[i], 1e-6)))), flush,
                                        device)
                    estimates[i] = statistics.median(samples[i])
    finally:
        if gc_was_enabled:
            gc.enable()
    return [_stats(s, device, cold_cache, flush_bytes) for s in samples]


def _make_flush(device: torch.device, nbytes: int) -> Callable[[], None]:
    buf = torch.zeros(max(nbytes // 4, 1), dtype=torch.int32, device=device)
    if device.type == "cuda":
        return buf.zero_
    # Read-modify-write: a plain fill may use non-temporal stores that bypass (and so do not evict) the cache.
    return lambda: buf.add_(1)


def _time_cpu(fn, count: int, flush, device) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(count):
        if flush is not None:
            flush()
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1e6)
    return out


def _time_cuda(fn, count: int, flush, device) -> list[float]:
    with torch.cuda.device(device):
        torch.cuda.synchronize()  # earlier queued work must not land inside the first event pair
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        for start, end in zip(starts, ends):
            if flush is not None:
                flush()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()  # also catches work fn launched on other streams
        return [start.elapsed_time(end) for start, end in zip(starts, ends)]
