"""Configuration and report types of one-shot pruning (`sparseflow.pruning.prune_`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import torch

METHODS = ("magnitude", "wanda", "sparsegpt")
RANKINGS = ("row", "layer")
# Method-specific default ranking: Wanda ranks per output row as in its paper, magnitude per layer (the
# classic baseline), SparseGPT per tile of `sparsegpt_blocksize` columns (its adaptive mask selection).
DEFAULT_RANKING = {"magnitude": "layer", "wanda": "row", "sparsegpt": "layer"}


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern. `kind` is "unstructured", "nm" (n kept of every m consecutive input
    features of an output row), "block" (r output rows x c input columns, zero or kept as a whole) or
    "channels" (whole output rows)."""

    kind: str
    n: int = 0
    m: int = 0
    r: int = 0
    c: int = 0

    @property
    def implied_sparsity(self) -> float | None:
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.r}x{self.c}"
        return self.kind

    def check_shape(self, name: str, shape: torch.Size) -> None:
        out_f, in_f = shape
        if self.kind == "nm" and in_f % self.m:
            raise ValueError(
                f"sparseflow.prune_: layer {name!r} has {in_f} input features, not a multiple of m={self.m} "
                f"for the {self} pattern; add it to `ignore`"
            )
        if self.kind == "block" and (out_f % self.r or in_f % self.c):
            raise ValueError(
                f"sparseflow.prune_: layer {name!r} of shape {tuple(shape)} is not divisible into {self} blocks "
                f"(rows x columns); add it to `ignore`"
            )


def parse_pattern(pattern: Union[str, Sequence[int], Pattern]) -> Pattern:
    """Parses "unstructured", "channels", "N:M" (e.g. "2:4"), "RxC" (e.g. "16x16") or a tuple (R, C)."""
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, (tuple, list)):
        if len(pattern) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pattern):
            raise ValueError(f"sparseflow.prune_: pattern: a block pattern is a pair of ints (R, C), got {pattern!r}")
        r, c = pattern
        if r < 1 or c < 1:
            raise ValueError(f"sparseflow.prune_: pattern: block sizes must be >= 1, got {pattern!r}")
        return Pattern("block", r=r, c=c)
    if not isinstance(pattern, str):
        raise TypeError(f"sparseflow.prune_: pattern must be a str or an (R, C) tuple, got {type(pattern).__name__}")
    p = pattern.strip().lower()
    if p in ("unstructured", "channels"):
        return Pattern(p)
    if m := re.fullmatch(r"(\d+):(\d+)", p):
        n, mm = int(m[1]), int(m[2])
        if not 0 < n < mm:
            raise ValueError(f"sparseflow.prune_: pattern: N:M needs 0 < N < M, got {pattern!r}")
        return Pattern("nm", n=n, m=mm)
    if m := re.fullmatch(r"(\d+)x(\d+)", p):
        return parse_pattern((int(m[1]), int(m[2])))
    raise ValueError(
        f"sparseflow.prune_: pattern: expected 'unstructured', 'channels', 'N:M', 'RxC' or (R, C), got {pattern!r}"
    )


@dataclass(frozen=True)
class OWL:
    """Outlier-weighted layer-wise sparsity (Yin et al., 2023): blocks with more outliers of the Wanda score
    (entries above `m` times the block's mean score) are pruned less. Sparsities span target +- `lam` and
    their parameter-weighted mean is `target`."""

    target: float = 0.5
    m: float = 5.0
    lam: float = 0.08

    def __post_init__(self):
        _check_fraction("OWL.target", self.target)
        if not self.m > 0:
            raise ValueError(f"sparseflow.prune_: OWL.m must be > 0, got {self.m}")
        if not 0 <= self.lam < 1:
            raise ValueError(f"sparseflow.prune_: OWL.lam must be in [0, 1), got {self.lam}")


def _check_fraction(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"sparseflow.prune_: {what} must be a float, got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparseflow.prune_: {what} must be in [0, 1), got {value}")


SparsitySpec = Union[float, Mapping[str, float], OWL, str, None]


