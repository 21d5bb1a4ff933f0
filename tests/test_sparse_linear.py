"""SparseLinear and sparsify_/densify_/save_pretrained/load_pretrained on small models."""

import pytest
import torch
from torch import nn

import sparseflow
from sparseflow.formats import BlockSparseWeight, NMWeight
from sparseflow.nn import SparseLinear
from sparseflow.sparsify import SparsifyConfig, densify_, load_pretrained, save_pretrained, sparsify_
from sparseflow.testing import reference as ref
from sparseflow.testing.op_db import random_nm_dense


def _nm_linear(out_f, in_f, n=2, m=4, bias=True, seed=0):
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(random_nm_dense(out_f, in_f, n, m, seed=seed))
    return lin


def _block_linear(out_f, in_f, block, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    r, c = block
    keep = torch.rand(-(-out_f // r), -(-in_f // c), generator=g) < density
    mask = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)[:out_f, :in_f]
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin


def _tol(dtype):
    return {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2), torch.int8: (5e-2, 5e-2)}[dtype]


@pytest.mark.parametrize("fmt", ["2:4", "4:8", "16x16", (4, 1), "1x16"])
@pytest.mark.parametrize("fallback", ["never", "always", "measure"])
def test_matches_dense_linear(fmt, fallback):
    lin = _nm_linear(48, 64, *(map(int, fmt.split(":")))) if isinstance(fmt, str) and ":" in fmt else \
        _block_linear(48, 64, fmt if isinstance(fmt, tuple) else tuple(map(int, fmt.split("x"))))
    sparse = SparseLinear.from_dense(lin, fmt, fallback=fallback)
    for shape in [(1, 64), (3, 64), (2, 5, 64), (0, 64), (129, 64)]:
        x = torch.randn(shape)
        torch.testing.assert_close(sparse(x), lin(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sparse.to_dense().weight, lin.weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_low_precision_weights(dtype):
    lin = _nm_linear(32, 128)
    sparse = SparseLinear.from_dense(lin, "2:4", dtype=dtype, fallback="never")
    x = torch.randn(7, 128)
    ref = torch.nn.functional.linear(x, sparse.to_dense().weight.float(), lin.bias.float())
    rtol, atol = _tol(dtype)
    out = sparse(x.to(dtype) if dtype != torch.int8 else x).float()
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol * ref.abs().max().item())


def test_state_dict_round_trip_is_exact():
    lin = _block_linear(40, 70, (4, 1))
    a = SparseLinear.from_dense(lin, (4, 1), fallback="never")
    b = SparseLinear.from_dense(_block_linear(40, 70, (4, 1), seed=1), (4, 1), fallback="never")
    b.load_state_dict(a.state_dict())
    x = torch.randn(9, 70)
    assert torch.equal(a(x), b(x))
    for pa, pb in zip(a._packed, b._packed):
        assert torch.equal(pa, pb)


def test_load_state_dict_checks_the_pattern_and_converts_float_dtypes():
    lin = nn.Linear(64, 32)
    two_four = SparseLinear.from_dense(lin, "2:4", prune=True, fallback="never")
    four_eight = SparseLinear.from_dense(lin, "4:8", prune=True, fallback="never")
    before = two_four.state_dict()
    # A 4:8 checkpoint in a 2:4 layer would pack and run as 2:4 (wrong numbers): refused, the layer untouched.
    with pytest.raises(RuntimeError, match=r"checkpoint holds NMWeight\(4:8.*this layer is NMWeight \(32, 64\) "
                                           r"with pattern \(2, 4\)"):
        two_four.load_state_dict(four_eight.state_dict())
    for k, v in two_four.state_dict().items():
        assert torch.equal(v, before[k]), k
    blocks = SparseLinear.from_dense(_block_linear(32, 64, (4, 1)), (4, 1), fallback="never")
    with pytest.raises(RuntimeError, match=r"with pattern \(1, 16\)"):
        SparseLinear.from_dense(_block_linear(32, 64, (1, 16)), (1, 16), fallback="never").load_state_dict(
            blocks.state_dict())
    # float to float converts (as for dense tensors); int8 and float do not
    as_bf16 = SparseLinear.from_dense(lin, "2:4", prune=True, dtype=torch.bfloat16, fallback="never")
    as_bf16.load_state_dict(before)
    expected = SparseLinear.from_sparse_weight(
        NMWeight.from_dense(two_four.to_dense().weight, n=2, m=4, dtype=torch.bfloat16), lin, fallback="never")
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    assert torch.equal(as_bf16(x), expected(x))
    as_int8 = SparseLinear.from_dense(lin, "2:4", prune=True, dtype=torch.int8, fallback="never")
    with pytest.raises(RuntimeError, match="checkpoint weight is torch.float32, this layer's is torch.int8"):
        as_int8.load_state_dict(before)


def test_bad_construction_errors():
    with pytest.raises(ValueError, match="format must be"):
        SparseLinear.from_dense(nn.Linear(8, 8), "2-4")
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        SparseLinear.from_dense(nn.Linear(8, 8), "2:4")
    with pytest.raises(TypeError, match="expected nn.Linear"):
        SparseLinear.from_dense(nn.Conv1d(2, 2, 1), "2:4")
    with pytest.raises(ValueError, match="activation must be"):
        SparseLinear(NMWeight.from_dense(_nm_linear(8, 8).weight), activation="tanh")


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 32)
        self.up = _nm_linear(64, 32, seed=1)
        self.down = _block_linear(32, 64, (16, 16), seed=2)
        self.dense_one = nn.Linear(32, 32)
        self.lm_head = _nm_linear(10, 32, seed=3)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = self.down(torch.relu(self.up(h)))
        return self.lm_head(self.dense_one(h))


def test_sparsify_densify_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP()
    tokens = torch.randint(0, 10, (2, 5))
    expected = model(tokens)
    report = sparsify_(model, SparsifyConfig(fallback="never"))
    assert report["up"] == "2:4" and report["down"] in ("32x32", "16x16")
    assert "dense" in report["dense_one"]
    assert isinstance(model.up, SparseLinear) and isinstance(model.lm_head, nn.Linear)
    torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)

    save_pretrained(model, tmp_path)
    sparse_copy = load_pretrained(TinyMLP(), tmp_path)
    assert isinstance(sparse_copy.up, SparseLinear)
    assert torch.equal(sparse_copy(tokens), model(tokens))
    dense_copy = load_pretrained(TinyMLP(), tmp_path, sparse=False)
    assert type(dense_copy.up) is nn.Linear
    torch.testing.assert_close(dense_copy(tokens), expected, rtol=1e-4, atol=1e-4)

    assert densify_(model) == 2
    torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    model = TinyMLP()
    sparsify_(model, SparsifyConfig(fallback="never"))
    file = save_pretrained(model, tmp_path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(TinyMLP(), tmp_path / "nowhere")
    with open(file, "r+b") as f:
        f.seek(20)
        f.write(b"garbage!")
    with pytest.raises(ValueError, match="not a readable safetensors file|corrupt"):
        load_pretrained(TinyMLP(), tmp_path)

    class Wider(TinyMLP):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(32, 96)

    save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match="'up' has shape"):
        load_pretrained(Wider(), tmp_path)


