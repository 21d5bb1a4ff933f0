"""Loads the compiled parts: ``_C`` (CPU kernels + build info) and, when built, the CUDA kernels.

The CUDA kernels live in their own shared object so that a CPU-only torch can still use the CPU kernels.
Why the CUDA library did not load is kept in ``cuda_load_error`` and reported by ``python -m sparseflow.info``
and by any op called on a CUDA tensor.
"""

from __future__ import annotations

import os

import torch

from . import _C  # noqa: F401  (registers the schemas and the CPU kernels)

BUILD_INFO: dict = _C.build_info()
_HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_LIBRARY = os.path.join(_HERE, "_cuda_kernels.so")

cuda_loaded = False
cuda_load_error: str | None = None

if not BUILD_INFO["cuda_enabled"]:
    cuda_load_error = "this build of sparseflow has no CUDA kernels (built without nvcc or with a CPU-only torch)"
elif torch.version.cuda is None:
    cuda_load_error = (
        f"sparseflow was built with CUDA kernels, but the running torch {torch.__version__} is a CPU-only build"
    )
else:
    try:
        torch.ops.load_library(CUDA_LIBRARY)
        cuda_loaded = True
    except OSError as e:  # e.g. a torch of another version: report it, never a silent skip
        cuda_load_error = f"loading {CUDA_LIBRARY} failed: {e}"
