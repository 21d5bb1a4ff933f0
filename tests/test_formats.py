"""sparseflow.formats: exact round trips, sparsity reporting, every validate() error, state dicts, devices."""

import dataclasses

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from sparseflow.formats import BlockSparseWeight, NMWeight, SparseWeight
from sparseflow.testing import reference as ref

FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def ceil_div(a, b):
    return -(-a // b)


def nm_dense(rows, cols, n, m, dtype=torch.float32, seed=0, fill=0.8):
    """Random [rows, cols] with at most n non-zeros in each group of m columns (the last one may be partial)."""
    g = torch.Generator().manual_seed(seed)
    groups = ceil_div(cols, m)
    values = torch.randn(rows, groups, m, generator=g) * 3
    rank = torch.rand(rows, groups, m, generator=g).argsort(-1).argsort(-1)
    kept = (rank < n) & (torch.rand(rows, groups, m, generator=g) < fill)
    return torch.where(kept, values, 0).reshape(rows, groups * m)[:, :cols].to(dtype).contiguous()


def block_dense(rows, cols, block, dtype=torch.float32, seed=0, block_fill=0.5, elem_fill=0.6):
    """Random [rows, cols] where about half the R x C blocks are zero and the rest are partly zero."""
    (R, C), g = block, torch.Generator().manual_seed(seed)
    kept_blocks = torch.rand(ceil_div(rows, R), ceil_div(cols, C), generator=g) < block_fill
    mask = kept_blocks.repeat_interleave(R, 0).repeat_interleave(C, 1)[:rows, :cols]
    mask &= torch.rand(rows, cols, generator=g) < elem_fill
    return torch.where(mask, torch.randn(rows, cols, generator=g), 0).to(dtype)


def bsr_loop_reference(dense, block):
    """BSR by a plain loop over blocks (the spec: keep every block with a non-zero, in row-major order)."""
    (R, C), (rows, cols) = block, dense.shape
    ob, ib = ceil_div(rows, R), ceil_div(cols, C)
    padded = torch.zeros(ob * R, ib * C, dtype=dense.dtype)
    padded[:rows, :cols] = dense
    crow, col, values = [0], [], []
    for i in range(ob):
        for j in range(ib):
            blk = padded[i * R:(i + 1) * R, j * C:(j + 1) * C]
            if (blk != 0).any():
                col.append(j)
                values.append(blk)
        crow.append(len(col))
    values = torch.stack(values) if values else torch.zeros(0, R, C, dtype=dense.dtype)
    return torch.tensor(crow, dtype=torch.int32), torch.tensor(col, dtype=torch.int32), values, padded


def quantize_reference(dense):
    x = dense.float()
    scale = x.abs().amax(1) / 127 if x.shape[1] else torch.zeros(x.shape[0])
    q = torch.round(x / torch.where(scale > 0, scale, 1)[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def zero_fraction(dense):
    return (dense == 0).sum().item() / dense.numel() if dense.numel() else 0.0


def assert_same(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape and actual.device == expected.device
    assert actual.device.type == "meta" or torch.equal(actual, expected)


# ----------------------------------------------------------------------------------------------- NMWeight

NM_CASES = [  # n, m, rows, cols
    (2, 4, 8, 16), (2, 4, 5, 13), (1, 4, 3, 7), (4, 8, 6, 21), (3, 7, 4, 14),
    (2, 4, 0, 8), (2, 4, 3, 0), (1, 1, 2, 3), (8, 16, 3, 40),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n,m,rows,cols", NM_CASES)
def test_nm_round_trip_is_exact(n, m, rows, cols, dtype):
    dense = nm_dense(rows, cols, n, m, dtype, seed=rows * 7 + cols)
    w = NMWeight.from_dense(dense, n, m)
    w.validate()
    assert (w.n, w.m, w.shape, w.scale) == (n, m, (rows, cols), None)
    assert_same(w.to_dense(), dense)
    assert w.to_dense().is_contiguous()
    # The canonical layout is nm_compress's, on the matrix zero-padded to whole groups.
    padded = F.pad(dense, (0, ceil_div(cols, m) * m - cols))
    values, indices = ref.nm_compress(padded, n, m)
    assert_same(w.values, values)
    assert_same(w.indices, indices)
    assert w.padded_shape == tuple(padded.shape)
    assert w.sparsity == pytest.approx(zero_fraction(dense), abs=1e-12)
    assert w.density == pytest.approx(1 - zero_fraction(dense), abs=1e-12)
    assert w.nbytes == values.numel() * values.element_size() + indices.numel()


def test_nm_sparsity_counts_logical_matrix_only():
    dense = torch.tensor([[1.0, 0, 0, 2, 3], [0, 0, 0, 0, 0]])  # 3 non-zeros of 10; 3 padding columns
    w = NMWeight.from_dense(dense, 2, 4)
    assert w.sparsity == pytest.approx(0.7)
    assert w.density == pytest.approx(0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nm_cast_repacks_values_that_underflow(dtype):
    dense = nm_dense(4, 12, 2, 4, seed=3)
    dense[1, 4:8] = torch.tensor([0.0, 1e-30, 0.0, 5.0])  # 1e-30 is 0 in float16, not in bfloat16
    w = NMWeight.from_dense(dense, 2, 4, dtype=dtype)
    cast = dense.to(dtype)
    assert_same(w.to_dense(), cast)
    values, indices = ref.nm_compress(cast, 2, 4)
    assert_same(w.indices, indices)
    assert_same(w.values, values)
    # In float16 the group has one non-zero left, so its padding slot moves to the lowest free position.
    assert w.indices[1, 2:4].tolist() == ([0, 3] if dtype == torch.float16 else [1, 3])


@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,cols", [(6, 13), (1, 4), (0, 8), (3, 0)])
def test_nm_int8_quantizes_per_output_channel(source, rows, cols):
    dense = nm_dense(rows, cols, 2, 4, source, seed=11)
    if rows > 1:
        dense[1] = 0  # an all-zero row gets scale 0
    if rows and cols >= 4:
        dense[0, :4] = torch.tensor([100.0, 0.1, 0.0, 0.0])  # 0.1 quantizes to 0: it becomes a zero
    before = dense.clone()
    w = NMWeight.from_dense(dense, 2, 4, dtype=torch.int8)
    w.validate()
    q, scale = quantize_reference(dense)
    assert_same(w.scale, scale)
    assert w.values.dtype == torch.int8
    assert_same(w.to_dense(), q.float() * scale[:, None])
    assert_same(w.to_dense(torch.float16), (q.float() * scale[:, None]).half())
    assert_same(w.values, ref.nm_compress(F.pad(q, (0, ceil_div(cols, 4) * 4 - cols)), 2, 4)[0])
    err = (w.to_dense() - dense.float()).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-30).all()
    assert w.sparsity == pytest.approx(zero_fraction(q), abs=1e-12)
    if rows > 1:
        assert w.scale[1].item() == 0 and (w.to_dense()[1] == 0).all()
    assert torch.equal(dense, before)
    assert w.nbytes == w.values.numel() + w.indices.numel() + 4 * rows


def test_nm_pattern_is_checked_before_quantization():
    dense = nm_dense(5, 16, 2, 4)
    dense[3, 8:12] = torch.tensor([1.0, 1e-4, 1e-4, 0])  # 3 non-zeros; int8 would round two of them to 0
    for dtype in (None, torch.int8, torch.float16):
        with pytest.raises(ValueError, match=r"row 3, group 2 \(columns 8..11\) has 3 non-zeros.*prune=True"):
            NMWeight.from_dense(dense, 2, 4, dtype=dtype)


def test_nm_prune_keeps_largest_magnitudes():
    g = torch.Generator().manual_seed(5)
    dense = torch.randn(7, 10, generator=g)
    dense[2, 0:4] = torch.tensor([1.0, -1.0, 1.0, 1.0])  # ties: the lowest positions win
    dense[4, 4:8] = torch.tensor([0.5, 0.0, -3.0, 0.0])
    before = dense.clone()
    w = NMWeight.from_dense(dense, 2, 4, prune=True)
    expected = torch.zeros_like(dense)
    padded = F.pad(dense, (0, 2))
    for r in range(7):
        for g0 in range(0, 12, 4):
            group = padded[r, g0:g0 + 4].tolist()
            keep = sorted(range(4), key=lambda i: (-abs(group[i]), i))[:2]
            for i in keep:
                if g0 + i < 10:
                    expected[r, g0 + i] = group[i]
    assert_same(w.to_dense(), expected)
    assert w.to_dense()[2, :4].tolist() == [1.0, -1.0, 0.0, 0.0]
    assert torch.equal(dense, before)
    w8 = NMWeight.from_dense(dense, 2, 4, prune=True, dtype=torch.int8)  # scales of the pruned rows
    assert_same(w8.scale, quantize_reference(expected)[1])


def test_nm_from_dense_argument_errors():
    dense = nm_dense(4, 8, 2, 4)
    with pytest.raises(TypeError, match=r"NMWeight.from_dense: dense must have dtype float32, float16, bfloat16, got float64"):
        NMWeight.from_dense(dense.double())
    with pytest.raises(TypeError, match=r"got int8 \(pass a floating-point tensor and dtype=torch.int8"):
        NMWeight.from_dense(dense.to(torch.int8))
    with pytest.raises(TypeError, match=r"dense must be a torch.Tensor, got list"):
        NMWeight.from_dense([[1.0]])
    with pytest.raises(ValueError, match=r"dense must be 2-D .*got shape \[32\]"):
        NMWeight.from_dense(dense.reshape(-1))
    with pytest.raises(ValueError, match=r"need 1 <= n <= m <= 64, got n=3, m=2"):
        NMWeight.from_dense(dense, 3, 2)
    with pytest.raises(ValueError, match=r"got n=2, m=65"):
        NMWeight.from_dense(dense, 2, 65)
    with pytest.raises(TypeError, match=r"dtype must be None or one of .*got torch.float64"):
        NMWeight.from_dense(dense, dtype=torch.float64)


def test_from_dense_takes_non_contiguous_and_grad_tensors():
    dense = nm_dense(9, 12, 2, 4, torch.float16)
    strided = torch.empty(12, 9, dtype=torch.float16).t()
    strided.copy_(dense)
    assert not strided.is_contiguous()
    assert_same(NMWeight.from_dense(strided).to_dense(), dense)
    assert_same(BlockSparseWeight.from_dense(strided, (4, 1)).to_dense(), dense)
    param = torch.nn.Parameter(dense.float())
    for w in (NMWeight.from_dense(param), BlockSparseWeight.from_dense(param, (2, 2), dtype=torch.int8)):
        assert not any(t.requires_grad for t in w.state_dict().values())


def valid_nm():
    """6 x 10, 2:4: groups at columns 0..3, 4..7 and 8..11 (10 and 11 are padding)."""
    return NMWeight.from_dense(nm_dense(6, 10, 2, 4, fill=1.0, seed=1))


def _set(t, index, value):
    t = t.clone()
    t[index] = value
    return t


NM_CORRUPTIONS = [
    (lambda w: dict(indices=w.indices.int()), TypeError, r"indices must have dtype uint8, got int32"),
    (lambda w: dict(values=w.values.double()), TypeError, r"values must have dtype float32, float16, bfloat16, int8, got float64"),
    (lambda w: dict(values=w.values.reshape(-1)), ValueError, r"values must be 2-D \[out, ceil\(in/m\)\*n\] = \[6, 6\]"),
    (lambda w: dict(values=w.values[:, :4]), ValueError, r"values must have shape .*\[6, 6\] .*got \[6, 4\]"),
    (lambda w: dict(indices=w.indices[:5]), ValueError, r"indices must have shape .*got \[5, 6\]"),
    (lambda w: dict(values="x"), TypeError, r"values must be a torch.Tensor, got str"),
    (lambda w: dict(n=3, m=2), ValueError, r"1 <= n <= m <= 64, got n=3, m=2"),
    (lambda w: dict(m=65), ValueError, r"got n=2, m=65"),
    (lambda w: dict(n=2.0), ValueError, r"need integers"),
    (lambda w: dict(shape=(6, 20)), ValueError, r"\[6, 10\] for shape \(6, 20\) and 2:4, got \[6, 6\]"),
    (lambda w: dict(shape=(6,)), ValueError, r"shape must be a tuple of 2 ints, got \(6,\)"),
    (lambda w: dict(shape=(-1, 10)), ValueError, r"shape must be >= 0"),
    (lambda w: dict(indices=_set(w.indices, (2, 3), 4)), IndexError,
     r"indices of row 2, group 1 are \[\d, 4\]: entry 1 is 4, expected a position in \[0, 4\)"),
    (lambda w: dict(indices=_set(w.indices, (4, 0), 200)), IndexError, r"row 4, group 0 .*entry 0 is 200"),
    (lambda w: dict(indices=_set(w.indices, (1, slice(0, 2)), torch.tensor([2, 1], dtype=torch.uint8))), IndexError,
     r"indices of row 1, group 0 are \[2, 1\]: entry 1 \(1\) does not follow entry 0 \(2\); positions must be strictly ascending"),
    (lambda w: dict(indices=_set(w.indices, (5, slice(2, 4)), 3)), IndexError, r"row 5, group 1 are \[3, 3\]"),
    (lambda w: dict(indices=_set(w.indices, (4, slice(4, 6)), torch.tensor([1, 2], dtype=torch.uint8)),
                    values=_set(w.values, (4, 5), 7.0)), ValueError,
     r"row 4, group 2, entry 1 holds a non-zero value at column 10, past in_features=10 \(padding must be zero\)"),
    (lambda w: dict(scale=torch.ones(6)), ValueError, r"scale is only for int8 values; values are float32"),
    (lambda w: dict(indices=w.indices.to("meta")), ValueError, r"all tensors must be on one device, got values on cpu, indices on meta"),
]


@pytest.mark.parametrize("corrupt,error,match", NM_CORRUPTIONS)
def test_nm_validate_names_the_problem(corrupt, error, match):
    w = valid_nm()
    w.validate()
    bad = dataclasses.replace(w, **corrupt(w))
    with pytest.raises(error, match=r"^sparseflow\.NMWeight\.validate: .*" + match):
        bad.validate()


def test_nm_padding_may_hold_zeros_at_any_position():
    w = valid_nm()
    indices = _set(w.indices, (0, slice(4, 6)), torch.tensor([1, 3], dtype=torch.uint8))
    values = _set(w.values, (0, slice(4, 6)), torch.tensor([1.5, 0.0]))
    dataclasses.replace(w, indices=indices, values=values).validate()  # column 11 holds 0: fine


# ----------------------------------------------------------------------------------------------- int8 scales

def int8_weights():
    yield NMWeight.from_dense(nm_dense(6, 10, 2, 4), dtype=torch.int8)
    yield BlockSparseWeight.from_dense(block_dense(6, 10, (4, 4), block_fill=1.0), (4, 4), dtype=torch.int8)


SCALE_CORRUPTIONS = [
    (lambda w: dict(scale=None), ValueError, r"int8 values need a float32 scale \[out_features=6\], got scale=None"),
    (lambda w: dict(scale=w.scale.half()), TypeError, r"scale must have dtype float32, got float16"),
    (lambda w: dict(scale=w.scale[:5]), ValueError, r"scale must have shape \[6\] \(out_features\), got \[5\]"),
    (lambda w: dict(scale=w.scale[None]), ValueError, r"scale must be 1-D \[out_features=6\]"),
    (lambda w: dict(scale=_set(w.scale, 3, -1.0)), ValueError, r"scale\[3\] is -1.0; scales must be finite and >= 0"),
    (lambda w: dict(scale=_set(w.scale, 4, float("nan"))), ValueError, r"scale\[4\] is nan"),
    (lambda w: dict(scale=w.scale.to("meta")), ValueError, r"one device, got .*scale on meta"),
]


@pytest.mark.parametrize("corrupt,error,match", SCALE_CORRUPTIONS)
def test_scale_validation(corrupt, error, match):
    for w in int8_weights():
        w.validate()
        with pytest.raises(error, match=rf"^sparseflow\.{type(w).__name__}\.validate: .*" + match):
            dataclasses.replace(w, **corrupt(w)).validate()


# ----------------------------------------------------------------------------------------- BlockSparseWeight

BSR_CASES = [  # (rows, cols), block
    ((0, 10), (4, 1)), ((30, 9), (4, 1)), ((17, 40), (1, 16)), ((33, 65), (16, 16)), ((64, 64), (32, 32)),
    ((45, 70), (32, 32)), ((7, 13), (3, 5)), ((5, 0), (3, 5)), ((1, 1), (3, 5)),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,block", BSR_CASES)
def test_bsr_round_trip_is_exact(shape, block, dtype):
    dense = block_dense(*shape, block, dtype, seed=shape[0] + shape[1])
    before = dense.clone()
    w = BlockSparseWeight.from_dense(dense, block)
    w.validate()
    assert (w.block, w.shape, w.scale) == (block, shape, None)
    assert_same(w.to_dense(), dense)
    assert w.to_dense().is_contiguous()
    crow, col, values, padded = bsr_loop_reference(dense, block)
    assert_same(w.crow, crow)
    assert_same(w.col, col)
    assert_same(w.values, values)
    assert w.padded_shape == tuple(padded.shape)
    assert w.nnz_blocks == col.numel()
    blocks = w.blocks_shape[0] * w.blocks_shape[1]
    assert w.block_sparsity == pytest.approx(1 - col.numel() / blocks if blocks else 0.0, abs=1e-12)
    assert w.sparsity == pytest.approx(zero_fraction(dense), abs=1e-12)
    assert w.nbytes == 4 * (crow.numel() + col.numel()) + values.numel() * values.element_size()
    assert_same(w.to_torch_bsr().to_dense(), padded)
    assert torch.equal(dense, before)


def test_bsr_sparsity_numbers():
    dense = torch.zeros(6, 7)
    dense[0, 0] = 1.0  # block (0, 0)
    dense[5, 6] = 2.0  # block (1, 1); rows 6..7 and columns 7 are padding
    w = BlockSparseWeight.from_dense(dense, (4, 4))
    assert w.crow.tolist() == [0, 1, 2] and w.col.tolist() == [0, 1]
    assert w.block_sparsity == pytest.approx(0.5)
    assert w.sparsity == pytest.approx(1 - 2 / 42)
    assert w.density == pytest.approx(2 / 42)


def test_bsr_matches_torch_to_sparse_bsr():
    dense = block_dense(48, 64, (16, 8), seed=4)
    t = dense.to_sparse_bsr((16, 8))
    w = BlockSparseWeight.from_dense(dense, (16, 8))
    assert_same(w.crow, t.crow_indices().int())
    assert_same(w.col, t.col_indices().int())
    assert_same(w.values, t.values())
    w2 = BlockSparseWeight.from_bsr(t.crow_indices().int(), t.col_indices().int(), t.values(), (48, 64))
    assert_same(w2.to_dense(), dense)


@pytest.mark.parametrize("source", [torch.float32, torch.float16])
def test_bsr_int8_quantizes_per_output_channel(source):
    dense = block_dense(21, 30, (4, 8), source, seed=9)
    dense[2] = 0
    dense[8:12, 8:16] = 0
    dense[9, 10] = 1e-6  # the only non-zero of block (2, 1): it quantizes to 0, so the block is dropped
    before = dense.clone()
    w = BlockSparseWeight.from_dense(dense, (4, 8), dtype=torch.int8)
    w.validate()
    q, scale = quantize_reference(dense)
    assert_same(w.scale, scale)
    assert_same(w.to_dense(), q.float() * scale[:, None])
    assert_same(w.to_dense(torch.bfloat16), (q.float() * scale[:, None]).bfloat16())
    crow, col, values, _ = bsr_loop_reference(q, (4, 8))
    assert_same(w.crow, crow)
    assert_same(w.col, col)
    assert_same(w.values, values)
    assert 1 not in w.col[w.crow[2]:w.crow[3]].tolist()
    assert w.sparsity == pytest.approx(zero_fraction(q), abs=1e-12)
    assert torch.equal(dense, before)


def test_bsr_cast():
    dense = block_dense(12, 12, (4, 4), seed=2)
    w = BlockSparseWeight.from_dense(dense, (4, 4), dtype=torch.bfloat16)
    assert_same(w.to_dense(), dense.bfloat16())
    assert_same(w.to_dense(torch.float32), dense.bfloat16().float())


def test_bsr_from_dense_argument_errors():
    dense = block_dense(8, 8, (4, 4))
    with pytest.raises(ValueError, match=r"BlockSparseWeight.from_dense: block must be >= 1 in both dims, got \(0, 4\)"):
        BlockSparseWeight.from_dense(dense, (0, 4))
    with pytest.raises(ValueError, match=r"block must be a tuple of 2 ints, got \(4,\)"):
        BlockSparseWeight.from_dense(dense, (4,))
    with pytest.raises(TypeError, match=r"dense must have dtype float32, float16, bfloat16, got int32"):
        BlockSparseWeight.from_dense(dense.int(), (4, 4))
    with pytest.raises(TypeError, match=r"dtype must be None or one of"):
        BlockSparseWeight.from_dense(dense, (4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"dense must be 2-D"):
        BlockSparseWeight.from_dense(dense[None], (4, 4))


def valid_bsr():
    """10 x 13 with 4 x 5 blocks: 3 x 3 block grid, padded to 12 x 15; block (0, 1) is zero.

    crow = [0, 2, 5, 8], col = [0, 2 | 0, 1, 2 | 0, 1, 2]."""
    dense = torch.arange(1, 131, dtype=torch.float32).reshape(10, 13)
    dense[0:4, 5:10] = 0
    w = BlockSparseWeight.from_dense(dense, (4, 5))
    assert w.crow.tolist() == [0, 2, 5, 8] and w.col.tolist() == [0, 2, 0, 1, 2, 0, 1, 2]
    return w


def _i32(values):
    return torch.tensor(values, dtype=torch.int32)


BSR_CORRUPTIONS = [
    (lambda w: dict(crow=_i32([1, 2, 5, 8])), IndexError, r"crow\[0\] must be 0, got 1"),
    (lambda w: dict(crow=_i32([0, 6, 5, 8])), IndexError,
     r"crow must be non-decreasing: crow\[2\] = 5 < crow\[1\] = 6 \(block-row 1\)"),
    (lambda w: dict(crow=_i32([0, 2, 5, 7])), IndexError,
     r"crow\[-1\] = crow\[3\] must equal nnz_blocks = 8 \(the length of col\), got 7"),
    (lambda w: dict(col=_set(w.col, 3, 3)), IndexError,
     r"col\[3\] = 3 \(block 3, in block-row 1\) is out of range \[0, 3\) \(in_blocks for in_features=13, C=5\)"),
    (lambda w: dict(col=_set(w.col, 0, -1)), IndexError, r"col\[0\] = -1 \(block 0, in block-row 0\) is out of range"),
    (lambda w: dict(col=_set(w.col, 4, 1)), IndexError,
     r"col must be strictly increasing within each block-row: in block-row 1, col\[4\] = 1 follows col\[3\] = 1"),
    (lambda w: dict(col=_i32([2, 0, 0, 1, 2, 0, 1, 2])), IndexError, r"in block-row 0, col\[1\] = 0 follows col\[0\] = 2"),
    (lambda w: dict(crow=w.crow.long()), TypeError, r"crow must have dtype int32, got int64"),
    (lambda w: dict(col=w.col.short()), TypeError, r"col must have dtype int32, got int16"),
    (lambda w: dict(values=w.values.double()), TypeError, r"values must have dtype float32, float16, bfloat16, int8, got float64"),
    (lambda w: dict(crow=w.crow[None]), ValueError, r"crow must be 1-D \[out_blocks \+ 1\], got shape \[1, 4\]"),
    (lambda w: dict(values=w.values[0]), ValueError, r"values must be 3-D \[nnz_blocks, R, C\], got shape \[4, 5\]"),
    (lambda w: dict(values=w.values[:7]), ValueError,
     r"values must have shape \[nnz_blocks, R, C\] = \[8, 4, 5\] \(col has 8 entries, block \(4, 5\)\), got \[7, 4, 5\]"),
    (lambda w: dict(block=(4, 4)), ValueError, r"values must have shape .*\[8, 4, 4\].*got \[8, 4, 5\]"),
    (lambda w: dict(shape=(13, 13)), ValueError,
     r"crow must have out_blocks \+ 1 = 5 entries \(shape \(13, 13\), block \(4, 5\)\), got 4"),
    (lambda w: dict(block=(0, 5)), ValueError, r"block must be >= 1 in both dims, got \(0, 5\)"),
    (lambda w: dict(shape=(10, 13, 1)), ValueError, r"shape must be a tuple of 2 ints"),
    (lambda w: dict(col=w.col.to("meta")), ValueError, r"all tensors must be on one device, got crow on cpu, col on meta, values on cpu"),
    (lambda w: dict(values=_set(w.values, (5, 2, 0), 1.0)), ValueError,
     r"block 5 \(block-row 2, block-col 0\) holds non-zero values in the padding past shape \(10, 13\)"),
    (lambda w: dict(values=_set(w.values, (1, 0, 3), 1.0)), ValueError, r"block 1 \(block-row 0, block-col 2\) holds non-zero"),
    (lambda w: dict(scale=torch.ones(10)), ValueError, r"scale is only for int8 values"),
]


@pytest.mark.parametrize("corrupt,error,match", BSR_CORRUPTIONS)
def test_bsr_validate_names_the_problem(corrupt, error, match):
    w = valid_bsr()
    w.validate()
    bad = dataclasses.replace(w, **corrupt(w))
    with pytest.raises(error, match=r"^sparseflow\.BlockSparseWeight\.validate: .*" + match):
        bad.validate()


def test_bsr_from_bsr_validates_and_keeps_inputs():
    w = valid_bsr()
    crow, col, values = w.crow.clone(), w.col.clone(), w.values.clone()
    w2 = BlockSparseWeight.from_bsr(crow, col, values, [10, 13])
    assert (w2.block, w2.shape) == ((4, 5), (10, 13))
    assert_same(w2.to_dense(), w.to_dense())
    assert torch.equal(crow, w.crow) and torch.equal(col, w.col) and torch.equal(values, w.values)
    with pytest.raises(TypeError, match=r"BlockSparseWeight.validate: crow must have dtype int32, got int64"):
        BlockSparseWeight.from_bsr(crow.long(), col, values, (10, 13))
    with pytest.raises(IndexError, match=r"col\[3\] = 7"):
        BlockSparseWeight.from_bsr(crow, _set(col, 3, 7), values, (10, 13))
    with pytest.raises(ValueError, match=r"BlockSparseWeight.from_bsr: values must be 3-D \[nnz_blocks, R, C\]"):
        BlockSparseWeight.from_bsr(crow, col, values.reshape(8, 20), (10, 13))
    q = BlockSparseWeight.from_dense(w.to_dense(), (4, 5), dtype=torch.int8)
    q2 = BlockSparseWeight.from_bsr(q.crow, q.col, q.values, (10, 13), scale=q.scale)
    assert_same(q2.to_dense(), q.to_dense())


# ---------------------------------------------------------------------------------------------- state dicts

WEIGHTS = {
    "nm-fp16": lambda: NMWeight.from_dense(nm_dense(6, 10, 2, 4, torch.float16)),
    "nm-int8-4:8": lambda: NMWeight.from_dense(nm_dense(5, 19, 4, 8), 4, 8, dtype=torch.int8),
    "bsr-bf16": lambda: BlockSparseWeight.from_dense(block_dense(10, 13, (4, 5), torch.bfloat16), (4, 5)),
    "bsr-int8": lambda: BlockSparseWeight.from_dense(block_dense(33, 20, (16, 1)), (16, 1), dtype=torch.int8),
}


def assert_same_weight(a, b):
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert_same(x, y)
        else:
            assert x == y, f.name


@pytest.mark.parametrize("name", WEIGHTS)
def test_state_dict_round_trip(name, tmp_path):
    w = WEIGHTS[name]()
    sd = w.state_dict()
    assert all(isinstance(t, torch.Tensor) for t in sd.values())
    assert bytes(sd["format"].tolist()).decode() == type(w).format_name
    assert sd["format_version"].item() == 1
    assert sd["shape"].tolist() == list(w.shape)
    expected_keys = {"format", "format_version", *type(w)._int_fields, *type(w)._tensor_fields}
    assert set(sd) == expected_keys | ({"scale"} if w.scale is not None else set())
    assert_same_weight(type(w).from_state_dict(sd), w)
    assert_same_weight(SparseWeight.from_state_dict(sd), w)
    path = str(tmp_path / "w.safetensors")
    safetensors.torch.save_file(sd, path)
    loaded = SparseWeight.from_state_dict(safetensors.torch.load_file(path))
    assert_same_weight(loaded, w)
    assert_same(loaded.to_dense(), w.to_dense())


@pytest.mark.parametrize("name", WEIGHTS)
def test_from_state_dict_errors(name):
    w = WEIGHTS[name]()
    cls = type(w)
    other = NMWeight if cls is BlockSparseWeight else BlockSparseWeight
    op = rf"^sparseflow\.{cls.__name__}\.from_state_dict: "

    def edited(**changes):
        sd = w.state_dict()
        for k, v in changes.items():
            if v is None:
                del sd[k]
            else:
                sd[k] = v
        return sd

    with pytest.raises(ValueError, match=op + rf"format_version 2 of '{cls.format_name}' is not supported: this sparseflow reads version 1 \(written by a newer"):
        cls.from_state_dict(edited(format_version=torch.tensor(2)))
    with pytest.raises(ValueError, match=r"format_version 0 .* is not supported"):
        SparseWeight.from_state_dict(edited(format_version=torch.tensor(0)))
    with pytest.raises(ValueError, match=op + r"'format_version' must be a 0-D integer tensor"):
        cls.from_state_dict(edited(format_version=torch.tensor(1.0)))
    with pytest.raises(ValueError, match=op + r"the state dict is missing 'shape', 'values'"):
        cls.from_state_dict(edited(values=None, shape=None))
    with pytest.raises(ValueError, match=op + r"unexpected keys in the state dict: 'extra'"):
        cls.from_state_dict(edited(extra=torch.zeros(1)))
    with pytest.raises(ValueError, match=op + r"the state dict has no 'format' entry"):
        cls.from_state_dict(edited(format=None))
    with pytest.raises(ValueError, match=op + r"'shape' must be a 0-D or 1-D int64 tensor"):
        cls.from_state_dict(edited(shape=torch.tensor([1.0, 2.0])))
    with pytest.raises(ValueError, match=rf"{other.__name__}.from_state_dict: the state dict holds format "
                                         rf"'{cls.format_name}', expected '{other.format_name}'"):
        other.from_state_dict(w.state_dict())
    with pytest.raises(ValueError, match=r"SparseWeight.from_state_dict: unknown format 'foo'; known formats: sparseflow.bsr, sparseflow.nm"):
        SparseWeight.from_state_dict(edited(format=torch.tensor(list(b"foo"), dtype=torch.uint8)))
    with pytest.raises(TypeError, match=op + r"expected a state dict"):
        cls.from_state_dict([1, 2])
    if w.scale is not None:
        with pytest.raises(ValueError, match=rf"{cls.__name__}.validate: int8 values need a float32 scale"):
            cls.from_state_dict(edited(scale=None))
    # The rebuilt weight is validated: a corrupt index tensor is caught on load.
    field = "indices" if cls is NMWeight else "col"
    corrupt = w.state_dict()[field].clone()
    corrupt[0] = 99
    with pytest.raises(IndexError, match=rf"{cls.__name__}.validate: "):
        cls.from_state_dict(edited(**{field: corrupt}))


# ------------------------------------------------------------------------------------------ devices, misc

def test_nm_on_meta_device():
    dense = torch.empty(6, 10, device="meta")
    w = NMWeight.from_dense(dense, 2, 4, prune=True, dtype=torch.int8)
    w.validate()  # structure only: a meta tensor holds no values
    assert w.device.type == "meta" and w.values.shape == (6, 6) and w.indices.dtype == torch.uint8
    assert w.scale.shape == (6,) and w.scale.device.type == "meta"
    assert w.nbytes == 6 * 6 + 6 * 6 + 6 * 4
    out = w.to_dense()
    assert out.device.type == "meta" and out.shape == (6, 10) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"NMWeight.sparsity: the weight is on the meta device"):
        w.sparsity
    assert_same_weight(SparseWeight.from_state_dict(w.state_dict()), w)


@pytest.mark.parametrize("name", WEIGHTS)
def test_to_meta_keeps_structure(name):
    w = WEIGHTS[name]()
    m = w.to("meta")
    m.validate()
    data = [getattr(m, k) for k in type(m)._tensor_fields] + ([m.scale] if m.scale is not None else [])
    assert m.device.type == "meta" and all(t.device.type == "meta" for t in data)
    assert (m.shape, m.nbytes, m.dtype) == (w.shape, w.nbytes, w.dtype)
    dense = m.to_dense()
    assert dense.device.type == "meta" and dense.shape == w.shape and dense.dtype == w.to_dense().dtype
    assert w.device.type == "cpu"  # .to returns a copy
    assert w.to("cpu").values is w.values


def test_bsr_meta_device():
    with pytest.raises(ValueError, match=r"BlockSparseWeight.from_dense: dense is on the meta device"):
        BlockSparseWeight.from_dense(torch.empty(8, 8, device="meta"), (4, 4))
    w = valid_bsr().to("meta")
    assert w.block_sparsity == pytest.approx(1 / 9)  # block counts need no values
    bad = dataclasses.replace(w, col=w.col.to(torch.int64))
    with pytest.raises(TypeError, match=r"col must have dtype int32"):
        bad.validate()


def test_formats_on_device(device):
    dense = nm_dense(9, 22, 2, 4, torch.float16, seed=8)
    for cpu_w, w in (
        (NMWeight.from_dense(dense, dtype=torch.int8), NMWeight.from_dense(dense.to(device), dtype=torch.int8)),
        (BlockSparseWeight.from_dense(dense, (4, 8)), BlockSparseWeight.from_dense(dense.to(device), (4, 8))),
    ):
        w.validate()
        assert w.device.type == device
        assert_same_weight(w.to("cpu"), cpu_w)
        assert_same(w.to_dense().cpu(), cpu_w.to_dense())
        assert w.sparsity == cpu_w.sparsity
        assert_same_weight(cpu_w.to(device).to("cpu"), cpu_w)


def test_repr():
    nm = NMWeight.from_dense(nm_dense(6, 10, 2, 4), dtype=torch.int8)
    assert repr(nm) == f"NMWeight(2:4, shape=(6, 10), dtype=int8, scale=float32[6], device=cpu, nbytes={nm.nbytes})"
    b = valid_bsr()
    assert repr(b) == f"BlockSparseWeight(block=(4, 5), shape=(10, 13), nnz_blocks=8 of 9, dtype=float32, device=cpu, nbytes={b.nbytes})"