@dataclass
class PruneConfig:
    """What `prune_` does.

    method: "magnitude" (|W|), "wanda" (|W| * ||X_j||, Sun et al. 2023) or "sparsegpt" (OBS with a damped
        Hessian H = 2 X Xᵀ, blocks of `sparsegpt_blocksize` columns with lazy updates, Frantar & Alistarh 2023).
    sparsity: fraction of weights to remove: a float for every layer; a dict mapping module names or
        patterns (see `ignore`) to floats, where layers matched by no key are left dense; `OWL(...)` or "owl"
        for outlier-weighted ratios per block. None means 0.5, or the fraction an N:M pattern implies.
    pattern: "unstructured", "N:M" ("2:4", "4:8", grouped along input features), an (R, C) block or "RxC"
        string (R output rows x C input columns: 4x1, 16x1, 1x16, 16x16, 32x32, 64x64 match the kernels), or
        "channels" (whole output rows).
    ignore: module names not to prune: fnmatch patterns matched against the full name or any dotted suffix
        of it ("mlp.down_proj", "*.self_attn.*"), or regular expressions prefixed by "re:" (re.search).
    ranking: "row" keeps the same fraction in every output row (or block row), "layer" ranks the whole
        layer (for SparseGPT: each tile of columns). None picks the method's usual choice.
    dsnot: refine the mask training-free with DSnoT (Zhang et al. 2023): swap pruned and kept weights
        per row to cancel the expected output error Σ W·E[x]; unstructured and N:M only.
    prune_lm_head: lm_head (and any Linear tied to an embedding) is skipped unless this is True.
        Embeddings are never pruned.
    blocks: dotted path to the nn.ModuleList / nn.Sequential of repeated blocks (e.g. "model.layers"); None
        finds it. sequential=False calibrates every layer on the dense model in one pass instead.
    device: where blocks are calibrated and pruned (moved there one at a time and back), e.g. "cuda" for
        a model kept on the CPU; None uses each block where it is.
    """

    method: str = "wanda"
    sparsity: SparsitySpec = None
    pattern: Union[str, Sequence[int], Pattern] = "unstructured"
    ignore: Sequence[str] = ()
    ranking: str | None = None
    dsnot: bool = False
    dsnot_max_cycles: int = 50
    dsnot_threshold: float = 0.0
    dsnot_var_power: float = 1.0
    sparsegpt_blocksize: int = 128
    sparsegpt_damp: float = 0.01
    prune_lm_head: bool = False
    blocks: str | None = None
    sequential: bool = True
    device: Union[str, torch.device, None] = None
    parsed_pattern: Pattern = field(init=False, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"sparseflow.prune_: method must be one of {METHODS}, got {self.method!r}")
        self.parsed_pattern = parse_pattern(self.pattern)
        pat = self.parsed_pattern
        if self.ranking is None:
            self.ranking = DEFAULT_RANKING[self.method]
        if self.ranking not in RANKINGS:
            raise ValueError(f"sparseflow.prune_: ranking must be one of {RANKINGS}, got {self.ranking!r}")
        if isinstance(self.sparsity, str):
            if self.sparsity.lower() != "owl":
                raise ValueError(
                    f"sparseflow.prune_: sparsity: the only string accepted is 'owl', got {self.sparsity!r}")
            self.sparsity = OWL()
        if pat.kind == "nm":
            implied = pat.implied_sparsity
            if self.sparsity is not None and not (
                isinstance(self.sparsity, (int, float)) and abs(self.sparsity - implied) < 1e-9
            ):
                raise ValueError(
                    f"sparseflow.prune_: sparsity: the {pat} pattern fixes sparsity at {implied:g}; "
                    f"leave sparsity=None, got {self.sparsity!r}"
                )
            self.sparsity = implied
        elif self.sparsity is None:
            self.sparsity = 0.5
        if isinstance(self.sparsity, Mapping):
            for key, value in self.sparsity.items():
                if not isinstance(key, str):
                    raise TypeError(f"sparseflow.prune_: sparsity dict keys must be str, got {key!r}")
                _check_fraction(f"sparsity[{key!r}]", value)
        elif not isinstance(self.sparsity, OWL):
            _check_fraction("sparsity", self.sparsity)
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]
        if self.dsnot and pat.kind not in ("unstructured", "nm"):
            raise ValueError(f"sparseflow.prune_: dsnot refines unstructured and N:M masks only, not {pat}")
        if self.dsnot_max_cycles < 0 or self.dsnot_threshold < 0:
            raise ValueError("sparseflow.prune_: dsnot_max_cycles and dsnot_threshold must be >= 0")
        if self.sparsegpt_blocksize < 1:
            raise ValueError(f"sparseflow.prune_: sparsegpt_blocksize must be >= 1, got {self.sparsegpt_blocksize}")
        if not self.sparsegpt_damp > 0:
            raise ValueError(f"sparseflow.prune_: sparsegpt_damp must be > 0, got {self.sparsegpt_damp}")

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.dsnot or isinstance(self.sparsity, OWL)


@dataclass
class LayerReport:
    target_sparsity: float
    achieved_sparsity: float  # fraction of exact zeros in the weight after pruning
    numel: int
    time_s: float  # mask selection and weight update, without the calibration forwards


@dataclass
class PruneReport:
    method: str
    pattern: str
    layers: dict[str, LayerReport]
    time_s: float
    sequential: bool
    blocks: int  # number of repeated blocks pruned one after the other (0: one pass over the whole model)
    owl_sparsity: dict[str, float] | None = None  # per OWL unit (block or layer), when OWL was used

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all pruned layers."""
        total = sum(r.numel for r in self.layers.values())
        zeros = sum(r.achieved_sparsity * r.numel for r in self.layers.values())
        return zeros / total if total else 0.0

    def summary(self) -> str:
        lines = [
            f"sparseflow.prune_: {self.method} {self.pattern}, {len(self.layers)} layers, "
            f"sparsity {self.sparsity:.4f}, {self.time_s:.1f} s"
        ]
        width = max((len(n) for n in self.layers), default=4)
        for name, r in self.layers.items():
            lines.append(f"  {name:<{width}}  target {r.target_sparsity:.4f}  got {r.achieved_sparsity:.4f}")
        return "\n".join(lines)
