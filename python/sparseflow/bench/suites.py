"""All benchmark suites. Adding one: write ``suite_<name>.py`` with a ``@suite(...)`` generator of cases
(see ``suite_nm_pack.py``) and add the module to ``SUITE_MODULES``."""

from __future__ import annotations

import importlib

import torch

from .registry import SUITES, Suite

SUITE_MODULES = ("suite_nm_pack", "suite_cpu_linear", "suite_cpu_linear_nm", "suite_gpu_linear")

for _module in SUITE_MODULES:
    importlib.import_module(f"{__package__}.{_module}")


def ops_with_rows(suite: str) -> tuple[str, ...]:
    """The sparseflow ops that ``suite`` has benchmark rows for (empty for an unknown suite)."""
    return SUITES[suite].ops if suite in SUITES else ()


def get(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown bench suite {name!r}; known: {', '.join(sorted(SUITES))}")
    return SUITES[name]


def applicable(device: torch.device | str) -> list[Suite]:
    """The suites that run on ``device``'s type, in registration order."""
    kind = torch.device(device).type
    return [s for s in SUITES.values() if kind in s.devices]
