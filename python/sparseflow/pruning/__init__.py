"""Pruning: one-shot (`prune_`: magnitude, Wanda, SparseGPT, DSnoT; unstructured, N:M, blocks, channels;
OWL layer ratios) and gradual (`GradualPruner`: cubic GMP schedule, N:M sparse training).

The result is always a dense weight with zeros (masks are data): the kernels' `from_dense` packs it.
This package depends only on torch.
"""

from .config import OWL, LayerReport, Pattern, PruneConfig, PruneReport, parse_pattern
from .engine import owl_sparsities, prune_
from .gradual import GradualPruner, cubic_sparsity
from .masks import block_mask, channel_mask, compute_mask, nm_mask, unstructured_mask

__all__ = [
    "OWL",
    "GradualPruner",
    "LayerReport",
    "Pattern",
    "PruneConfig",
    "PruneReport",
    "block_mask",
    "channel_mask",
    "compute_mask",
    "cubic_sparsity",
    "nm_mask",
    "owl_sparsities",
    "parse_pattern",
    "prune_",
    "unstructured_mask",
]
