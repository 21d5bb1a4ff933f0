"""Gradual magnitude pruning for training loops, shaped like torch.ao.pruning: prepare / step / squash.

    pruner = GradualPruner(0.8, start_step=0, end_step=1000, frequency=100)
    pruner.prepare(model)             # masks as parametrizations of each Linear weight
    for batch in data:
        loss(model(batch)).backward(); opt.step(); opt.zero_grad()
        pruner.step()                 # raises the sparsity on the cubic schedule at update steps
    pruner.squash()                   # plain Linear layers with zeros in their weights

The model sees weight * mask at every forward, so masked weights stay zero through fine-tuning (the dense
Parameters stay the same objects, so an optimizer made before prepare() keeps working). With an
N:M pattern the mask is applied from `start_step` on; with ste=True gradients reach the masked weights
too (straight-through, optionally with the SR-STE decay on them) and masks recomputed every `frequency`
steps up to `end_step` can change: N:M sparse training.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._select import select_linears
from .config import Pattern, _check_fraction, parse_pattern
from .masks import compute_mask


def cubic_sparsity(step: int, final: float, *, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))³ for t0 <= t <= t1; 0 before t0
    (dense), s_f after t1."""
    if step < start:
        return 0.0
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


class _STEMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask, decay):
        ctx.save_for_backward(w, mask)
        ctx.decay = decay
        return w * mask

    @staticmethod
    def backward(ctx, grad):
        w, mask = ctx.saved_tensors
        if ctx.decay:
            grad = grad + ctx.decay * w * ~mask
        return grad, None, None


class _Mask(nn.Module):
    """Parametrization weight -> weight * mask (bool buffer)."""

    def __init__(self, mask: torch.Tensor, ste: bool, decay: float):
        super().__init__()
        self.register_buffer("mask", mask)
        self.ste = ste
        self.decay = decay

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.ste and torch.is_grad_enabled():
            return _STEMask.apply(w, self.mask, self.decay)
        return w * self.mask


class GradualPruner:
    """Magnitude masks on a schedule, applied through parametrizations.

    sparsity: final fraction removed per layer (None: 0.5, or what an N:M pattern implies).
    pattern: as in PruneConfig ("unstructured", "2:4", (R, C), "channels").
    start_step, end_step, frequency: masks change at start_step + k·frequency and at end_step; the
        sparsity follows `cubic_sparsity` from initial_sparsity at start_step to `sparsity` at end_step.
    ranking: "layer" (default, as GMP) or "row".
    ste: straight-through gradients to masked weights (masks may then change when recomputed); srste_decay
        adds decay·w on the masked weights' gradients (SR-STE, Zhou et al. 2021).
    ignore / prune_lm_head: as in PruneConfig.
    """

    def __init__(
        self,
        sparsity: float | None = None,
        *,
        pattern: Union[str, Sequence[int], Pattern] = "unstructured",
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 1,
        initial_sparsity: float = 0.0,
        ranking: str = "layer",
        ste: bool = False,
        srste_decay: float = 0.0,
        ignore: Sequence[str] = (),
        prune_lm_head: bool = False,
    ):
        self.pattern = parse_pattern(pattern)
        if self.pattern.kind == "nm":
            implied = self.pattern.implied_sparsity
            if sparsity is not None and abs(sparsity - implied) > 1e-9:
                raise ValueError(f"sparseflow.GradualPruner: sparsity: the {self.pattern} pattern fixes sparsity "
                                 f"at {implied:g}, got {sparsity}")
            sparsity = implied
        sparsity = 0.5 if sparsity is None else sparsity
        _check_fraction("sparsity", sparsity)
        _check_fraction("initial_sparsity", initial_sparsity)
        end_step = start_step if end_step is None else end_step
        if start_step < 0 or end_step < start_step:
            raise ValueError(
                f"sparseflow.GradualPruner: need 0 <= start_step <= end_step, got {start_step}, {end_step}")
        if frequency < 1:
            raise ValueError(f"sparseflow.GradualPruner: frequency must be >= 1, got {frequency}")
        if initial_sparsity > sparsity:
            raise ValueError(f"sparseflow.GradualPruner: initial_sparsity {initial_sparsity} > sparsity {sparsity}")
        if ranking not in ("row", "layer"):
            raise ValueError(f"sparseflow.GradualPruner: ranking must be 'row' or 'layer', got {ranking!r}")
        if srste_decay < 0 or (srste_decay and not ste):
            raise ValueError("sparseflow.GradualPruner: srste_decay must be >= 0 and needs ste=True")
        self.sparsity = float(sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.ranking = ranking
        self.ste, self.srste_decay = ste, srste_decay
        self.ignore, self.prune_lm_head = list(ignore), prune_lm_head
        self.step_count = 0
        self.current_sparsity = 0.0
        self._layers: dict[str, nn.Linear] = {}

    def sparsity_at(self, step: int) -> float:
        if self.pattern.kind == "nm":
            return self.sparsity if step >= self.start_step else 0.0
        return cubic_sparsity(step, self.sparsity, start=self.start_step, end=self.end_step,
                              initial=self.initial_sparsity)

    def is_update_step(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step and (
            (step - self.start_step) % self.frequency == 0 or step == self.end_step)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Adds a (for now all-ones) mask to every selected Linear weight; applies step 0's masks."""
        if self._layers:
            raise RuntimeError("sparseflow.GradualPruner: prepare() was already called; squash() first")
        layers = select_linears(model, self.ignore, self.prune_lm_head)
        for name, layer in layers.items():
            self.pattern.check_shape(name, layer.weight.shape)
            if parametrize.is_parametrized(layer, "weight"):
                raise ValueError(f"sparseflow.GradualPruner: {name}.weight is already parametrized")
        if not layers:
            raise ValueError("sparseflow.GradualPruner: no nn.Linear layer to prune (check ignore)")
        for layer in layers.values():
            mask = torch.ones_like(layer.weight, dtype=torch.bool)
            parametrize.register_parametrization(layer, "weight", _Mask(mask, self.ste, self.srste_decay))
        self._layers = layers
        self.step_count = 0
        if self.is_update_step(0):
            self._update_masks(0)
        return model

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {n: layer.parametrizations.weight[0].mask for n, layer in self._layers.items()}

    @torch.no_grad()
    def _update_masks(self, step: int) -> None:
        target = self.sparsity_at(step)
        for layer in self._layers.values():
            param = layer.parametrizations.weight
            # Without STE masked weights get no gradient: rank the effective weights so pruned ones stay
            # pruned. With STE the dense weights keep learning and are ranked themselves.
            w = param.original if self.ste else layer.weight
            param[0].mask.copy_(compute_mask(w.detach().float().abs(), self.pattern, target, self.ranking == "row"))
        self.current_sparsity = target

    def step(self) -> float:
        """Call once per optimizer step; returns the sparsity in force."""
        if not self._layers:
            raise RuntimeError("sparseflow.GradualPruner: call prepare(model) before step()")
        self.step_count += 1
        if self.is_update_step(self.step_count):
            self._update_masks(self.step_count)
        return self.current_sparsity

    def squash(self) -> None:
        """Removes the parametrizations, leaving plain weights with the masked entries zero."""
        for layer in self._layers.values():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        self._layers = {}
