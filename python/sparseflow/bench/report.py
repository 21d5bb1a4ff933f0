"""Human-facing output: the terminal table, the --compare table and the --plot PNG."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from .results import Comparison, Row


def fmt(x: float | None, digits: int = 4) -> str:
    """``digits`` significant digits without an exponent; '-' for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0 or not math.isfinite(x):
        return str(x)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def format_table(headers: Sequence[str], lines: Iterable[Sequence[str]], left: int = 1) -> str:
    """Aligned columns: the first ``left`` left-aligned (text), the others right-aligned (numbers)."""
    lines = [list(line) for line in lines]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(headers)]

    def render(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([render(headers), "  ".join("-" * w for w in widths)] + [render(line) for line in lines])


def _groups(rows: list[Row]) -> dict[tuple[str, str, str], list[Row]]:
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.suite, r.device, r.op), []).append(r)
    return groups


def results_table(rows: list[Row]) -> str:
    """One table per (suite, device, op): our time, its spread, throughput, each baseline and the speedup."""
    out = []
    for (suite, device, op), group in _groups(rows).items():
        baseline_names = list(dict.fromkeys(b.name for r in group for b in r.baselines))
        with_flops = any(r.gflops_dense_eq is not None for r in group)
        tflops = device.startswith("cuda")
        with_check = any(r.check != "ok" for r in group)
        headers = ["case", "median [ms]", "IQR [%]", "GB/s"]
        headers += ["TFLOP/s dense-eq" if tflops else "GFLOP/s dense-eq"] if with_flops else []
        headers += [f"{name} [ms]" for name in baseline_names] + ["speedup [x]", "fastest baseline"]
        with_kernel = any(r.kernel for r in group)
        headers += ["kernel"] if with_kernel else []
        headers += ["check"] if with_check else []
        lines = []
        for r in group:
            by_name = {b.name: b for b in r.baselines}
            line = [r.case, fmt(r.median_ms), fmt(100 * r.iqr_ms / r.median_ms, 2), fmt(r.gbps, 3)]
            if with_flops:
                flops = r.gflops_dense_eq / 1e3 if tflops and r.gflops_dense_eq is not None else r.gflops_dense_eq
                line.append(fmt(flops))
            line += [fmt(by_name[n].median_ms) if n in by_name else "-" for n in baseline_names]
            line += [fmt(r.speedup, 3), r.best_baseline or "-"]
            line += [r.kernel or "-"] if with_kernel else []
            line += [r.check] if with_check else []
            lines.append(line)
        threads = sorted({r.threads for r in group})
        out.append(f"== {suite} / {op} on {device} ({', '.join(map(str, threads))} thread{'s' * (threads != [1])}"
                   f"{', cold cache' if any(r.cold_cache for r in group) else ''}); "
                   "speedup = fastest baseline / ours ==")
        out.append(format_table(headers, lines))
        notes = list(dict.fromkeys(n for r in group for n in r.notes))
        out += [f"  note: {n}" for n in notes]
        out.append("")
    return "\n".join(out)


def compare_table(comparisons: list[Comparison], tolerance: float) -> str:
    """Rows of this run against the old run; old rows this run did not measure are only counted."""
    shown = [c for c in comparisons if c.status != "gone"]
    headers = ["case", "suite", "device", "old [ms]", "new [ms]", "new/old", "old speedup", "new speedup", "status"]
    lines = [[c.key[1], c.key[0], c.key[2], fmt(c.old_ms), fmt(c.new_ms), fmt(c.ratio, 3), fmt(c.old_speedup, 3),
              fmt(c.new_speedup, 3), c.status.upper() if c.status == "regression" else c.status]
             for c in shown]
    out = [format_table(headers, lines)]
    gone = len(comparisons) - len(shown)
    if gone:
        out.append(f"{gone} row(s) of the old run were not run this time")
    regressions = sum(c.status == "regression" for c in comparisons)
    out.append(f"{regressions} regression(s): new/old time above {1 + tolerance:.2f}" if regressions
               else f"no regressions (tolerance {tolerance:.0%})")
    return "\n".join(out)


def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise SystemExit("sparseflow.bench: --plot needs matplotlib: pip install 'sparseflow[bench]'") from e


def plot(rows: list[Row], path: str, sparsity_axis: dict[str, bool]) -> None:
    """One panel per (suite, device): speedup against sparsity, one line per family where the suite has a
    sparsity axis, else one bar per case. The dashed line at 1 is parity with the fastest baseline."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    panels: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.speedup is not None:
            panels.setdefault((r.suite, r.device), []).append(r)
    if not panels:
        raise ValueError("sparseflow.bench: nothing to plot (no row has a baseline)")
    heights = [4.0 if sparsity_axis.get(s, False) else 1.0 + 0.22 * len(group) for (s, _), group in panels.items()]
    fig = Figure(figsize=(10, sum(heights)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, ((suite, device), group) in zip(axes, panels.items()):
        if sparsity_axis.get(suite, False):
            families: dict[str, list[Row]] = {}
            for r in group:
                families.setdefault(r.family, []).append(r)
            for family, members in families.items():
                members.sort(key=lambda r: r.sparsity or 0.0)
                ax.plot([r.sparsity for r in members], [r.speedup for r in members], marker="o", label=family)
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel("sparsity")
            ax.set_ylabel("speedup [x] vs fastest baseline")
            ax.legend(fontsize="small")
        else:
            labels = [r.case for r in group]
            colors = ["tab:green" if r.speedup >= 1 else "tab:red" for r in group]
            ax.barh(range(len(group)), [r.speedup for r in group], color=colors)
            ax.set_yticks(range(len(group)), labels, fontsize="small")
            ax.invert_yaxis()
            ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel("speedup [x] vs fastest baseline")
        ax.set_title(f"{suite} on {device}")
    fig.savefig(path, dpi=110)
