"""bsr_pack / bsr_linear beyond the registry samples: every CPU ISA path (forced lower with set_cpu_isa or
SPARSEFLOW_CPU_ISA), thread counts, state_dict round trips, shapes that cross the kernels' panel, decode
and staging boundaries, corrupted packed weights, and the bytes the decode path streams."""

import io
import os
import subprocess
import sys

import pytest
import torch

from sparseflow import _C, ops
from sparseflow.formats import BlockSparseWeight
from sparseflow.testing import reference as ref
from sparseflow.testing.op_db import assert_bsr_linear_close, random_bsr

ISA_LEVELS = ("portable", "avx512", "avx512_vnni", "avx512_bf16", "amx")
ISAS = ISA_LEVELS[: ISA_LEVELS.index(_C.detected_cpu_isa()) + 1]
# Kernel paths: the ISA levels, plus the AMX tile kernels with their tiles emulated in software (how CPUs without
# AMX test them; the highest ISA level otherwise).
PATHS = ISAS + (("amx_emulated",) if "avx512_vnni" in ISAS else ())

# (values dtype, canonical block, kernel); N=70 and K=300 are multiples of none of 4/16/64, and N=70 gives
# the int8 panel kernel a full 64-channel staging chunk plus a ragged one (4x1: 16 block-rows, 16x1: 4).
# CONFIGS[::2] (the corrupted-index test) keeps both int8 layouts and every float layout.
CONFIGS = (
    (torch.int8, (4, 1), "4x1"),
    (torch.int8, (2, 8), "4x1"),
    (torch.int8, (16, 1), "16x1"),
    (torch.int8, (32, 4), "auto"),
    (torch.float32, (16, 1), "16x1"),
    (torch.float32, (1, 16), "1x16"),
    (torch.float32, (3, 3), "16x1"),
    (torch.bfloat16, (16, 1), "16x1"),
    (torch.bfloat16, (4, 4), "1x16"),
    (torch.int8, (3, 2), "16x1"),
    (torch.float32, (4, 1), "4x1"),
    (torch.float32, (6, 2), "auto"),  # float 4x1 tiles re-cut from 6-row blocks
    (torch.bfloat16, (4, 1), "4x1"),
    (torch.bfloat16, (6, 2), "auto"),
)
# Token counts around the int8 decode/panel switch (8), the decode's 4-token groups, the 16-token groups
# and the 64-token panels.
TOKENS = (1, 2, 3, 5, 8, 9, 16, 17, 33, 64, 65, 130)


@pytest.fixture
def isa_guard():
    before = _C.selected_cpu_isa()
    yield
    _C.set_cpu_isa(before)
    _C.set_amx_emulation(False)


def _select(path):
    emulated = path == "amx_emulated"
    _C.set_amx_emulation(emulated)
    isa = ISAS[-1] if emulated else path
    assert _C.set_cpu_isa(isa) == isa


def _weight(dtype, block, kernel, N=70, K=300, density=0.3, seed=0):
    crow, col, values = random_bsr(N, K, *block, density, dtype, seed=seed)
    packed = ops.bsr_pack(crow, col, values, N, K, kernel)
    scale = torch.rand(N, generator=torch.Generator().manual_seed(seed)) * 0.01 + 1e-3 if dtype == torch.int8 else None
    return packed, scale, (crow, col, values)


def _x(M, K, dtype, seed=0):
    return torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{str(c[0])[6:]}-{c[1][0]}x{c[1][1]}-{c[2]}")
def test_every_isa_path_matches_the_reference(isa, config, isa_guard):
    _select(isa)
    dtype, block, kernel = config
    N, K = 70, 300
    packed, scale, _ = _weight(dtype, block, kernel, N, K)
    bias = torch.randn(N)
    for i, M in enumerate(TOKENS):
        x = _x(M, K, torch.float32 if dtype == torch.int8 else dtype, seed=M)
        if dtype == torch.int8:  # exact before dequantization, on every path (panel and decode kernels)
            args = (x, *packed, N, K, None, None, "none", torch.int32)
            assert torch.equal(ops.bsr_linear(*args[:8], out_dtype=torch.int32), ref.bsr_linear(*args))
        act = ref.ACTIVATIONS[i % 4]
        out_dtype = (torch.float32, torch.bfloat16)[i % 2]
        args = (x, *packed, N, K, bias, scale, act, out_dtype)
        assert_bsr_linear_close(ops.bsr_linear(*args), ref.bsr_linear(*args), args)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{str(c[0])[6:]}-{c[1][0]}x{c[1][1]}-{c[2]}")
