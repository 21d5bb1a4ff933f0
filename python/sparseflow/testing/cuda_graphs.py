"""CUDA-graph capture check shared by the CUDA kernel tests."""

from __future__ import annotations

from typing import Callable

import torch


def capture_and_replay(step: Callable[[], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Capture ``step()`` in a CUDA graph, refill ``x`` with new random values and replay the graph.

    Returns the graph's output tensor, which now holds ``step()`` of the new ``x``: an op that syncs with the
    host or allocates outside the graph's pool fails the capture, and one that baked in the old ``x`` fails
    the caller's comparison."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside the capture (the first call sets kernel attributes)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = step()
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    return y
