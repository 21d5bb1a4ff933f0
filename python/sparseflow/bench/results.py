"""The result schema (one ``Row`` per case), run metadata, JSON/CSV files and ``--compare``.

JSON: ``{"schema": SCHEMA, "metadata": {...}, "rows": [Row...]}``; rows keep every sample. CSV: one line per
row, no samples, one ``<baseline>_ms`` and ``speedup_vs_<baseline>`` column pair per baseline.
Units are in the field names: ``*_ms`` milliseconds, ``gflops_dense_eq`` dense-equivalent GFLOP/s (the dense
op's FLOP count over our time), ``gbps`` GB/s (1e9 bytes) of the minimal traffic, ``speedup`` baseline/ours.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from ..info import cpu_model

import torch

SCHEMA = "sparseflow-bench/1"


@dataclass
class BaselineResult:
    name: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    speedup: float  # this baseline's median / ours: > 1 means sparseflow is faster
    samples_ms: list[float] = field(repr=False)


@dataclass
class Row:
    suite: str
    case: str
    op: str
    params: dict[str, Any]
    dtype: str
    sparsity: float | None
    device: str
    threads: int
    cold_cache: bool
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    gflops_dense_eq: float | None
    gbps: float | None
    baselines: list[BaselineResult]
    best_baseline: str | None  # the strongest (fastest) baseline
    best_baseline_ms: float | None
    speedup: float | None  # best_baseline_ms / median_ms
    family: str
    check: str  # "ok", "failed: <why>" or "none" (no check for this case)
    notes: list[str]
    samples_ms: list[float] = field(repr=False)
    kernel: str | None = None  # the kernel that ran, where the op reports it (CPU bsr_linear / nm_linear)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def key(self) -> tuple[str, str, str]:
        return self.suite, self.case, self.device

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"bench row has unknown fields {sorted(unknown)} (a newer schema?)")
        d = dict(d)
        d["baselines"] = [BaselineResult(**b) for b in d["baselines"]]
        return cls(**d)


def collect_metadata(argv: list[str], device: torch.device, **extra) -> dict[str, Any]:
    import sparseflow
    from sparseflow import _C

    meta = {
        "sparseflow_version": sparseflow.__version__,
        "build_info": dict(sparseflow.BUILD_INFO),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_isa": _C.selected_cpu_isa(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "sparseflow.bench", *argv]),
        "executable": sys.executable,
    }
    meta.update(extra)
    return meta


def write_json(path: str, metadata: dict[str, Any], rows: list[Row]) -> None:
    doc = {"schema": SCHEMA, "metadata": metadata, "rows": [asdict(r) for r in rows]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def read_json(path: str) -> tuple[dict[str, Any], list[Row]]:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a sparseflow bench result (expected schema {SCHEMA!r})")
    return doc["metadata"], [Row.from_dict(r) for r in doc["rows"]]


CSV_COLUMNS = ("suite", "case", "op", "params", "dtype", "sparsity", "device", "threads", "cold_cache",
               "median_ms", "iqr_ms", "min_ms", "max_ms", "n_samples", "gflops_dense_eq", "gbps",
               "best_baseline", "best_baseline_ms", "speedup", "kernel", "check", "notes")


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def write_csv(path: str, rows: list[Row]) -> None:
    baseline_names = list(dict.fromkeys(b.name for r in rows for b in r.baselines))
    columns = list(CSV_COLUMNS) + [c for name in baseline_names for c in (f"{name}_ms", f"speedup_vs_{name}")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in rows:
            line = {c: getattr(r, c) for c in CSV_COLUMNS if c not in ("params", "n_samples", "notes")}
            line.update(params=format_params(r.params), n_samples=len(r.samples_ms), notes="; ".join(r.notes))
            for b in r.baselines:
                line[f"{b.name}_ms"] = b.median_ms
                line[f"speedup_vs_{b.name}"] = b.speedup
            writer.writerow(line)


@dataclass
class Comparison:
    key: tuple[str, str, str]  # suite, case, device
    old_ms: float | None  # None: the row is new
    new_ms: float | None  # None: the row is gone
    old_speedup: float | None
    new_speedup: float | None
    status: str  # "regression", "faster", "same", "new", "gone"

    @property
    def ratio(self) -> float | None:
        """new / old median time: > 1 is slower."""
        return None if self.old_ms is None or self.new_ms is None else self.new_ms / self.old_ms


def compare(old: list[Row], new: list[Row], tolerance: float = 0.1) -> list[Comparison]:
    """Match rows by (suite, case, device); a new/old time ratio above 1 + tolerance is a regression."""
    old_by_key = {r.key: r for r in old}
    new_keys = {r.key for r in new}
    out = []
    for r in new:
        o = old_by_key.get(r.key)
        if o is None:
            out.append(Comparison(r.key, None, r.median_ms, None, r.speedup, "new"))
            continue
        ratio = r.median_ms / o.median_ms
        status = "regression" if ratio > 1 + tolerance else "faster" if ratio < 1 / (1 + tolerance) else "same"
        out.append(Comparison(r.key, o.median_ms, r.median_ms, o.speedup, r.speedup, status))
    out += [Comparison(o.key, o.median_ms, None, o.speedup, None, "gone") for o in old if o.key not in new_keys]
    return out