def test_results_do_not_depend_on_thread_count(config):
    """70 tokens (panel kernels) and 5 (decode kernels, which split the rows from ~4000 block x token products)."""
    dtype, block, kernel = config
    packed, scale, _ = _weight(dtype, block, kernel, N=200, K=257)
    bias = torch.randn(200)
    threads = torch.get_num_threads()
    for M in (70, 5):
        x = _x(M, 257, torch.float32 if dtype == torch.int8 else dtype)
        assert packed[2].numel() * M >= 4096  # enough blocks x tokens to run on several threads
        try:
            outs = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                outs.append(ops.bsr_linear(x, *packed, 200, 257, bias, scale, "gelu"))
        finally:
            torch.set_num_threads(threads)
        # each output element is summed in the same order whatever the split: bitwise equal
        assert all(torch.equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("block,kernel", [((4, 1), "4x1"), ((16, 1), "16x1")])
def test_int8_accumulators_are_identical_on_every_isa(block, kernel, isa_guard):
    packed, _, _ = _weight(torch.int8, block, kernel, N=130, K=513, density=0.5)
    assert packed[0][1] == (1 if kernel == "4x1" else 5)  # the layout id in meta
    results = {}
    for isa in PATHS:
        _select(isa)
        results[isa] = [ops.bsr_linear(_x(M, 513, torch.bfloat16, seed=M), *packed, 130, 513, out_dtype=torch.int32)
                        for M in (1, 5, 8, 33, 129)]
    for isa in PATHS[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[isa], results["portable"])), isa


def test_packing_does_not_depend_on_the_isa(isa_guard):
    for dtype, block, kernel in CONFIGS:
        crow, col, values = random_bsr(40, 90, *block, 0.4, dtype)
        packed = []
        for isa in ISAS:
            _C.set_cpu_isa(isa)
            packed.append(ops.bsr_pack(crow, col, values, 40, 90, kernel))
        for p in packed[1:]:
            assert all(torch.equal(a.view(torch.int16) if a.dtype == torch.bfloat16 else a,
                                   b.view(torch.int16) if b.dtype == torch.bfloat16 else b) for a, b in zip(p, packed[0]))


@pytest.mark.skipif("avx512_vnni" not in ISAS, reason="the AMX kernels' emulation needs AVX512_VNNI")
def test_amx_self_check_passes_with_emulated_tiles(isa_guard):
    """The check an AMX CPU runs before its first AMX call (the AVX-512 kernels against the tile kernels) agrees on
    the emulated tiles, and the status reports which AMX kernels run."""
    assert _C.amx_self_check(True) == {"int8": 0, "bf16": 0}
    assert _C.amx_status() == ("active" if "amx" in ISAS else "unavailable")
    _select("amx_emulated")
    assert _C.amx_status() == "emulated"
    if "amx" not in ISAS:
        with pytest.raises(ValueError, match="needs the amx ISA level"):
            _C.amx_self_check(False)


def test_env_var_forces_the_portable_path():
    code = (
        "import torch, sparseflow\n"
        "from sparseflow import _C, ops\n"
        "from sparseflow.testing.op_db import random_bsr\n"
        "from sparseflow.testing import reference as ref\n"
        "assert _C.selected_cpu_isa() == 'portable', _C.selected_cpu_isa()\n"
        "p = ops.bsr_pack(*random_bsr(20, 33, 4, 1, 0.5, torch.int8), 20, 33)\n"
        "x = torch.randn(9, 33)\n"
        "assert torch.equal(ops.bsr_linear(x, *p, 20, 33, out_dtype=torch.int32),"
        " ref.bsr_linear(x, *p, 20, 33, None, None, 'none', torch.int32))\n"
    )
    env = dict(os.environ, SPARSEFLOW_CPU_ISA="portable")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dtype", [torch.int8, torch.bfloat16, torch.float32])
