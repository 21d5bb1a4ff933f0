"""sparseflow._bsr_layouts.unpack: bsr_pack's CPU layouts read back into the canonical BSR tensors, bit for bit."""

import itertools

import pytest
import torch

from sparseflow import _bsr_layouts, ops
from sparseflow.formats import BlockSparseWeight

BLOCKS = [(1, 1), (4, 1), (16, 1), (1, 16), (2, 8), (3, 5), (16, 16), (32, 2), (5, 24)]
KERNELS = {torch.float32: ("auto", "4x1", "16x1", "1x16"), torch.bfloat16: ("auto", "4x1", "16x1", "1x16"),
           torch.int8: ("auto", "4x1", "16x1")}
CASES = [(dtype, kernel) for dtype, kernels in KERNELS.items() for kernel in kernels]


def _weight(out_features, in_features, block, dtype, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(out_features, in_features, generator=g)
    dense[torch.rand(out_features, in_features, generator=g) > density] = 0
    dense[:, : in_features // 3] = 0  # empty block-columns, and native block-rows with few blocks
    return BlockSparseWeight.from_dense(dense, block, dtype=dtype)


@pytest.mark.parametrize("dtype,kernel", CASES)
@pytest.mark.parametrize("block", BLOCKS)
# int8 4x1 takes plain tiles on the sparse wide weight (span-16 ones would cost too many blocks), span-16 on the other
@pytest.mark.parametrize("in_features,density", [(53, 0.5), (600, 0.05)])
def test_unpack_rebuilds_the_canonical_tensors(block, dtype, kernel, in_features, density):
    w = _weight(37, in_features, block, dtype, density)
    meta, rowptr, indices, values, _ = ops.bsr_pack(w.crow, w.col, w.values, 37, in_features, kernel)
    if dtype == torch.int8 and meta[1] == 1:
        assert meta[6] == (16 if in_features == 53 else 0)
    crow, col, rebuilt = _bsr_layouts.unpack(meta, rowptr, indices, values, block)
    for name, got in (("crow", crow), ("col", col), ("values", rebuilt)):
        expected = getattr(w, name)
        assert got.dtype == expected.dtype and torch.equal(got, expected), name


@pytest.mark.parametrize("chunk_entries", [1, 7, 300])
def test_unpack_in_chunks_of_whole_block_rows(monkeypatch, chunk_entries):
    """Chunks hold whole canonical and native block-rows (R = 24 and 16-row native blocks: 48-row steps)."""
    monkeypatch.setattr(_bsr_layouts, "_CHUNK_ENTRIES", chunk_entries)
    for block, dtype in itertools.product([(24, 3), (4, 1), (1, 16)], [torch.float32, torch.bfloat16, torch.int8]):
        w = _weight(150, 70, block, dtype, 0.3, seed=2)
        packed = ops.bsr_pack(w.crow, w.col, w.values, 150, 70)
        crow, col, values = _bsr_layouts.unpack(*packed[:4], block)
        assert torch.equal(crow, w.crow) and torch.equal(col, w.col) and torch.equal(values, w.values), block


@pytest.mark.parametrize("shape", [(0, 16), (24, 0), (24, 40)])
def test_unpack_of_weights_without_blocks(shape):
    w = BlockSparseWeight.from_dense(torch.zeros(shape), (4, 2))
    packed = ops.bsr_pack(w.crow, w.col, w.values, *shape)
    crow, col, values = _bsr_layouts.unpack(*packed[:4], (4, 2))
    assert torch.equal(crow, w.crow) and col.shape == (0,) and values.shape == (0, 4, 2)
    assert crow.dtype == col.dtype == torch.int32


def test_packed_holds_canonical_only_without_all_zero_blocks():
    w = _weight(16, 32, (4, 4), torch.float32, 0.5)
    assert _bsr_layouts.packed_holds_canonical(w.values)
    values = w.values.clone()
    values[1] = -0.0  # -0.0 is zero too: the pack drops this block
    assert not _bsr_layouts.packed_holds_canonical(values)
    assert _bsr_layouts.packed_holds_canonical(values[:0])
