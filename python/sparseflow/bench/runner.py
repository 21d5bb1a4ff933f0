"""Runs suites: builds each case, checks our result, times ours and every baseline, makes the ``Row``."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from typing import Iterable

import torch

from .harness import Timing, measure_side_by_side
from .registry import Case, Suite, SuiteContext
from .results import BaselineResult, Row


@dataclass(frozen=True)
class TimingConfig:
    warmup: int
    repeats: int
    min_time_s: float
    max_time_s: float | None
    cold_cache: bool = False
    flush_bytes: int | None = None  # None: harness.default_flush_bytes(device)


TIMING = {
    "full": TimingConfig(warmup=3, repeats=15, min_time_s=0.5, max_time_s=5.0),
    "quick": TimingConfig(warmup=1, repeats=5, min_time_s=0.05, max_time_s=0.3),
    "tiny": TimingConfig(warmup=1, repeats=2, min_time_s=0.0, max_time_s=0.0),
}


def timing_for(size: str, **overrides) -> TimingConfig:
    return replace(TIMING[size], **{k: v for k, v in overrides.items() if v is not None})


def select_cases(suite: Suite, ctx: SuiteContext, pattern: str | None) -> list[Case]:
    """The suite's cases whose name matches ``pattern`` (re.search), none of them set up yet."""
    cases = list(suite.cases(ctx))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"bench suite {suite.name!r} has duplicate case names")
    regex = re.compile(pattern) if pattern else None
    return [c for c in cases if regex is None or regex.search(c.name)]


def _measure(fns, device: torch.device, cfg: TimingConfig) -> list[Timing]:
    return measure_side_by_side(fns, warmup=cfg.warmup, repeats=cfg.repeats, min_time_s=cfg.min_time_s, max_time_s=cfg.max_time_s,
                   cold_cache=cfg.cold_cache, flush_bytes=cfg.flush_bytes, device=device)


def run_case(suite: Suite, case: Case, device: torch.device, cfg: TimingConfig) -> Row:
    prepared = case.setup()
    check = "none"
    if prepared.check is not None:
        try:
            prepared.check()
            check = "ok"
        except AssertionError as e:
            check = f"failed: {str(e).splitlines()[0] if str(e) else 'AssertionError'}"
    ours, *others = _measure([prepared.fn, *prepared.baselines.values()], device, cfg)
    seconds = ours.median_ms / 1e3
    baselines = [BaselineResult(name, t.median_ms, t.q1_ms, t.q3_ms, t.min_ms, t.max_ms, t.median_ms / ours.median_ms,
                                t.samples_ms) for name, t in zip(prepared.baselines, others)]
    best = min(baselines, key=lambda b: b.median_ms, default=None)
    return Row(
        suite=suite.name, case=case.name, op=case.op, params=dict(case.params), dtype=str(case.dtype).removeprefix("torch."),
        sparsity=case.sparsity, device=ours.device, threads=ours.threads, cold_cache=ours.cold_cache,
        median_ms=ours.median_ms, q1_ms=ours.q1_ms, q3_ms=ours.q3_ms, min_ms=ours.min_ms, max_ms=ours.max_ms,
        gflops_dense_eq=case.flops / seconds / 1e9 if case.flops is not None else None,
        gbps=case.bytes / seconds / 1e9 if case.bytes is not None else None,
        baselines=baselines, best_baseline=best.name if best else None,
        best_baseline_ms=best.median_ms if best else None, speedup=best.speedup if best else None,
        family=case.family or case.name, check=check,
        notes=[f"{name} skipped: {why}" for name, why in prepared.skipped.items()],
        samples_ms=ours.samples_ms, kernel=prepared.kernel,
    )


def _progress(total: int, desc: str):
    """A tqdm bar on stderr when it is a terminal (tqdm is optional: without it, no bar)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print("note: tqdm is not installed (pip install 'sparseflow[bench]'); running without a progress bar",
              file=sys.stderr)
        return None
    return tqdm(total=total, desc=desc, unit="case", disable=None, file=sys.stderr, leave=False)


def run(plan: Iterable[tuple[Suite, list[Case]]], device: torch.device, cfg: TimingConfig,
        progress: bool = True) -> list[Row]:
    plan = list(plan)
    total = sum(len(cases) for _, cases in plan)
    bar = _progress(total, "sparseflow.bench") if progress and total else None
    rows = []
    try:
        for suite, cases in plan:
            for case in cases:
                if bar is not None:
                    bar.set_postfix_str(case.name, refresh=False)
                rows.append(run_case(suite, case, device, cfg))
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
    return rows
