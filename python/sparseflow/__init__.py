"""sparseflow: fast sparse kernels for transformers, as PyTorch custom ops (``torch.ops.sparseflow``).

    import sparseflow
    sparseflow.prune_(model, sparseflow.PruneConfig(method="wanda", pattern="2:4"), calibration_tokens)
    sparseflow.sparsify_(model)                      # nn.Linear -> SparseLinear where the zeros fit a kernel
    sparseflow.save_pretrained(model, "out/")
"""

from __future__ import annotations

import torch  # noqa: F401  (must be imported before the extension: it provides libtorch)

from . import _loader
from . import _meta  # noqa: F401  (fakes and the clear "no CUDA kernel" errors)
from . import formats, nn, ops
from ._loader import BUILD_INFO
from .pruning import PruneConfig, prune_
from .sparsify import SparsifyConfig, densify_, load_pretrained, save_pretrained, sparsify_

__version__: str = BUILD_INFO["version"]

__all__ = ["ops", "formats", "nn", "BUILD_INFO", "__version__", "PruneConfig", "prune_", "SparsifyConfig",
           "sparsify_", "densify_", "save_pretrained", "load_pretrained"]
