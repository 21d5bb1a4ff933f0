"""`prune_`: one-shot pruning, block by block.

The sequential engine (as in the SparseGPT and Wanda reference code): catch the inputs of the first
repeated block (hidden states plus whatever keyword arguments the model passes, e.g. attention masks and
position embeddings), then for each block: accumulate the statistics of its Linear layers' inputs, prune
them, and run the pruned block again so the next block is calibrated on what it will really receive.
Peak memory is one block plus the calibration activations. Linear layers outside the blocks (and every
layer when no chain of blocks is found, or with sequential=False) are calibrated in one forward pass of
the whole model, after the blocks.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from . import methods
from ._select import matches_any, select_linears
from .config import OWL, LayerReport, PruneConfig, PruneReport
from .masks import compute_mask

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


# ----------------------------------------------------------------------------------------------- batches


def _as_batches(calibration_data) -> list:
    if calibration_data is None:
        raise ValueError("sparseflow.prune_: calibration_data is required by this method (only magnitude without "
                         "dsnot or OWL runs without it)")
    if isinstance(calibration_data, (torch.Tensor, Mapping)):
        return [calibration_data]
    batches = list(calibration_data)
    if not batches:
        raise ValueError("sparseflow.prune_: calibration_data is empty")
    return batches


def _call(model: nn.Module, batch) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"sparseflow.prune_: a block returned {type(out).__name__}; expected a tensor or a tuple "
                    "starting with the hidden states")


@contextlib.contextmanager
def _inference_mode(model: nn.Module):
    """eval(), no KV cache (a cache object would grow each time a block reruns), restored afterwards."""
    was_training = model.training
    cfg = getattr(model, "config", None)
    use_cache = getattr(cfg, "use_cache", None)
    model.eval()
    if use_cache is not None:
        cfg.use_cache = False
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        if use_cache is not None:
            cfg.use_cache = use_cache


# ------------------------------------------------------------------------------------------------ blocks


def _module_device(module: nn.Module, default: torch.device) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else default


def _find_blocks(model: nn.Module, config: PruneConfig,
                 targets: Mapping[str, nn.Module]) -> list[tuple[str, nn.Module]]:
    """The chain of repeated blocks: config.blocks, else the homogeneous nn.ModuleList holding most of the
    target weights, else the nn.Sequential holding most of them. [] when there is none."""
    if config.blocks is not None:
        try:
            container = model.get_submodule(config.blocks) if config.blocks else model
        except AttributeError as e:
            raise ValueError(f"sparseflow.prune_: blocks: no submodule {config.blocks!r} in the model") from e
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise ValueError(f"sparseflow.prune_: blocks: {config.blocks!r} is a {type(container).__name__}, "
                             "not an nn.ModuleList or nn.Sequential")
        prefix = config.blocks + "." if config.blocks else ""
        return [(prefix + n, m) for n, m in container.named_children()]

    def target_numel(prefix: str) -> int:
        return sum(m.weight.numel() for n, m in targets.items() if n.startswith(prefix))

    best, best_numel = None, 0
    for kind_ok in (
        lambda c: isinstance(c, nn.ModuleList) and len({type(b) for b in c}) == 1,
        lambda c: isinstance(c, nn.Sequential),
    ):
        for name, c in model.named_modules():
            if kind_ok(c) and len(c) >= 2:
                numel = target_numel(name + "." if name else "")
                if numel > best_numel:
                    best, best_numel = name, numel
        if best is not None:
            prefix = best + "." if best else ""
            return [(prefix + n, m) for n, m in model.get_submodule(best).named_children()]
    return []


def _capture_block_inputs(model, blocks, batches, device) -> list[tuple[tuple, dict]] | None:
    """(args, kwargs) of the first block for every batch, or None when the blocks are not a chain: on the
    first batch the forward goes on to the second block, which must receive the first block's output."""
    captured: list[tuple[tuple, dict]] = []
    state = {"check": len(blocks) > 1, "ok": False, "out": None}

    def catch(_, args, kwargs):
        kwargs = dict(kwargs)
        for k in _CACHE_KWARGS:
            if k in kwargs:
                kwargs[k] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append((_to(args, device), _to(kwargs, device)))
        if not state["check"]:
            raise _Stop

    def first_out(_, args, out):
        state["out"] = _first_tensor(out)

    def second_in(_, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        y = state["out"]
        state["ok"] = y is not None and (x is y or (
            isinstance(x, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)))
        raise _Stop

    handles = [blocks[0][1].register_forward_pre_hook(catch, with_kwargs=True)]
    if state["check"]:
        handles.append(blocks[0][1].register_forward_hook(first_out))
        handles.append(blocks[1][1].register_forward_pre_hook(second_in, with_kwargs=True))
    try:
        for j, batch in enumerate(batches):
            try:
                _call(model, batch)
            except _Stop:
                pass
            if len(captured) != j + 1:
                raise RuntimeError(f"sparseflow.prune_: calibration batch {j} did not reach the first block "
                                   f"{blocks[0][0]!r} exactly once")
            if state["check"]:
                state["check"] = False
                if not state["ok"]:
                    return None
                for h in handles[1:]:
                    h.remove()
    finally:
        for h in handles:
            h.remove()
    return captured


def _run_block(block: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    outs = []
    for args, kwargs in inputs:
        if args:
            h = _first_tensor(block(*args, **kwargs))
            outs.append(((h,) + tuple(args[1:]), kwargs))
        else:  # hidden states passed by keyword: replace the first keyword argument
            key = next(iter(kwargs))
            h = _first_tensor(block(**kwargs))
            outs.append(((), {**kwargs, key: h}))
    return outs


@contextlib.contextmanager
def _collect(layers: Mapping[str, nn.Linear], device: torch.device | None, hessian: bool):
    stats = {n: methods.LayerStats(m.in_features, device or m.weight.device, hessian) for n, m in layers.items()}
    handles = [m.register_forward_hook(lambda _, inp, out, s=stats[n]: s.add(inp[0])) for n, m in layers.items()]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------- per layer


def _prune_layer(layer: nn.Linear, stats: methods.LayerStats | None, sparsity: float,
                 config: PruneConfig) -> LayerReport:
    t0 = time.perf_counter()
    pattern = config.parsed_pattern
    per_row = config.ranking == "row"
    weight = layer.weight
    w = weight.detach().to(torch.float32)
    wanda = methods.wanda_scores(w, stats) if stats is not None else None
    if config.method == "sparsegpt":
        new_w, keep = methods.sparsegpt_prune(w, stats.hessian(), pattern, sparsity, per_row,
                                              config.sparsegpt_blocksize, config.sparsegpt_damp)
        if config.dsnot:
            keep = methods.dsnot_refine(w, keep, wanda, stats, pattern, config.dsnot_max_cycles,
                                        config.dsnot_threshold, config.dsnot_var_power)
            new_w, _ = methods.sparsegpt_prune(w, stats.hessian(), pattern, sparsity, per_row,
                                               config.sparsegpt_blocksize, config.sparsegpt_damp, keep=keep)
        weight.data.copy_(new_w.to(weight.dtype))
    else:
        scores = wanda if config.method == "wanda" else w.abs()
        keep = compute_mask(scores, pattern, sparsity, per_row)
        if config.dsnot:
            keep = methods.dsnot_refine(w, keep, wanda, stats, pattern, config.dsnot_max_cycles,
                                        config.dsnot_threshold, config.dsnot_var_power)
        weight.data.mul_(keep.to(weight.dtype))
    achieved = (weight.detach() == 0).sum().item() / weight.numel()
    return LayerReport(sparsity, achieved, weight.numel(), time.perf_counter() - t0)


def _layer_sparsities(config: PruneConfig, targets: Mapping[str, nn.Linear]) -> dict[str, float]:
    """Float or dict sparsity per target layer; layers matched by no dict key are dropped."""
    spec = config.sparsity
    if isinstance(spec, Mapping):
        out = {}
        for name in targets:
            if name in spec:
                out[name] = spec[name]
            else:
                hit = next((v for k, v in spec.items() if matches_any(name, [k])), None)
                if hit is not None:
                    out[name] = hit
        return out
    if isinstance(spec, OWL):
        return {name: spec.target for name in targets}  # replaced per OWL unit later
    return {name: float(spec) for name in targets}


def owl_sparsities(outlier_fractions: list[float], sizes: list[int], owl: OWL) -> list[float]:
    """OWL: sparsity_i = target - λ·2·(D_i - min D)/(max D - min D) + c, with c making the size-weighted
    mean equal to target; D_i is unit i's outlier fraction. Uniform when all D_i are equal."""
    d = torch.tensor(outlier_fractions, dtype=torch.float64)
    w = torch.tensor(sizes, dtype=torch.float64)
    if len(d) == 0 or float(d.max() - d.min()) < 1e-12:
        return [owl.target] * len(d)
    s = -(d - d.min()) / (d.max() - d.min()) * (2 * owl.lam)
    s += owl.target - (s * w).sum() / w.sum()
    return s.clamp(0.0, 0.999).tolist()


def _outlier_fraction(layers: Mapping[str, nn.Linear], stats: Mapping[str, methods.LayerStats], m: float) -> float:
    scores = torch.cat([methods.wanda_scores(layers[n].weight.detach().float(), stats[n]).reshape(-1) for n in layers])
    return (scores > m * scores.mean()).double().mean().item()


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional: no bar then
            return _NoBar()
        return tqdm(total=total, desc=desc, leave=False)
    return _NoBar()


# ------------------------------------------------------------------------------------------------ prune_


def prune_(model: nn.Module, config: PruneConfig, calibration_data: Iterable | torch.Tensor | Mapping | None = None,
           *, progress: bool = True) -> PruneReport:
    """Prunes the model's nn.Linear weights in place (zeros in the dense weights; masks are data).

    calibration_data: one batch (a tensor passed as model(x), or a dict passed as model(**d)) or an iterable
    of batches (tensors, dicts, or tuples of positional arguments). Not needed by magnitude pruning without
    dsnot or OWL. The tensors are only read.
    Returns a PruneReport with the target and achieved sparsity of every pruned layer.
    """
    if not isinstance(config, PruneConfig):
        raise TypeError(f"sparseflow.prune_: config must be a PruneConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparseflow.prune_: model must be an nn.Module, got {type(model).__name__}")
    t_start = time.perf_counter()
    targets = select_linears(model, config.ignore, config.prune_lm_head)
    sparsity = _layer_sparsities(config, targets)
    targets = {n: m for n, m in targets.items() if n in sparsity}
    if not targets:
        raise ValueError("sparseflow.prune_: no nn.Linear layer left to prune (check ignore and the sparsity dict)")
    for name, layer in targets.items():
        config.parsed_pattern.check_shape(name, layer.weight.shape)
    reports: dict[str, LayerReport] = {}
    pattern_str = str(config.parsed_pattern)

    if not config.needs_calibration:
        with torch.no_grad():
            for name, layer in targets.items():
                reports[name] = _prune_layer(layer, None, sparsity[name], config)
        return PruneReport(config.method, pattern_str, reports, time.perf_counter() - t_start, False, 0)

    batches = _as_batches(calibration_data)
    hessian = config.method == "sparsegpt" or config.dsnot  # DSnoT prices swaps with XᵀX
    owl = config.sparsity if isinstance(config.sparsity, OWL) else None
    owl_report = None
    device = torch.device(config.device) if config.device is not None else None
    with _inference_mode(model):
        blocks = _find_blocks(model, config, targets) if config.sequential else []
        inputs = None
        if blocks:
            first_device = device or _module_device(blocks[0][1], torch.device("cpu"))
            inputs = _capture_block_inputs(model, blocks, batches, first_device)
            if inputs is None:
                msg = (f"sparseflow.prune_: the blocks {blocks[0][0]!r}... are not a chain (a block does not receive "
                       "the previous block's output)")
                if config.blocks is not None:
                    raise ValueError(msg)
                warnings.warn(msg + "; calibrating all layers in one pass of the dense model instead", stacklevel=2)
                blocks = []
        block_layers = [{n: m for n, m in targets.items() if n == bname or n.startswith(bname + ".")}
                        for bname, _ in blocks]
        in_blocks = {n for layers in block_layers for n in layers}
        rest = {n: m for n, m in targets.items() if n not in in_blocks}

        steps = len(blocks) * (2 if owl else 1) + (1 if rest else 0)
        with _progress(steps, f"prune_ {config.method}", progress) as bar:
            if owl is not None and blocks:
                # OWL needs every block's outlier ratio before the first is pruned: one dense pass.
                units, sizes, x = [], [], inputs
                for (bname, block), layers in zip(blocks, block_layers):
                    with _on_device(block, device):
                        with _collect(layers, device, hessian=False) as st:
                            x = _run_block(block, x)
                    if layers:
                        units.append((bname, layers, _outlier_fraction(layers, st, owl.m)))
                        sizes.append(sum(m.weight.numel() for m in layers.values()))
                    bar.update()
                ratios = owl_sparsities([u[2] for u in units], sizes, owl)
                owl_report = {}
                for (bname, layers, _), s in zip(units, ratios):
                    owl_report[bname] = s
                    for n in layers:
                        sparsity[n] = s
            x = inputs
            for i, ((bname, block), layers) in enumerate(zip(blocks, block_layers)):
                bar.set_postfix_str(bname)
                last = i == len(blocks) - 1
                with _on_device(block, device):
                    if layers:
                        with _collect(layers, device, hessian) as st:
                            _run_block(block, x)
                        for n, layer in layers.items():
                            reports[n] = _prune_layer(layer, st[n], sparsity[n], config)
                        del st
                    if not last:
                        x = _run_block(block, x)
                bar.update()
            del x, inputs
            if rest:
                # One pass of the whole model (blocks already pruned) for the layers outside the blocks.
                bar.set_postfix_str("layers outside blocks" if blocks else "all layers")
                with _collect(rest, None, hessian) as st:
                    for batch in batches:
                        _call(model, batch)
                if owl is not None:
                    names = [n for n in rest if not blocks]  # without blocks, each layer is an OWL unit
                    ratios = owl_sparsities([_outlier_fraction({n: rest[n]}, st, owl.m) for n in names],
                                            [rest[n].weight.numel() for n in names], owl)
                    owl_report = {**(owl_report or {}), **dict(zip(names, ratios))}
                    sparsity.update(zip(names, ratios))
                for n, layer in rest.items():
                    reports[n] = _prune_layer(layer, st[n], sparsity[n], config)
                bar.update()
    ordered = {n: reports[n] for n in targets}
    return PruneReport(config.method, pattern_str, ordered, time.perf_counter() - t_start, bool(blocks), len(blocks),
                       owl_report)


@contextlib.contextmanager
def _on_device(block: nn.Module, device: torch.device | None):
    """Moves a block to `device` for its calibration and pruning, then back where it was."""
    if device is None:
        yield
        return
    home = _module_device(block, device)
    block.to(device)
    try:
        yield
    finally:
        block.to(home)