def test_torch_compile_runs_sparse_model():
    model = TinyMLP()
    sparsify_(model, SparsifyConfig(fallback="never"))
    tokens = torch.randint(0, 10, (2, 5))
    compiled = torch.compile(model, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(tokens), model(tokens))


def _resident_bytes(module: SparseLinear) -> int:
    """Bytes of the distinct storages a SparseLinear holds: its buffers, packed weight and dense copy."""
    tensors = [t for t in module._buffers.values() if t is not None] + list(module._packed or ())
    if module._dense_weight is not None:
        tensors.append(module._dense_weight)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _canonical_sparse_bytes(module: SparseLinear) -> int:
    return sum(t.nbytes for name, t in module.state_dict().items() if name.startswith("w_"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_cpu_holds_one_copy_of_the_sparse_weight(dtype, nm):
    # 4:8 float32 256x512: canonical 327,680 B (values 262,144 + indices 65,536); the bitmask adds 16,384.
    # int8 2:4 / 4:8 and float32 / bf16 2:4 pack their values in another order (the lane layouts,
    # csrc/nm/nm_lanes.h): the module holds only the packed tensors and rebuilds the canonical ones to save.
    sparse = SparseLinear.from_dense(_nm_linear(256, 512, *nm), f"{nm[0]}:{nm[1]}", dtype=dtype, fallback="never")
    if ref.uses_lane_layout(dtype, *nm):
        assert sparse.w_values.numel() == 0 and sparse.w_indices.numel() == 0
    else:
        assert sparse._packed[0] is sparse.w_values
    assert _resident_bytes(sparse) <= 1.2 * (_canonical_sparse_bytes(sparse) + sparse.bias.nbytes)


def test_nm_state_dict_format_is_unchanged():
    lin = _nm_linear(24, 40, 2, 4)
    for dtype in (torch.float32, torch.bfloat16, torch.int8):
        canonical = NMWeight.from_dense(lin.weight.detach(), n=2, m=4, dtype=dtype)
        old_format = {f"w_{k}": v for k, v in canonical.state_dict().items()}
        sparse = SparseLinear.from_sparse_weight(canonical, lin, fallback="never")
        sd = {k: v for k, v in sparse.state_dict().items() if k != "bias"}
        assert sd.keys() == old_format.keys()
        for k, v in old_format.items():
            assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
        # A checkpoint in that format loads into a layer built from other weights and gives the same outputs.
        other = SparseLinear.from_dense(_nm_linear(24, 40, 2, 4, seed=3), "2:4", dtype=dtype, fallback="never")
        other.load_state_dict({**old_format, "bias": sparse.bias})
        assert (other.w_values.numel() == 0) == ref.uses_lane_layout(dtype, 2, 4)
        x = torch.randn(5, 40).to(torch.float32 if dtype == torch.int8 else dtype)
        assert torch.equal(other(x), sparse(x))


@pytest.mark.parametrize("dtype,nm", [(torch.float32, (2, 4)), (torch.bfloat16, (2, 4)), (torch.int8, (2, 4)),
                                      (torch.int8, (4, 8))])
def test_nm_lane_layout_rebuilds_the_canonical_weight(dtype, nm):
    """The lane layouts hold only the packed tensors: state_dict, weight_sparse, to_dense, .to() and deepcopy
    see the canonical weight, bit for bit, rebuilt from them."""
    import copy
    import dataclasses

    lin = _nm_linear(40, 72, *nm)  # a short last 16-row block; 72 % 8 == 0, 72 % 32 == 8
    canonical = NMWeight.from_dense(lin.weight.detach(), n=nm[0], m=nm[1], dtype=dtype)
    sparse = SparseLinear.from_sparse_weight(canonical, lin, fallback="never")
    assert sparse.w_values.numel() == 0 and sparse.w_values.dtype == canonical.values.dtype
    sd = sparse.state_dict()
    for k, v in canonical.state_dict().items():
        assert torch.equal(sd[f"w_{k}"], v), k
    assert torch.equal(sparse.weight_sparse.indices, canonical.indices)
    assert torch.equal(sparse.to_dense().weight, SparseLinear.from_sparse_weight(
        canonical, lin, fallback="always").to_dense().weight)
    x = torch.randn(3, 72).to(torch.float32 if dtype == torch.int8 else dtype)
    y = sparse(x)
    clone = copy.deepcopy(sparse)
    assert torch.equal(clone(x), y)
    reloaded = SparseLinear.from_dense(_nm_linear(40, 72, *nm, seed=7), f"{nm[0]}:{nm[1]}", dtype=dtype,
                                       fallback="never")
    reloaded.load_state_dict(sd)
    assert torch.equal(reloaded(x), y) and reloaded.w_values.numel() == 0
    if dtype != torch.int8:  # a move repacks from the rebuilt canonical tensors
        sparse.to(torch.float16)
        assert sparse.w_values.dtype == torch.float16 and sparse.w_values.shape == canonical.values.shape
        half = dataclasses.replace(canonical, values=canonical.values.half())
        direct = SparseLinear(half, sparse.bias, fallback="never")
        x16 = x.half()
        assert torch.equal(sparse(x16), direct(x16))


def test_nm_repacks_shared_values_on_to_and_deepcopy():
    import copy

    # 4:8: a row-major layout for float32 and bfloat16 (2:4 takes the lane layout, a reordered copy)
    lin = _nm_linear(32, 64, 4, 8)
    sparse = SparseLinear.from_dense(lin, "4:8", fallback="never")
    sparse.to(device="cpu")
    assert sparse._packed[0] is sparse.w_values
    sparse.to(torch.bfloat16)
    assert sparse._packed[0] is sparse.w_values and sparse.w_values.dtype == torch.bfloat16
    direct = SparseLinear.from_dense(lin, "4:8", dtype=torch.bfloat16, fallback="never")
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert torch.equal(sparse(x), direct(x))
    assert torch.equal(sparse._packed[1], direct._packed[1])

    clone = copy.deepcopy(sparse)
    assert clone._packed[0] is clone.w_values and clone.w_values.data_ptr() != sparse.w_values.data_ptr()
    assert torch.equal(clone(x), sparse(x))
    with torch.no_grad():
        clone.w_values.zero_()  # the copy's kernel reads its own buffer, the original's is untouched
    assert torch.equal(clone(x), clone.bias.expand(3, -1))
    assert torch.equal(sparse(x), direct(x))


# Block shapes that pack as they are (4x1 / 16x1 int8, 16x1 / 1x16 float) and ones re-cut into other native blocks.
_ONE_COPY_BLOCKS = [(4, 1), (16, 1), (1, 16), (2, 8), (3, 5), (16, 16), (32, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("block", _ONE_COPY_BLOCKS)
def test_bsr_cpu_holds_one_copy_and_rebuilds_the_canonical_weight(dtype, block):
    """A block weight on CPU holds only bsr_pack's tensors: state_dict, weight_sparse, to_dense, deepcopy, load and
    .to() see the canonical weight, bit for bit, rebuilt from them (csrc/bsr/bsr.h, sparseflow._bsr_layouts)."""
    import copy

    lin = _block_linear(41, 75, block, density=0.4)  # a partial last block-row and block-column for every block
    canonical = BlockSparseWeight.from_dense(lin.weight.detach(), block, dtype=dtype)
    sparse = SparseLinear.from_sparse_weight(canonical, lin, fallback="never")
    for name in ("crow", "col", "values"):
        held = getattr(sparse, f"w_{name}")
        assert held.numel() == 0 and held.dtype == getattr(canonical, name).dtype, name
    # the packed tensors, plus the bias, the int8 scales and the small header buffers (format, block, shape)
    buffer_bytes = sum(t.nbytes for t in sparse._buffers.values() if t is not None)
    assert _resident_bytes(sparse) == sum(t.nbytes for t in sparse._packed) + buffer_bytes
    sd = sparse.state_dict()
    for k, v in canonical.state_dict().items():
        assert sd[f"w_{k}"].dtype == v.dtype and torch.equal(sd[f"w_{k}"], v), k
    assert torch.equal(sparse.weight_sparse.values, canonical.values)
    dense_copy = SparseLinear.from_sparse_weight(canonical, lin, fallback="always")
    assert torch.equal(sparse.to_dense().weight, dense_copy.to_dense().weight)
    x = torch.randn(3, 75).to(torch.float32 if dtype == torch.int8 else dtype)
    y = sparse(x)
    assert torch.equal(copy.deepcopy(sparse)(x), y)
    reloaded = SparseLinear.from_dense(_block_linear(41, 75, block, seed=5), block, dtype=dtype, fallback="never")
    reloaded.load_state_dict(sd)
    assert torch.equal(reloaded(x), y) and reloaded.w_values.numel() == 0
    for a, b in zip(reloaded._packed, sparse._packed):
        assert torch.equal(a, b)
    if dtype == torch.float32:  # a move repacks from the rebuilt canonical tensors
        sparse.to(torch.bfloat16)
        direct = SparseLinear.from_sparse_weight(canonical, lin, fallback="never").to(torch.bfloat16)
        assert sparse.w_values.numel() == 0 and sparse.weight_sparse.values.dtype == torch.bfloat16
        assert torch.equal(sparse(x.bfloat16()), direct(x.bfloat16()))


def test_bsr_keeps_the_canonical_copy_when_it_stores_all_zero_blocks():
    """The pack drops all-zero blocks, so a weight that stores them keeps its canonical tensors (saved as given)."""
    lin = _block_linear(32, 48, (4, 1), density=0.5)
    canonical = BlockSparseWeight.from_dense(lin.weight.detach(), (4, 1))
    canonical.values[3] = 0  # still stored, now all zero
    sparse = SparseLinear.from_sparse_weight(canonical, lin, fallback="never")
    assert sparse.w_values is canonical.values and sparse.w_col.numel() == canonical.nnz_blocks
    sd = sparse.state_dict()
    for k, v in canonical.state_dict().items():
        assert torch.equal(sd[f"w_{k}"], v), k
    x = torch.randn(4, 48)
    torch.testing.assert_close(sparse(x), torch.nn.functional.linear(x, canonical.to_dense(), lin.bias))
    # A -0.0 inside a block with non-zeros is fine to drop the copy: it comes back as 0.0 (torch.equal either way).
    signed = BlockSparseWeight.from_dense(lin.weight.detach(), (4, 1))
    assert signed.values[0, 1:].any()  # the block keeps a non-zero beside the -0.0
    signed.values[0, 0, 0] = -0.0
    one_copy = SparseLinear.from_sparse_weight(signed, lin, fallback="never")
    assert one_copy.w_values.numel() == 0 and torch.equal(one_copy.weight_sparse.values, signed.values)


@pytest.mark.parametrize("block,layout_id", [((16, 1), 5), ((4, 1), 1)])
def test_sparsify_auto_int8_takes_the_coarsest_block_layout_that_fits(block, layout_id):
    """int8 weights pruned in 16x1 blocks run the 16x1 layout (faster decode); finer 4x1 zeros the 4x1 one."""
    model = nn.Sequential(_block_linear(64, 96, block, density=0.4, seed=3))
    x = torch.randn(5, 96)
    expected = model(x)
    report = sparsify_(model, SparsifyConfig(dtype=torch.int8, fallback="never", min_saving=0.0))
    assert report["0"] == f"{block[0]}x{block[1]}"
    assert model[0]._packed[0][1] == layout_id
    torch.testing.assert_close(model(x), expected, rtol=5e-2, atol=5e-2)
