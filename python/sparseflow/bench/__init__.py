"""sparseflow benchmarks: one timing harness, a registry of suites and the ``python -m sparseflow.bench`` CLI.

The runtime never imports this package; it imports the library and ``sparseflow.testing``.
"""

from .harness import Timing, measure
from .registry import Case, Prepared, SuiteContext, suite
from .results import BaselineResult, Row

__all__ = ["measure", "Timing", "suite", "Case", "Prepared", "SuiteContext", "Row", "BaselineResult"]
