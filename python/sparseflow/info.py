"""``python -m sparseflow.info``: how this sparseflow was built, what this machine has, which kernels exist."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

import sparseflow
from sparseflow import _C, _loader, _meta, ops


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _has_kernel(name: str, key: str) -> bool:
    qualname = f"sparseflow::{name}"
    if key == "CUDA" and name in _meta.CUDA_FALLBACKS:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


# Token counts at which the CPU kernel choice changes: the span-16 decode (<= 3), the decode kernels (<= 8), AMX
# and the panel kernels (>= 16 for AMX), nm's wide kernel (>= 32).
KERNEL_TOKENS = (1, 4, 16, 32)


def _bsr_meta(dtype: torch.dtype, block: tuple[int, int], col_step: int) -> torch.Tensor:
    """The packed meta of a one-block-row weight whose 4 blocks lie col_step block-columns apart (int8 / float 4x1:
    one span-16 tile for col_step 1, which the decode reads through 16-element windows of x)."""
    rows, cols = block
    col = torch.arange(0, 4 * col_step, col_step, dtype=torch.int32)
    crow = torch.tensor([0, 4], dtype=torch.int32)
    values = torch.ones(4, rows, cols, dtype=dtype)
    return ops.bsr_pack(crow, col, values, rows, 4 * col_step * cols, f"{rows}x{cols}")[0]


def cpu_kernels() -> dict[str, dict[int, str]]:
    """Per weight kind, the CPU kernel bsr_linear / nm_linear run at each of KERNEL_TOKENS (selected ISA)."""
    bsr = (("int8 4x1 span-16", torch.int8, (4, 1), 1),
           ("int8 4x1 wider tiles", torch.int8, (4, 1), 16),
           ("int8 16x1", torch.int8, (16, 1), 1), ("bf16 16x1", torch.bfloat16, (16, 1), 1),
           ("fp32 4x1 span-16", torch.float32, (4, 1), 1), ("fp32 4x1 wider tiles", torch.float32, (4, 1), 16),
           ("bf16 4x1 span-16", torch.bfloat16, (4, 1), 1), ("bf16 4x1 wider tiles", torch.bfloat16, (4, 1), 16),
           ("fp32 16x1", torch.float32, (16, 1), 1), ("fp32/bf16 1x16", torch.float32, (1, 16), 1))
    rows = {}
    for name, dtype, block, col_step in bsr:
        meta = _bsr_meta(dtype, block, col_step)
        rows[f"bsr_linear {name}"] = {m: ops.bsr_linear_cpu_kernel(meta, m) for m in KERNEL_TOKENS}
    for dtype, label in ((torch.int8, "int8"), (torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        for n, m in ((2, 4), (4, 8), (1, 4)):
            rows[f"nm_linear {label} {n}:{m}"] = {t: ops.nm_linear_cpu_kernel(dtype, n, m, t) for t in KERNEL_TOKENS}
    return rows


def collect() -> dict:
    build = dict(sparseflow.BUILD_INFO)
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "capability": f"sm_{p.major}{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)})
    return {
        "sparseflow": sparseflow.__version__,
        "python": sys.version.split()[0],
        "torch_built_against": build["torch_version"],
        "torch_running": torch.__version__,
        "build": build,
        "cuda_kernels_loaded": _loader.cuda_loaded,
        "cuda_load_error": _loader.cuda_load_error,
        "gpus": gpus,
        "cpu": cpu_model(),
        "cpu_features": _C.cpu_features(),
        "cpu_isa_detected": _C.detected_cpu_isa(),
        "cpu_isa_selected": _C.selected_cpu_isa(),
        "amx_kernels": _C.amx_status(),
        "threads": torch.get_num_threads(),
        "cpu_kernels": cpu_kernels(),
        "ops": {
            name: {"cpu": _has_kernel(name, "CPU"), "cuda": _has_kernel(name, "CUDA"),
                   "cuda_missing_reason": _meta.CUDA_FALLBACKS.get(name)}
            for name in _meta.sparseflow_op_names()
        },
    }


def render(info: dict) -> str:
    b = info["build"]
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    lines = [
        f"sparseflow {info['sparseflow']}  (python {info['python']})",
        f"torch: built against {info['torch_built_against']}, running {info['torch_running']}"
        + ("" if info["torch_built_against"] == info["torch_running"] else "   <-- MISMATCH: rebuild sparseflow"),
        f"build: {b['build_type']}, {b['cxx_compiler']}, sanitizers: {b['sanitizers'] or 'none'}",
        f"CUDA kernels: built {yes(b['cuda_enabled'])}"
        + (f" (archs {b['cuda_archs']}, nvcc {b['nvcc_version']})" if b["cuda_enabled"] else "")
        + f", loaded {yes(info['cuda_kernels_loaded'])}"
        + (f" -- {info['cuda_load_error']}" if info["cuda_load_error"] else ""),
        "GPUs: " + (", ".join(f"{g['name']} ({g['capability']}, {g['memory_gib']} GiB)" for g in info["gpus"]) or "none visible"),
        f"CPU: {info['cpu']}, {info['threads']} torch threads"
        + ("" if b.get("openmp") else "   <-- built without OpenMP: CPU kernels run on one thread"),
        "CPU features: " + " ".join(k for k, v in info["cpu_features"].items() if v),
        f"CPU ISA: detected {info['cpu_isa_detected']}, selected {info['cpu_isa_selected']}"
        " (lower it with SPARSEFLOW_CPU_ISA=portable|avx512|avx512_vnni|avx512_bf16|amx)",
        f"AMX kernels (bsr_linear int8/bf16 16x1, M >= 16): {info['amx_kernels']}",
        "",
        f"{'op':<24}{'CPU':<6}{'CUDA':<6}",
    ]
    for name, op in info["ops"].items():
        note = f"  ({op['cuda_missing_reason']})" if op["cuda_missing_reason"] and b["cuda_enabled"] else ""
        lines.append(f"{name:<24}{yes(op['cpu']):<6}{yes(op['cuda']):<6}{note}")
    lines += ["", f"CPU kernel per weight and token count (selected ISA {info['cpu_isa_selected']}):",
              (f"{'weight':<32}" + "".join(f"{'M=' + str(m):<31}" for m in KERNEL_TOKENS)).rstrip()]
    for name, by_tokens in info["cpu_kernels"].items():
        lines.append(f"{name:<32}" + "".join(f"{by_tokens[m]:<31}" for m in KERNEL_TOKENS).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparseflow.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
