"""``python -m sparseflow.bench [SUITE ...]``: run benchmark suites, print a table, write JSON/CSV/PNG."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from . import report, results, runner, suites
from .registry import SuiteContext


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparseflow.bench",
        description="Time sparseflow ops against the strongest PyTorch baselines measured in the same run. "
                    "Speedup = fastest baseline time / sparseflow time (> 1: sparseflow is faster).")
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help="suites to run (default: every suite that runs on --device; see --list)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick",
                      help="smaller shapes and fewer repeats, for a look in under a minute")
    size.add_argument("--tiny", action="store_const", dest="size", const="tiny",
                      help="smallest shapes, 2 repeats: exercises the harness (tests), numbers mean little")
    p.set_defaults(size="full")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) before running")
    p.add_argument("--filter", metavar="REGEX", help="only cases whose name matches (re.search)")
    p.add_argument("--repeats", type=int, default=None, help="minimum timed calls per function")
    p.add_argument("--min-time", type=float, default=None, metavar="S",
                   help="minimum total timed seconds per function")
    p.add_argument("--cold-cache", action="store_true",
                   help="evict the caches before every timed call (write a buffer larger than the LLC / L2)")
    p.add_argument("--flush-mb", type=float, default=None,
                   help="size of that buffer in MiB (default: max(256, 4x LLC) on CPU, 2x L2 on GPU)")
    p.add_argument("--json", metavar="OUT.json", help="write rows, samples and metadata (with the repro command)")
    p.add_argument("--csv", metavar="OUT.csv", help="write one line per row")
    p.add_argument("--compare", metavar="OLD.json", help="print new/old time per row and flag regressions")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="--compare flags rows whose new/old time exceeds 1 + this (default 0.1)")
    p.add_argument("--plot", metavar="OUT.png", help="draw speedups (needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _list_suites() -> str:
    lines = [[s.name, ",".join(s.devices), ",".join(s.ops), s.description] for s in suites.SUITES.values()]
    return report.format_table(["suite", "devices", "ops", "description"], lines, left=4)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_list_suites())
        return 0

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.suites:
        unknown = [s for s in args.suites if s not in suites.SUITES]
        if unknown:
            parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(suites.SUITES)}")
        chosen = [suites.get(s) for s in args.suites]
        wrong = [s.name for s in chosen if device.type not in s.devices]
        if wrong:
            parser.error(f"suite(s) {', '.join(wrong)} do not run on {device.type}")
    else:
        chosen = suites.applicable(device)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.plot:
        report.require_matplotlib()  # fail before the run, not after it
    old_rows = results.read_json(args.compare)[1] if args.compare else None

    ctx = SuiteContext(device=device, size=args.size)
    plan = [(s, runner.select_cases(s, ctx, args.filter)) for s in chosen]
    if not any(cases for _, cases in plan):
        parser.error(f"no case matches --filter {args.filter!r}" if args.filter else "no suite to run")
    flush_bytes = int(args.flush_mb * (1 << 20)) if args.flush_mb is not None else None
    cfg = runner.timing_for(args.size, repeats=args.repeats, min_time_s=args.min_time,
                            cold_cache=args.cold_cache or None, flush_bytes=flush_bytes)
    rows = runner.run(plan, device, cfg, progress=not args.no_progress)

    print(report.results_table(rows))
    if args.json:
        meta = results.collect_metadata(argv, device, size=args.size, timing=dataclasses.asdict(cfg),
                                        suites=[s.name for s, _ in plan])
        results.write_json(args.json, meta, rows)
        print(f"wrote {args.json}")
    if args.csv:
        results.write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    if old_rows is not None:
        print(f"\ncompared with {args.compare}:")
        print(report.compare_table(results.compare(old_rows, rows, args.tolerance), args.tolerance))
    if args.plot:
        report.plot(rows, args.plot, {name: s.sparsity_axis for name, s in suites.SUITES.items()})
        print(f"wrote {args.plot}")
    failed = [r.case for r in rows if r.check.startswith("failed")]
    if failed:
        print(f"sparseflow.bench: WRONG RESULTS in {len(failed)} case(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
