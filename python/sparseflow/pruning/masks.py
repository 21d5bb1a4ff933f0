"""Keep-masks from importance scores, for every pattern. Scores are [out, in] (higher = more important);
masks are bool [out, in] with True where the weight is kept."""

from __future__ import annotations

import torch

from .config import Pattern


def _count(sparsity: float, total: int) -> int:
    return min(total, int(round(sparsity * total)))


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Removes the lowest-scored fraction `sparsity` of each row (per_row) or of the whole matrix."""
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if per_row:
        k = _count(sparsity, scores.shape[1])
        if k:
            keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False, sorted=False).indices, False)
    else:
        k = _count(sparsity, scores.numel())
        if k:
            keep.view(-1)[torch.topk(scores.reshape(-1), k, largest=False, sorted=False).indices] = False
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keeps the n highest-scored of every m consecutive entries of a row (the row length is a multiple of m)."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(2, torch.topk(groups, n, dim=2, sorted=False).indices, True)
    return keep.reshape(rows, cols)


def block_mask(scores: torch.Tensor, sparsity: float, r: int, c: int, per_row: bool) -> torch.Tensor:
    """Zeroes whole r x c blocks with the lowest summed scores (per block row, or over the whole matrix)."""
    rows, cols = scores.shape
    block_scores = scores.reshape(rows // r, r, cols // c, c).sum(dim=(1, 3))
    keep = unstructured_mask(block_scores, sparsity, per_row)
    return keep.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)


def channel_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zeroes whole output rows with the lowest summed scores."""
    keep_rows = unstructured_mask(scores.sum(dim=1, keepdim=True), sparsity, per_row=False)
    return keep_rows.expand_as(scores).clone()


def compute_mask(scores: torch.Tensor, pattern: Pattern, sparsity: float, per_row: bool) -> torch.Tensor:
    """The keep-mask of `pattern` at `sparsity` (ignored by N:M, whose sparsity is fixed)."""
    if pattern.kind == "nm":
        return nm_mask(scores, pattern.n, pattern.m)
    if pattern.kind == "block":
        return block_mask(scores, sparsity, pattern.r, pattern.c, per_row)
    if pattern.kind == "channels":
        return channel_mask(scores, sparsity)
    return unstructured_mask(scores, sparsity, per_row)
