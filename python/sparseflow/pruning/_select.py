"""Which Linear layers a pruner touches: name patterns, and the lm_head / embedding protection."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable

from torch import nn


def name_matches(name: str, pattern: str) -> bool:
    """fnmatch against the full dotted name or any dotted suffix of it; "re:<regex>" uses re.search."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(name_matches(name, p) for p in patterns)


def _head_like(model: nn.Module) -> set[int]:
    """ids of the Linear modules that act as an output head: named lm_head, returned by
    get_output_embeddings(), or sharing their weight with an embedding (tied)."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and (name.rsplit(".", 1)[-1] == "lm_head" or id(m.weight) in embedding_weights):
            heads.add(id(m))
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        out = get_out()
        if isinstance(out, nn.Module):
            heads.add(id(out))
    return heads


def select_linears(model: nn.Module, ignore: Iterable[str], prune_lm_head: bool) -> dict[str, nn.Linear]:
    """The model's nn.Linear layers (in module order) minus `ignore` matches and, unless prune_lm_head, heads."""
    ignore = list(ignore)
    heads = set() if prune_lm_head else _head_like(model)
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m) not in heads and not matches_any(name, ignore)
    }
