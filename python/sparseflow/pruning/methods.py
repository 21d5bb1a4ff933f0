"""The pruning methods on one layer: calibration statistics, magnitude / Wanda scores, SparseGPT and DSnoT.

Everything works on float32 copies of a weight [out, in]; the caller writes the result back."""

from __future__ import annotations

import torch

from .config import Pattern
from .masks import compute_mask, nm_mask


class LayerStats:
    """Statistics of a Linear layer's inputs over the calibration tokens: per-input-feature sum and sum of
    squares (Wanda's ||X_j||, DSnoT's mean and variance) and, for SparseGPT, the Gram matrix XᵀX."""

    def __init__(self, in_features: int, device: torch.device, hessian: bool):
        self.count = 0
        self.sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.sumsq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(self.sum.device, torch.float32)
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sumsq += x.square().sum(0)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)

    def norms(self) -> torch.Tensor:
        return self.sumsq.sqrt()

    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    def var(self) -> torch.Tensor:
        m = self.mean()
        return (self.sumsq / max(self.count, 1) - m.square()).clamp_min(0)

    def hessian(self) -> torch.Tensor:
        """H = 2 XᵀX / n, the Hessian of the layer's squared reconstruction error."""
        return self.gram * (2.0 / max(self.count, 1))


def wanda_scores(weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    return weight.abs() * stats.norms().unsqueeze(0)


def upper_cholesky_of_inverse(h: torch.Tensor, damp: float) -> torch.Tensor:
    """U upper triangular with UᵀU = (H + λI)⁻¹, λ = damp · mean(diag H), grown tenfold while H is singular.

    With J the reversal permutation, chol(J H J) = L gives H = R Rᵀ for the upper triangular R = J L J, so
    H⁻¹ = (R⁻¹)ᵀ R⁻¹ and U = R⁻¹: one Cholesky and one triangular inverse (cholesky_inverse followed by a
    second Cholesky costs several times more on CPU)."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    scale = h.diagonal().mean().clamp_min(torch.finfo(h.dtype).tiny)
    flipped = h.flip(0, 1)
    for attempt in range(6):
        lower, info = torch.linalg.cholesky_ex(flipped + eye * (damp * 10**attempt * scale))
        if int(info) == 0:
            return torch.linalg.solve_triangular(lower.flip(0, 1), eye, upper=True)
    raise RuntimeError("sparseflow.prune_: sparsegpt: the calibration Hessian stays singular even heavily damped")


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    sparsity: float,
    per_row: bool,
    blocksize: int,
    damp: float,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: prunes column by column and spreads each pruned weight's error over the columns not yet
    visited along the inverse-Hessian row (OBS), with the updates of later column blocks batched per block.
    The mask is chosen per block of columns from w² / [H⁻¹]ᵢᵢ² (per M columns for N:M) unless `keep` fixes
    it. Returns (new weight, keep-mask)."""
    w = weight.detach().to(torch.float32).clone()
    rows, cols = w.shape
    h = hessian.to(torch.float32).clone()
    dead = h.diagonal() == 0  # inputs never active: their weights do not matter, keep H invertible
    h[dead, dead] = 1.0
    hinv = upper_cholesky_of_inverse(h, damp)
    if pattern.kind == "channels":
        # A whole output row gone leaves no weight of that row to compensate with: only the choice is OBS.
        if keep is None:
            keep = compute_mask(w.square() / hinv.diagonal().square(), pattern, sparsity, per_row)
        return w * keep, keep
    step = pattern.m if pattern.kind == "nm" else pattern.c if pattern.kind == "block" else 1
    blocksize = -(-blocksize // step) * step  # whole N:M groups / blocks per tile
    sub = -(-16 // step) * step
    fixed = keep is not None
    # Work on the transpose, in place: a weight column is then a contiguous row, and the rank-1 updates
    # are ~50x faster than on strided columns. Buffers are reused: fresh large CPU allocations page-fault.
    wt = w.t().contiguous()
    keep_t = keep.t().contiguous() if fixed else torch.empty(cols, rows, dtype=torch.bool, device=w.device)
    pruned = torch.empty(min(blocksize, cols), rows, dtype=torch.bool, device=w.device)
    err_buf = torch.empty(min(blocksize, cols), rows, dtype=torch.float32, device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = wt[i1:i2]
        err1 = err_buf[:count]
        hinv1 = hinv[i1:i2, i1:i2]
        d = hinv1.diagonal()
        d_list = d.tolist()
        k1 = keep_t[i1:i2]
        p1 = pruned[:count]
        if not fixed and pattern.kind != "nm":
            k1.copy_(compute_mask((w1.square() / d.square().unsqueeze(1)).t(), pattern, sparsity, per_row).t())
        if pattern.kind != "nm" or fixed:
            torch.logical_not(k1, out=p1)
        # Columns in sub-blocks of ~16: rank-1 updates inside a sub-block, one GEMM for the rest of the
        # tile. The small updates then stay below torch's parallel grain (a 2-thread barrier per tiny op
        # costs milliseconds on a busy CPU) while the work moves into GEMMs.
        for s1 in range(0, count, sub):
            s2 = min(s1 + sub, count)
            for i in range(s1, s2):
                if pattern.kind == "nm" and not fixed and i % pattern.m == 0:
                    g = slice(i, i + pattern.m)
                    k1[g] = nm_mask((w1[g].square() / d[g].square().unsqueeze(1)).t(), pattern.n, pattern.m).t()
                    torch.logical_not(k1[g], out=p1[g])
                # OBS: the error of zeroing column i's pruned weights, spread over the later columns.
                e = err1[i]
                torch.mul(w1[i], p1[i], out=e)
                e.div_(d_list[i])
                w1[i:s2].addr_(hinv1[i, i:s2], e, alpha=-1.0)
            if s2 < count:
                w1[s2:].addmm_(hinv1[s1:s2, s2:].t(), err1[s1:s2], alpha=-1.0)
        w1.mul_(k1)  # exact zeros (the updates leave rounding residues there)
        if i2 < cols:
            wt[i2:].addmm_(hinv[i1:i2, i2:].t(), err1, alpha=-1.0)
    return wt.t().contiguous(), keep_t.t().contiguous()


def dsnot_refine(
    weight: torch.Tensor,
    keep: torch.Tensor,
    score: torch.Tensor,
    stats: LayerStats,
    pattern: Pattern,
    max_cycles: int,
    threshold: float,
    var_power: float,
) -> torch.Tensor:
    """DSnoT (Zhang et al., 2023): per output row, the expected output error of pruning is
    e = Σ_pruned W_ij E[x_j]. Each cycle regrows the pruned weight that cuts e the most (ranked by
    W_ij E[x_j] / Var[x_j]^p) and prunes the least important kept weight (by `score`) whose contribution
    also cuts e (N:M: the least important kept weight of the regrown weight's group, so groups keep n).
    A swap is made only if it lowers the row's reconstruction error on the calibration inputs,
    ‖(W - W_pruned) X‖² (needs stats with the Gram matrix; the reference only asks that e keeps its sign,
    which can make a layer worse). A row stops for good at its first rejected swap, once |e| <= threshold,
    or after max_cycles. Keeps the per-row (and per-group) counts. Returns the new keep-mask."""
    w = weight.to(torch.float32)
    keep = keep.clone()
    rows, cols = w.shape
    mean = stats.mean().to(w.device)
    contrib = w * mean.unsqueeze(0)
    err = (contrib * ~keep).sum(1)
    var = stats.var().to(w.device).clamp_min(1e-12)
    # Reconstruction error of each row on the calibration inputs, J = δ G δᵀ with δ the row's pruned
    # weights and G = XᵀX / n; g = δ G is kept up to date to price a swap exactly.
    gram = stats.gram.to(w.device) / max(stats.count, 1)
    g = (w * ~keep) @ gram
    gram_diag = gram.diagonal()
    gain = torch.where(keep, torch.zeros_like(w), contrib / var.pow(var_power).unsqueeze(0))
    regrow_order = torch.argsort(gain, dim=1, stable=True)  # pruned with gain > 0 at the end, < 0 at the start
    lo = torch.zeros(rows, dtype=torch.long, device=w.device)
    hi = torch.full((rows,), cols - 1, dtype=torch.long, device=w.device)
    ar = torch.arange(rows, device=w.device)
    inf = torch.tensor(float("inf"), device=w.device)
    if pattern.kind == "nm":
        regrown = torch.zeros_like(keep)
        offsets = torch.arange(pattern.m, device=w.device)
    else:
        # Pruning candidates: kept weights in ascending score, one list per sign of their contribution.
        neg_key = torch.where(keep & (contrib < 0), score, inf)
        pos_key = torch.where(keep & (contrib > 0), score, inf)
        neg_order = torch.argsort(neg_key, dim=1, stable=True)
        pos_order = torch.argsort(pos_key, dim=1, stable=True)
        pn = torch.zeros(rows, dtype=torch.long, device=w.device)
        pp = torch.zeros(rows, dtype=torch.long, device=w.device)
    active = torch.ones(rows, dtype=torch.bool, device=w.device)
    for _ in range(max_cycles):
        want_pos = err > 0  # regrow a weight with a positive contribution, prune a negative one
        r_idx = torch.where(want_pos, regrow_order[ar, hi], regrow_order[ar, lo])
        r_contrib = contrib[ar, r_idx]
        ok = active & ~keep[ar, r_idx] & (r_contrib * err > 0) & (err.abs() > threshold)
        if pattern.kind == "nm":
            group = (r_idx - r_idx % pattern.m).unsqueeze(1) + offsets
            rows_g = ar.unsqueeze(1)
            cand = torch.where(keep[rows_g, group] & ~regrown[rows_g, group], score[rows_g, group], inf)
            best, arg = cand.min(dim=1)
            p_idx = group[ar, arg]
            ok &= torch.isfinite(best)
        else:
            pn_c, pp_c = pn.clamp(max=cols - 1), pp.clamp(max=cols - 1)
            p_idx = torch.where(want_pos, neg_order[ar, pn_c], pos_order[ar, pp_c])
            p_key = torch.where(want_pos, neg_key[ar, p_idx], pos_key[ar, p_idx])
            ok &= torch.isfinite(p_key) & torch.where(want_pos, pn < cols, pp < cols)
        new_err = err - r_contrib + contrib[ar, p_idx]
        # Change of J when δ_r: w_r -> 0 and δ_p: 0 -> w_p; the swap must lower J.
        w_r, w_p = w[ar, r_idx], w[ar, p_idx]
        delta = (2 * (w_p * g[ar, p_idx] - w_r * g[ar, r_idx]) + w_r.square() * gram_diag[r_idx]
                 + w_p.square() * gram_diag[p_idx] - 2 * w_r * w_p * gram[r_idx, p_idx])
        ok &= delta < 0
        active = ok
        if not bool(ok.any()):
            break
        sel = ar[ok]
        keep[sel, r_idx[ok]] = True
        keep[sel, p_idx[ok]] = False
        err = torch.where(ok, new_err, err)
        g[sel] += w_p[ok].unsqueeze(1) * gram[p_idx[ok]] - w_r[ok].unsqueeze(1) * gram[r_idx[ok]]
        hi -= (ok & want_pos).long()
        lo += (ok & ~want_pos).long()
        if pattern.kind == "nm":
            regrown[sel, r_idx[ok]] = True
        else:
            pn += (ok & want_pos).long()
            pp += (ok & ~want_pos).long()
    return keep
