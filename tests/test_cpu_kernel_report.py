"""Which CPU kernel bsr_linear / nm_linear run: ops.*_cpu_kernel, SparseLinear.kernel, sparseflow.info and the
bench's kernel column. The op's dispatch and the report share one choice in C++ (choose_cpu_path in
bsr_cpu.cpp / nm_linear_cpu.cpp); these tests pin that choice per ISA level and token count, written out here
independently, so a change of the dispatch shows up as a failing expectation."""

import pytest
import torch

from sparseflow import _C, info, ops
from sparseflow.bench import registry, runner, suites
from sparseflow.nn import SparseLinear

ISA_LEVELS = ["portable", "avx512", "avx512_vnni", "avx512_bf16", "amx"]
AVAILABLE = ISA_LEVELS[: ISA_LEVELS.index(_C.detected_cpu_isa()) + 1]
TOKENS = (0, 1, 2, 3, 4, 8, 9, 15, 16, 31, 32, 129)


@pytest.fixture
def isa_level(request):
    before = _C.selected_cpu_isa()
    assert _C.set_cpu_isa(request.param) == request.param
    yield request.param
    _C.set_cpu_isa(before)


@pytest.fixture
def amx_emulated():
    before = _C.set_amx_emulation(True)
    yield
    _C.set_amx_emulation(before)


def _meta(dtype, block, col_step=1):
    return info._bsr_meta(dtype, block, col_step)  # the weights sparseflow.info reports on


def _at_least(isa, level):
    return ISA_LEVELS.index(isa) >= ISA_LEVELS.index(level)


def expected_bsr(isa, dtype, block, span16, tokens, amx):
    """The dispatch of csrc/bsr/bsr_cpu.cpp, written out. amx: None, "amx" or "amx(emulated)"."""
    if dtype == torch.int8:
        if not _at_least(isa, "avx512_vnni"):
            return "portable"
        if tokens <= 8:
            if block == (16, 1):
                return "avx512_vnni:decode_16x1"
            return "avx512_vnni:decode_4x1_span16" if span16 and tokens <= 3 else "avx512_vnni:decode_4x1"
        if block == (16, 1) and tokens >= 16 and amx:
            return f"{amx}:int8_16x1"
        return f"avx512_vnni:panels_{block[0]}x1"
    if dtype == torch.bfloat16 and block == (16, 1):
        if tokens >= 16 and amx:
            return f"{amx}:bf16_16x1"
        if _at_least(isa, "avx512_bf16"):
            return "avx512_bf16:16x1"
    if not _at_least(isa, "avx512"):
        return "portable"
    if block == (4, 1):  # float 4x1: bf16 on vdpbf16ps where the CPU has it, else widened on the fp32 kernels
        level = "avx512_bf16" if dtype == torch.bfloat16 and _at_least(isa, "avx512_bf16") else "avx512"
        if tokens <= 6:
            return f"{level}:decode_4x1_span16" if span16 else f"{level}:decode_4x1"
        return f"{level}:4x1"
    return f"avx512:{block[0]}x{block[1]}"


def expected_nm(isa, dtype, n, m, tokens):
    """The dispatch of csrc/nm/nm_linear_cpu.cpp, written out."""
    lanes = (n, m) in ((2, 4), (4, 8)) if dtype == torch.int8 else (dtype != torch.float16 and (n, m) == (2, 4))
    if dtype == torch.int8:
        vnni = (m == 4 and n in (1, 2)) or (m == 8 and n in (1, 2, 4))
        if not _at_least(isa, "avx512_vnni") or not vnni:
            return "portable"
        return "avx512_vnni:lanes" if lanes else "avx512_vnni:rows"
    if lanes and dtype == torch.bfloat16 and _at_least(isa, "avx512_bf16"):
        return "avx512_bf16:lanes"
    if not _at_least(isa, "avx512"):
        return "portable"
    if lanes:
        return "avx512:lanes"
    return "avx512:rows_wide" if tokens >= 32 else "avx512:rows"


BSR_WEIGHTS = [(torch.int8, (4, 1), 1), (torch.int8, (4, 1), 8), (torch.int8, (16, 1), 1),
               (torch.bfloat16, (16, 1), 1), (torch.float32, (16, 1), 1), (torch.float32, (1, 16), 1),
               (torch.bfloat16, (1, 16), 1), (torch.float32, (4, 1), 1), (torch.float32, (4, 1), 8),
               (torch.bfloat16, (4, 1), 1), (torch.bfloat16, (4, 1), 8)]


@pytest.mark.parametrize("isa_level", AVAILABLE, indirect=True)
@pytest.mark.parametrize("dtype,block,col_step", BSR_WEIGHTS)
def test_bsr_kernel_per_isa_and_tokens(isa_level, dtype, block, col_step):
    meta = _meta(dtype, block, col_step)
    # Blocks one column apart make one 4x1 tile within 16 columns; 8 apart, a tile 25 columns wide.
    span16 = block == (4, 1) and col_step == 1
    assert int(meta[6]) == (16 if span16 else 0)  # meta's tile span, which the decode choice reads
    amx = "amx" if isa_level == "amx" and _C.amx_status() == "active" else None
    got = {t: ops.bsr_linear_cpu_kernel(meta, t) for t in TOKENS}
    assert got == {t: expected_bsr(isa_level, dtype, block, span16, t, amx) for t in TOKENS}


