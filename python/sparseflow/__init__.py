"""sparseflow: fast sparse kernels for transformers, as PyTorch custom ops (``torch.ops.sparseflow``)."""

from __future__ import annotations

import torch  # noqa: F401  (must be imported before the extension: it provides libtorch)

from . import _loader
from . import _meta  # noqa: F401  (fakes and the clear "no CUDA kernel" errors)
from . import formats, ops
from ._loader import BUILD_INFO

__version__: str = BUILD_INFO["version"]

__all__ = ["ops", "formats", "BUILD_INFO", "__version__"]
