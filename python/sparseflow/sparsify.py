"""Swap a model's nn.Linear layers for SparseLinear in place, undo it, and save/load sparse checkpoints.

    sparseflow.prune_(model, PruneConfig(...), calibration)     # zeros in the dense weights
    report = sparseflow.sparsify_(model, SparsifyConfig(format="2:4"))
    sparseflow.save_pretrained(model, "out/")                     # out/model.safetensors (+ metadata)
    sparseflow.load_pretrained(other_model, "out/")               # sparse modules, or dense with sparse=False
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from .formats import SparseWeight
from .nn.linear import SparseLinear, parse_format, sparse_weight_from_dense

CHECKPOINT_FILE = "model.safetensors"
CHECKPOINT_VERSION = 1
# Formats "auto" tries, most constrained first; a layer takes the first whose pattern its zeros follow.
AUTO_FORMATS = ("2:4", "4:8", "1:4", "32x32", "16x16", "16x1", "4x1", "1x16")


@dataclass
class SparsifyConfig:
    """How sparsify_ converts layers.

    format: "auto" (per layer: the first of AUTO_FORMATS the weight's zeros fit, if its stored bytes
        beat dense by ``min_saving``), "n:m", "RxC" or (R, C).
    dtype: weight dtype for the kernels (None: the layer's; torch.int8: per-channel int8 weights).
    fallback: SparseLinear's dense fallback policy ("measure", "never", "always").
    ignore: fnmatch patterns of module names left dense (lm_head and embeddings are never converted).
    min_saving: in "auto", skip layers whose sparse bytes are not at least this fraction below dense.
    """

    format: str | tuple[int, int] = "auto"
    dtype: torch.dtype | None = None
    fallback: Literal["measure", "never", "always"] = "measure"
    ignore: list[str] = field(default_factory=list)
    min_saving: float = 0.2


ALWAYS_DENSE = ("lm_head", "*embed*", "*lm_head")


def _ignored(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in (*ALWAYS_DENSE, *patterns))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _dense_bytes(linear: nn.Linear, dtype: torch.dtype | None) -> int:
    return linear.weight.numel() * (torch.tensor([], dtype=dtype or linear.weight.dtype).element_size())


def _convert(name: str, linear: nn.Linear, config: SparsifyConfig) -> tuple[SparseLinear | None, str]:
    formats = AUTO_FORMATS if config.format == "auto" else (config.format,)
    for spec in formats:
        kind, params = parse_format(spec)
        if kind == "nm" and linear.in_features % params[1]:
            if config.format != "auto":
                raise ValueError(f"sparseflow.sparsify_: layer {name!r} has in_features={linear.in_features}, "
                                 f"not a multiple of m={params[1]}")
            continue
        try:
            weight = sparse_weight_from_dense(linear.weight, spec, dtype=config.dtype)
        except ValueError as e:
            if config.format != "auto":
                raise ValueError(f"sparseflow.sparsify_: layer {name!r} does not fit format {spec!r}: {e}") from e
            continue
        if config.format == "auto" and 1 - weight.nbytes / _dense_bytes(linear, config.dtype) < config.min_saving:
            continue
        return SparseLinear.from_sparse_weight(weight, linear, fallback=config.fallback), str(spec)
    return None, "dense (no format fits with enough saving)"


def sparsify_(model: nn.Module, config: SparsifyConfig | None = None,
              filter_fn: Callable[[str, nn.Module], bool] | None = None) -> dict[str, str]:
    """Replace each nn.Linear (not lm_head/embeddings, not ``config.ignore``, and where ``filter_fn(name,
    module)`` is true) by a SparseLinear in place. Returns {module name: chosen format or why it stayed dense}."""
    config = config or SparsifyConfig()
    report: dict[str, str] = {}
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in targets:
        if _ignored(name, config.ignore) or (filter_fn is not None and not filter_fn(name, linear)):
            continue
        module, why = _convert(name, linear, config)
        report[name] = why
        if module is not None:
            _replace(model, name, module)
    return report


def densify_(model: nn.Module) -> int:
    """Replace every SparseLinear by an equivalent nn.Linear in place; returns how many were replaced."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    for name, module in targets:
        _replace(model, name, module.to_dense())
    return len(targets)


# ---------------------------------------------------------------------------------------------- checkpoints

def _module_meta(module: SparseLinear) -> dict:
    return {"kind": module.kind, "pattern": list(module.pattern), "activation": module.activation,
            "out_dtype": None if module.out_dtype is None else str(module.out_dtype).removeprefix("torch."),
            "fallback": module.fallback}


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> str:
    """Write ``path/model.safetensors``: the state dict (sparse layers in their canonical formats) plus a
    JSON description of every SparseLinear, so ``load_pretrained`` can rebuild them. Returns the file."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    state = model.state_dict()
    tensors, aliases, seen = {}, {}, {}
    for key, t in state.items():
        if t is None:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if ident is not None and ident in seen:  # tied weights (e.g. lm_head = embeddings): store once
            aliases[key] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = key
        tensors[key] = t.detach().contiguous().cpu()
    sparse = {n: _module_meta(m) for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    metadata = {"sparseflow_version": str(CHECKPOINT_VERSION), "sparse_modules": json.dumps(sparse),
                "aliases": json.dumps(aliases)}
    file = os.path.join(path, CHECKPOINT_FILE)
    save_file(tensors, file, metadata=metadata)
    return file


def _read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    from safetensors import safe_open

    file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else str(path)
    if not os.path.exists(file):
        raise FileNotFoundError(f"sparseflow.load_pretrained: no checkpoint at {file}")
    try:
        with safe_open(file, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ValueError(f"sparseflow.load_pretrained: {file} is not a readable safetensors file: {e}") from e
    version = metadata.get("sparseflow_version")
    if version != str(CHECKPOINT_VERSION):
        raise ValueError(f"sparseflow.load_pretrained: {file} has checkpoint version {version!r}, "
                         f"this sparseflow reads version {CHECKPOINT_VERSION}")
    try:
        sparse = json.loads(metadata["sparse_modules"])
        aliases = json.loads(metadata.get("aliases", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"sparseflow.load_pretrained: {file} has corrupt sparseflow metadata: {e}") from e
    for key, target in aliases.items():
        if target not in tensors:
            raise ValueError(f"sparseflow.load_pretrained: {file}: {key!r} aliases missing tensor {target!r}")
        tensors[key] = tensors[target]
    return tensors, sparse, aliases


def _sparse_weight(tensors: dict[str, torch.Tensor], prefix: str) -> SparseWeight:
    sd = {k[len(prefix) + 2:]: v for k, v in tensors.items() if k.startswith(prefix + "w_")}
    if not sd:
        raise ValueError(f"sparseflow.load_pretrained: the checkpoint has no sparse weight tensors for {prefix[:-1]!r}")
    weight = SparseWeight.from_state_dict(sd)
    weight.validate()
    return weight


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, sparse: bool = True, strict: bool = True) -> nn.Module:
    """Load a checkpoint written by save_pretrained into ``model`` (the same architecture, dense or
    sparsified). ``sparse=True``: layers stored sparse become SparseLinear modules; ``sparse=False``: they
    are densified into the model's nn.Linear weights (a plain dense model loads the checkpoint)."""
    tensors, sparse_modules, _ = _read_checkpoint(path)
    for name, meta in sparse_modules.items():
        prefix = name + "."
        try:
            current = model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"sparseflow.load_pretrained: the checkpoint has sparse layer {name!r}, the model does not") from e
        if not isinstance(current, (nn.Linear, SparseLinear)):
            raise ValueError(f"sparseflow.load_pretrained: {name!r} is a {type(current).__name__}, expected a Linear layer")
        weight = _sparse_weight(tensors, prefix)
        if tuple(weight.shape) != (current.out_features, current.in_features):
            raise ValueError(f"sparseflow.load_pretrained: {name!r} has shape {tuple(weight.shape)} in the checkpoint, "
                             f"{(current.out_features, current.in_features)} in the model")
        bias = tensors.get(prefix + "bias")
        device = next(iter(current.buffers() if isinstance(current, SparseLinear) else current.parameters())).device
        for key in [k for k in tensors if k.startswith(prefix)]:
            del tensors[key]
        if sparse:
            out_dtype = getattr(torch, meta["out_dtype"]) if meta.get("out_dtype") else None
            module = SparseLinear(weight.to(device), None if bias is None else bias.to(device),
                                  activation=meta["activation"], out_dtype=out_dtype, fallback=meta["fallback"])
        else:
            module = nn.Linear(current.in_features, current.out_features, bias=bias is not None, device=device,
                               dtype=current.weight.dtype if isinstance(current, nn.Linear) else None)
            with torch.no_grad():
                module.weight.copy_(weight.to_dense(module.weight.dtype))
                if bias is not None:
                    module.bias.copy_(bias)
        _replace(model, name, module)
    # Everything else is ordinary state; sparse layers were consumed above.
    sparse_prefixes = tuple(n + "." for n in sparse_modules)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(sparse_prefixes)}
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if strict and (missing or unexpected):
        raise ValueError(f"sparseflow.load_pretrained: checkpoint and model differ: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for key, value in tensors.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"sparseflow.load_pretrained: {key!r} has shape {tuple(value.shape)} in the checkpoint, "
                             f"{tuple(own[key].shape)} in the model")
    model.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)
    return model