def test_packed_weights_survive_state_dict_round_trips(dtype):
    block, kernel = ((4, 1), "4x1") if dtype == torch.int8 else ((16, 1), "16x1")
    packed, scale, _ = _weight(dtype, block, kernel)
    names = ("meta", "rowptr", "indices", "packed_values", "compensation")
    state = dict(zip(names, packed))
    x = _x(5, 300, torch.float32 if dtype == torch.int8 else dtype)
    expected = ops.bsr_linear(x, *packed, 70, 300, None, scale)

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert torch.equal(ops.bsr_linear(x, *(loaded[n] for n in names), 70, 300, None, scale), expected)

    safetensors = pytest.importorskip("safetensors.torch")
    loaded = safetensors.load(safetensors.save(state))
    assert torch.equal(ops.bsr_linear(x, *(loaded[n] for n in names), 70, 300, None, scale), expected)


@pytest.mark.parametrize("isa", PATHS)
def test_large_batches_split_across_tasks(isa, isa_guard):
    """M spans several per-thread token tasks (int8: 128 tokens, float: 32) and N several threads."""
    _select(isa)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for dtype, block, kernel in ((torch.int8, (4, 1), "4x1"), (torch.int8, (16, 1), "16x1"),
                                     (torch.float32, (16, 1), "16x1"), (torch.bfloat16, (1, 16), "1x16")):
            packed, scale, _ = _weight(dtype, block, kernel, N=260, K=1000, density=0.2)
            x = _x(300, 1000, torch.float32 if dtype == torch.int8 else dtype)
            out_dtype = torch.int32 if dtype == torch.int8 else None
            args = (x, *packed, 260, 1000, None, None, "none", out_dtype)
            assert_bsr_linear_close(ops.bsr_linear(*args), ref.bsr_linear(*args), args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("config", CONFIGS[::2], ids=lambda c: f"{str(c[0])[6:]}-{c[2]}")
def test_corrupted_indices_are_reported_by_every_kernel(isa, config, isa_guard):
    _select(isa)
    dtype, block, kernel = config
    packed, scale, _ = _weight(dtype, block, kernel)
    for position in (0, packed[2].numel() // 2, packed[2].numel() - 1):
        indices = packed[2].clone()
        indices[position] = 300 + position % 7
        for M in (1, 9, 70):
            x = _x(M, 300, torch.float32 if dtype == torch.int8 else dtype)
            with pytest.raises(IndexError, match=rf"sparseflow.bsr_linear: a packed index is {300 + position % 7}, "
                                                 r"out of range for in_features=300"):
                ops.bsr_linear(x, packed[0], packed[1], indices, *packed[3:], 70, 300, None, scale)


def test_int8_quantization_edge_rows():
    """Rows that are all positive (zero point 0), all negative (zero point 255), all zero (scale 1), constant."""
    packed, scale, _ = _weight(torch.int8, (4, 1), "4x1", K=300)
    x = torch.stack([torch.rand(300) + 0.5, -torch.rand(300) - 0.5, torch.zeros(300), torch.full((300,), 3.0),
                     torch.randn(300) * 1e4, torch.randn(300) * 1e-6])
    _, sx, zp = ref.quantize_per_token_u8(x)
    assert zp[0] == 0 and zp[1] == 255 and sx[2] == 1
    for args in ((x, *packed, 70, 300, None, None, "none", torch.int32), (x, *packed, 70, 300, None, scale, "silu")):
        expected = ref.bsr_linear(*args)
        assert_bsr_linear_close(ops.bsr_linear(*args), expected, args)


@pytest.mark.parametrize("activation", ["gelu", "silu", "relu"])
def test_activations_over_a_wide_range(activation):
    """The vectorized exp/erfc behind gelu/silu, from deep negative tails to large positives."""
    packed, _, _ = _weight(torch.float32, (16, 1), "16x1", N=64, K=16, density=1.0)
    x = torch.linspace(-60, 60, 16 * 129).reshape(129, 16)
    args = (x, *packed, 64, 16, torch.randn(64), None, activation, None)
    assert_bsr_linear_close(ops.bsr_linear(*args), ref.bsr_linear(*args), args)


@pytest.mark.parametrize("dtype,block,bytes_per_nonzero", [(torch.int8, (4, 1), 1.5), (torch.int8, (16, 1), 1.125),
                                                          (torch.bfloat16, (16, 1), 2.125), (torch.float32, (16, 1), 4.125)])
def test_streamed_bytes_shrink_with_sparsity(dtype, block, bytes_per_nonzero):
    """What the small-M kernels stream per weight: values plus one 16-bit index per block."""
    N, K = 512, 2048
    previous = None
    for sparsity in (0.5, 0.7, 0.9, 0.95):
        crow, col, values = random_bsr(N, K, *block, 1 - sparsity, dtype, seed=1)
        meta, rowptr, indices, packed, _ = ops.bsr_pack(crow, col, values, N, K)
        streamed = (indices.numel() * 2 + packed.numel() * packed.element_size()) / (N * K)
        stored_nonzeros = packed.numel() / (N * K)
        assert streamed == pytest.approx(bytes_per_nonzero * stored_nonzeros, rel=1e-6)
        assert stored_nonzeros <= (1 - sparsity) * 1.08 + 4 * 4 / K  # padding to whole tiles only
        assert previous is None or streamed < previous
        previous = streamed


@pytest.mark.parametrize("isa", PATHS)
def test_zero_in_features_gives_the_activated_bias(isa, isa_guard):
    """No blocks at all: every output is written from the bias alone (never left uninitialized)."""
    _select(isa)
    for dtype, block, kernel in CONFIGS:
        packed = ops.bsr_pack(torch.zeros(-(-71 // block[0]) + 1, dtype=torch.int32),
                              torch.zeros(0, dtype=torch.int32), torch.zeros(0, *block, dtype=dtype), 71, 0, kernel)
        scale = torch.ones(71) if dtype == torch.int8 else None
        bias = torch.randn(71)
        for M in (1, 9, 40):
            x = torch.empty(M, 0, dtype=torch.float32 if dtype == torch.int8 else dtype)
            y = ops.bsr_linear(x, *packed, 71, 0, bias, scale, "silu", torch.float32)
            torch.testing.assert_close(y, torch.nn.functional.silu(bias).expand(M, 71), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("config", [c for c in CONFIGS if c[0] != torch.int8], ids=lambda c: f"{str(c[0])[6:]}-{c[2]}")
def test_long_reductions_are_as_accurate_as_torch(isa, config, isa_guard):
    """Thousands of blocks per output channel: summed in chunks, within 2x of torch's own error."""
    _select(isa)
    dtype, block, kernel = config
    packed, _, _ = _weight(dtype, block, kernel, N=48, K=8192, density=0.6)
    x = _x(18, 8192, dtype)
    args = (x, *packed, 48, 8192, None, None, "none", None)
    assert_bsr_linear_close(ops.bsr_linear(*args), ref.bsr_linear(*args), args)


@pytest.mark.parametrize("sparsity,span", [(0.5, 16), (0.7, 16), (0.8, 16), (0.9, 0)])
def test_int8_4x1_tiles_lie_within_16_input_channels(sparsity, span):
    """bsr_pack cuts 4x1 tiles at 16 input channels where that adds at most 1/4 more blocks (meta slot 6 = 16),
    so the decode kernel finds each tile's four activations in one 16-byte window of x."""
    N, K = 256, 1000
    crow, col, values = random_bsr(N, K, 4, 1, 1 - sparsity, torch.int8, seed=3)
    packed = ops.bsr_pack(crow, col, values, N, K)
    assert int(packed[0][6]) == span
    assert all(torch.equal(a, b) for a, b in zip(packed, ref.bsr_pack(crow, col, values, N, K)))
    tiles = packed[2].long().reshape(-1, 4)
    offsets = tiles - tiles[:, :1]
    assert (offsets >= 0).all()
    assert (offsets < 16).all() if span else (offsets >= 16).any()
    plain = 4 * sum(len(ref._bsr_tiles(col[crow[r]:crow[r + 1]].tolist(), 4, 0)) for r in range(N // 4))
    assert plain <= packed[2].numel() <= (1.25 * plain if span else plain)


@pytest.mark.parametrize("isa", PATHS)
def test_plain_4x1_tiles_run_every_decode_and_panel_path(isa, isa_guard):
    """Sparse 4x1 weights keep plain tiles (meta[6] = 0; the other tests' densities give span-16 ones): the
    gather decode (1-8 tokens) and the panel kernel, exact int32 against the reference."""
    _select(isa)
    packed, _, _ = _weight(torch.int8, (4, 1), "4x1", N=70, K=300, density=0.08)
    assert int(packed[0][6]) == 0
    for M in (1, 2, 3, 5, 8, 9, 70):
        args = (_x(M, 300, torch.float32, seed=M), *packed, 70, 300, None, None, "none", torch.int32)
        assert torch.equal(ops.bsr_linear(*args[:8], out_dtype=torch.int32), ref.bsr_linear(*args))


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("K", [1, 5, 16, 17, 40, 300])
def test_span16_decode_reads_windows_up_to_the_end_of_x(isa, K, isa_guard):
    """Tiles that start within 15 input channels of the end of x (their 16-byte windows reach past it), ragged
    last groups of tiles and short rows: int32 sums equal to the reference for every token count on every path."""
    _select(isa)
    g = torch.Generator().manual_seed(K)
    N = 38
    dense = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    dense[torch.rand(N, K, generator=g) < 0.5] = 0
    dense[:, -3:] = torch.randint(1, 128, (N, min(3, K)), generator=g, dtype=torch.int8)  # the last channels kept
    dense[4:8] = 0  # an empty block-row
    canonical = BlockSparseWeight.from_dense(dense.float(), (4, 1))  # integer values: exact back to int8
    crow, col, values = canonical.crow, canonical.col, canonical.values.to(torch.int8)
    packed = ops.bsr_pack(crow, col, values, N, K, "4x1")
    assert int(packed[0][6]) == 16
    for M in range(1, 10):
        x = _x(M, K, torch.float32, seed=M)
        args = (x, *packed, N, K, None, None, "none", torch.int32)
        assert torch.equal(ops.bsr_linear(*args[:8], out_dtype=torch.int32), ref.bsr_linear(*args))


def _float_4x1_weight(N, K, density, dtype=torch.float32):
    """A weight of 4x1 blocks with its last 3 input channels kept and an empty block-row, packed by 'auto'."""
    g = torch.Generator().manual_seed(K)
    dense = torch.randn(N, K, generator=g)
    dense[torch.rand(N, K, generator=g) > density] = 0
    dense[:, -3:] = torch.randn(N, min(3, K), generator=g)  # the last channels kept
    dense[4:8] = 0  # an empty block-row
    canonical = BlockSparseWeight.from_dense(dense.to(dtype), (4, 1))
    return ops.bsr_pack(canonical.crow, canonical.col, canonical.values, N, K)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("K", [1, 5, 16, 17, 40, 300])
@pytest.mark.parametrize("density", [0.5, 0.01])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_4x1_tiles_on_every_path(isa, K, density, dtype, isa_guard):
    """float 4x1 tiles, span-16 or plain (sparse and wide): tiles that start within 15 channels of the end of x (the
    decodes' windows reach past it), ragged last tiles (the bf16 decode takes two tiles a step: odd tile counts),
    an empty block-row, a partial last block-row; token counts around the decode's switch to the panel kernel
    (after 6 tokens), the panels' 16 tokens, and last panels of 7 and 9 tokens (padded to whole lines)."""
    _select(isa)
    N = 38
    packed = _float_4x1_weight(N, K, density, dtype)
    assert int(packed[0][1]) == 6  # 'auto' takes float 4x1 for 4x1 blocks
    bias = torch.randn(N)
    for M in (1, 2, 3, 5, 6, 7, 9, 16, 17, 25):
        x = _x(M, K, dtype, seed=M)
        args = (x, *packed, N, K, bias, None, ref.ACTIVATIONS[M % 4], (torch.float32, torch.bfloat16)[M % 2])
        assert_bsr_linear_close(ops.bsr_linear(*args), ref.bsr_linear(*args), args)


@pytest.mark.parametrize("isa", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_4x1_last_panels_above_3072_inputs(isa, dtype, isa_guard):
    """Above K = 3072 a last panel of 9-15 tokens keeps lines of its own token count (float4x1_panel_line, bsr.h);
    at or below it, 16-float lines; up to 8 tokens, 8-float lines."""
    _select(isa)
    N = 21
    for K in (3072, 3073):
        packed = _float_4x1_weight(N, K, 0.05, dtype)
        assert int(packed[0][1]) == 6
        bias = torch.randn(N)
        for M in (8, 9, 13, 25):
            x = _x(M, K, dtype, seed=M)
            args = (x, *packed, N, K, bias, None, ref.ACTIVATIONS[M % 4], torch.float32)
            assert_bsr_linear_close(ops.bsr_linear(*args), ref.bsr_linear(*args), args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_4x1_weights_take_span16_and_plain_tiles(dtype):
    assert int(_float_4x1_weight(38, 300, 0.5, dtype)[0][6]) == 16
    assert int(_float_4x1_weight(38, 300, 0.01, dtype)[0][6]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_float_tile_that_breaks_its_span_is_reported(dtype, isa_guard):
    """The float 4x1 decodes (AVX-512 and, for bf16, AVX512_BF16; M <= 6) rely on the span like the int8 one: a tile
    changed to span 16 or more channels, or to run backwards, is refused (by the reference too); the panel kernel
    does not need the span. Both halves of the bf16 decode's two-tile steps are checked (an even and an odd tile)."""
    packed = _float_4x1_weight(70, 300, 0.5, dtype)
    tiles = packed[2].long().reshape(-1, 4)
    candidates = ((tiles[:, 0] > 0) & (tiles[:, 0] < 250) & (tiles[:, 1] > tiles[:, 0])).nonzero()[:, 0].tolist()
    isas = [isa for isa in ("avx512", "avx512_bf16" if dtype == torch.bfloat16 else None) if isa in ISAS]
    for t in (next(t for t in candidates if t % 2 == 0), next(t for t in candidates if t % 2 == 1)):
        for value in (int(tiles[t, 0]) + 16, int(tiles[t, 0]) - 1):
            indices = packed[2].clone()
            indices[4 * t + 1] = value
            args = (_x(3, 300, dtype), packed[0], packed[1], indices, *packed[3:], 70, 300)
            with pytest.raises(IndexError, match="a tile's indices span further"):
                ref.bsr_linear(*args, None, None, "none", None)
            for isa in isas:
                _C.set_cpu_isa(isa)
                with pytest.raises(IndexError, match=r"sparseflow.bsr_linear: meta says every tile lies within 16 "
                                                     r"input channels, but a tile's indices span further \(corrupted"):
                    ops.bsr_linear(*args)


def test_a_tile_that_breaks_its_span_is_reported(isa_guard):
    """A span-16 weight whose indices were changed so that a tile spans 16 or more input channels, or runs
    backwards: the kernels that rely on the span (VNNI decode, M <= 8) and the reference refuse it."""
    packed, scale, _ = _weight(torch.int8, (4, 1), "4x1", N=70, K=300, density=0.5)
    assert int(packed[0][6]) == 16
    tiles = packed[2].long().reshape(-1, 4)
    t = int(((tiles[:, 0] > 0) & (tiles[:, 0] < 250) & (tiles[:, 1] > tiles[:, 0])).nonzero()[0, 0])
    for value in (int(tiles[t, 0]) + 16, int(tiles[t, 0]) - 1):
        indices = packed[2].clone()
        indices[4 * t + 1] = value
        args = (_x(3, 300, torch.float32), packed[0], packed[1], indices, *packed[3:], 70, 300, None, scale)
        with pytest.raises(IndexError, match="a tile's indices span further"):
            ref.bsr_linear(*args, "none", None)
        if "avx512_vnni" in ISAS:
            _C.set_cpu_isa("avx512_vnni")
            with pytest.raises(IndexError, match=r"sparseflow.bsr_linear: meta says every tile lies within 16 input "
                                                 r"channels, but a tile's indices span further \(corrupted packed"):
                ops.bsr_linear(*args)
    for meta_span, layout in ((8, 1), (16, 5)):
        meta = packed[0].clone()
        meta[6], meta[1] = meta_span, layout
        with pytest.raises(ValueError, match=rf"sparseflow.bsr_linear: meta holds tile span {meta_span} \(0, or 16 "
                                             r"for the 4x1 layouts\)"):
            ops.bsr_linear(_x(1, 300, torch.float32), meta, *packed[1:], 70, 300, None, scale)
