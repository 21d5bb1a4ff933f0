"""What a benchmark suite is, and the registry the ``@suite`` decorator fills.

A suite is a function ``(ctx: SuiteContext) -> Iterable[Case]``. A ``Case`` is cheap to create: its tensors
are built by ``case.setup()`` only when the case runs (and after ``--filter``), which returns a ``Prepared``
with our function, the baselines measured in the same run, and an optional correctness check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

SIZES = ("full", "quick", "tiny")


@dataclass(frozen=True)
class SuiteContext:
    device: torch.device
    size: str = "full"  # "quick": smaller shapes for a fast look; "tiny": smallest shapes, for tests

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")

    def pick(self, full, quick, tiny):
        """The value for this run's size, e.g. ``ctx.pick(full=[(4096, 4096)], quick=[(1024, 1024)], tiny=[(8, 64)])``."""
        return {"full": full, "quick": quick, "tiny": tiny}[self.size]


@dataclass
class Prepared:
    fn: Callable[[], Any]
    baselines: dict[str, Callable[[], Any]]
    # Raises AssertionError when fn's result is wrong: a benchmark of a wrong kernel is flagged, not reported.
    check: Callable[[], None] | None = None
    # Baselines that cannot run on this case (name -> why), e.g. a torch path without this dtype.
    skipped: dict[str, str] = field(default_factory=dict)
    # The kernel fn runs, where the op reports it (e.g. ops.bsr_linear_cpu_kernel): "avx512_vnni:decode_16x1".
    kernel: str | None = None


@dataclass
class Case:
    name: str  # unique within the suite; what --filter matches
    op: str  # the sparseflow op this row measures
    params: dict[str, Any]  # shape and pattern parameters, e.g. {"rows": 4096, "cols": 4096, "n": 2, "m": 4}
    dtype: torch.dtype
    setup: Callable[[], Prepared]
    sparsity: float | None = None  # fraction of zeros, when the case has one
    flops: float | None = None  # dense-equivalent FLOPs of one call (the dense op's count), if meaningful
    bytes: float | None = None  # minimal bytes one call must read and write
    family: str | None = None  # cases that differ only by sparsity share a family (a line in --plot)


@dataclass(frozen=True)
class Suite:
    name: str
    cases: Callable[[SuiteContext], Iterable[Case]]
    ops: tuple[str, ...]  # the sparseflow ops it has rows for (tests/test_registry.py checks every op has one)
    devices: tuple[str, ...]  # device types it runs on
    description: str
    sparsity_axis: bool  # True: --plot draws speedup against sparsity; False: bars per case


SUITES: dict[str, Suite] = {}


def _chain(first: Callable[[SuiteContext], Iterable[Case]], second: Callable[[SuiteContext], Iterable[Case]]):
    def cases(ctx: SuiteContext) -> Iterable[Case]:
        yield from first(ctx)
        yield from second(ctx)

    return cases


def suite(name: str, *, ops: tuple[str, ...], devices: tuple[str, ...] = ("cpu", "cuda"), description: str = "",
          sparsity_axis: bool = False):
    """Register a suite: decorate its case generator. Then list the module in ``suites.SUITE_MODULES``."""

    def register(fn: Callable[[SuiteContext], Iterable[Case]]):
        doc_line = (fn.__doc__ or "").strip().split("\n")[0]
        new = Suite(name, fn, tuple(ops), tuple(devices), description or doc_line, sparsity_axis)
        if name in SUITES:  # several modules may add cases to one suite (e.g. cpu-linear: bsr and nm)
            old = SUITES[name]
            if set(old.ops) & set(new.ops):
                raise ValueError(f"bench suite {name!r}: ops {sorted(set(old.ops) & set(new.ops))} registered twice")
            new = Suite(name, _chain(old.cases, fn), old.ops + new.ops, tuple(dict.fromkeys(old.devices + new.devices)),
                        f"{old.description}; {new.description}", old.sparsity_axis or new.sparsity_axis)
        SUITES[name] = new
        return fn

    return register