@pytest.mark.skipif("avx512_vnni" not in AVAILABLE, reason="AMX emulation needs AVX512_VNNI")
@pytest.mark.parametrize("dtype", [torch.int8, torch.bfloat16])
def test_bsr_kernel_reports_emulated_amx(amx_emulated, dtype):
    meta = _meta(dtype, (16, 1))
    isa = _C.selected_cpu_isa()
    got = {t: ops.bsr_linear_cpu_kernel(meta, t) for t in TOKENS}
    assert got == {t: expected_bsr(isa, dtype, (16, 1), False, t, "amx(emulated)") for t in TOKENS}
    assert got[16] == f"amx(emulated):{'int8' if dtype == torch.int8 else 'bf16'}_16x1"


NM_WEIGHTS = [(dt, n, m) for dt in (torch.int8, torch.bfloat16, torch.float32, torch.float16)
              for n, m in ((2, 4), (4, 8), (1, 4), (3, 8), (1, 2))]


@pytest.mark.parametrize("isa_level", AVAILABLE, indirect=True)
@pytest.mark.parametrize("dtype,n,m", NM_WEIGHTS)
def test_nm_kernel_per_isa_and_tokens(isa_level, dtype, n, m):
    got = {t: ops.nm_linear_cpu_kernel(dtype, n, m, t) for t in TOKENS}
    assert got == {t: expected_nm(isa_level, dtype, n, m, t) for t in TOKENS}


def test_kernel_report_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nm_linear_cpu_kernel: weight_dtype must have dtype Float, BFloat16, Half, Char, got Double"):
        ops.nm_linear_cpu_kernel(torch.float64, 2, 4, 1)
    with pytest.raises(ValueError, match="tokens must be >= 0, got -1"):
        ops.nm_linear_cpu_kernel(torch.float32, 2, 4, -1)
    with pytest.raises(ValueError, match="nm_linear_cpu_kernel"):
        ops.nm_linear_cpu_kernel(torch.float32, 5, 4, 1)
    meta = _meta(torch.int8, (16, 1))
    with pytest.raises(ValueError, match="tokens must be >= 0, got -3"):
        ops.bsr_linear_cpu_kernel(meta, -3)
    with pytest.raises(ValueError, match="meta must be the 1-D int64 CPU tensor of 8 entries"):
        ops.bsr_linear_cpu_kernel(meta[:3], 1)
    with pytest.raises(TypeError, match="meta"):
        ops.bsr_linear_cpu_kernel(meta.int(), 1)
    bad = meta.clone()
    bad[1] = 4
    with pytest.raises(ValueError, match="layout id 4, the CUDA layout"):
        ops.bsr_linear_cpu_kernel(bad, 1)
    bad[1] = 3  # the float 1x16 layout with int8 values
    with pytest.raises(ValueError, match="meta pairs layout 1x16 with dtype"):
        ops.bsr_linear_cpu_kernel(bad, 1)
    assert torch.equal(meta, _meta(torch.int8, (16, 1)))  # the input is not changed


def test_sparse_linear_names_its_kernel_per_bucket():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    int8 = SparseLinear.from_dense(linear, "2:4", dtype=torch.int8, prune=True, fallback="never")
    isa = _C.selected_cpu_isa()
    assert int8.kernel(1) == expected_nm(isa, torch.int8, 2, 4, 1)
    dense = SparseLinear.from_dense(linear, "2:4", prune=True, fallback="always")
    assert dense.kernel(1) == dense.kernel(300) == "F.linear (dense fallback)"
    with torch.no_grad():
        linear.weight[16:32] = 0  # one empty block-row
    block = SparseLinear.from_dense(linear, "16x1", dtype=torch.int8, fallback="never")
    assert [block.kernel(t) for t in (1, 64)] == [expected_bsr(isa, torch.int8, (16, 1), False, t, None)
                                                   for t in (1, 64)]
    # What kernel() names is what forward() runs: the same result as the op called with that choice's inputs.
    x = torch.randn(3, 64)
    assert torch.equal(block(x), ops.bsr_linear(x, *block._packed, 48, 64, block.bias, block.w_scale))


def test_info_lists_the_kernels_of_the_selected_isa():
    data = info.collect()
    isa = data["cpu_isa_selected"]
    kernels = data["cpu_kernels"]
    assert kernels["nm_linear int8 2:4"] == {t: expected_nm(isa, torch.int8, 2, 4, t) for t in info.KERNEL_TOKENS}
    assert kernels["bsr_linear int8 4x1 span-16"][1] == expected_bsr(isa, torch.int8, (4, 1), True, 1, None)
    assert kernels["bsr_linear int8 4x1 wider tiles"][1] == expected_bsr(isa, torch.int8, (4, 1), False, 1, None)
    text = info.render(data)
    line = next(ln for ln in text.splitlines() if ln.startswith("nm_linear fp32 1:4 "))
    assert line.split()[3:] == [expected_nm(isa, torch.float32, 1, 4, t) for t in info.KERNEL_TOKENS]


def test_bench_rows_carry_the_kernel():
    suite = suites.get("cpu-linear")
    ctx = registry.SuiteContext(torch.device("cpu"), "tiny")
    cases = runner.select_cases(suite, ctx, r"^(bsr_linear int8 4x1 40x70 M=17|nm_linear .*int8)")
    assert cases
    cfg = runner.timing_for("tiny")
    isa = _C.selected_cpu_isa()
    for case in cases:
        row = runner.run_case(suite, case, torch.device("cpu"), cfg)
        if case.op == "bsr_linear":
            assert row.kernel == expected_bsr(isa, torch.int8, (4, 1), False, 17, None)
        else:
            p = case.params
            assert row.kernel == expected_nm(isa, torch.int8, p["n"], p["m"], p["M"]), case.name
