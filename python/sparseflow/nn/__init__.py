"""Modules that run on sparseflow's kernels."""

from .linear import SparseLinear, parse_format

__all__ = ["SparseLinear", "parse_format"]
