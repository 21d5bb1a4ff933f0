"""The benchmark harness, schema, files, --compare, --plot and CLI (tiny shapes; no speed is asserted)."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import sparseflow
from sparseflow.bench import harness, report, results, runner, suites
from sparseflow.bench.__main__ import main
from sparseflow.bench.registry import SUITES, Case, Prepared, Suite, SuiteContext, suite

# The subprocess must import the sparseflow this test process imported (installed, or a dev build).
PYTHON_DIR = os.path.dirname(os.path.dirname(sparseflow.__file__))


def busy(ms: float):
    """A function that takes at least ``ms`` milliseconds of wall time."""

    def fn():
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pass

    return fn


def noop():
    return None


# ------------------------------------------------------------------------------------------------ harness

def test_measure_stats_are_ordered_and_bounded_below():
    t = harness.measure(busy(2.0), warmup=1, repeats=5, min_time_s=0.0, device="cpu")
    assert t.n >= 5 and len(t.samples_ms) == t.n
    assert t.min_ms <= t.q1_ms <= t.median_ms <= t.q3_ms <= t.max_ms
    assert t.min_ms >= 2.0  # the timer cannot report less than the busy-wait
    assert t.median_ms == pytest.approx(float(np.median(t.samples_ms)))
    assert t.q1_ms == pytest.approx(float(np.percentile(t.samples_ms, 25)))
    assert t.q3_ms == pytest.approx(float(np.percentile(t.samples_ms, 75)))
    assert t.iqr_ms == pytest.approx(t.q3_ms - t.q1_ms)
    assert t.threads == torch.get_num_threads() and t.device == "cpu" and not t.cold_cache


def test_measure_min_time_adds_samples_and_max_time_stops_them():
    t = harness.measure(busy(0.2), warmup=0, repeats=2, min_time_s=0.03, device="cpu")
    assert sum(t.samples_ms) >= 30.0 and t.n > 2
    t = harness.measure(busy(5.0), warmup=0, repeats=100, min_time_s=0.0, max_time_s=0.02, device="cpu")
    assert harness.MIN_SAMPLES <= t.n < 100
    t = harness.measure(noop, warmup=0, repeats=1, min_time_s=10.0, device="cpu")
    assert t.n == harness.MAX_SAMPLES  # the sample cap ends a long min_time on a trivial function


def test_measure_warmup_respects_the_time_budget():
    calls = []
    slow = busy(5.0)
    t = harness.measure(lambda: (calls.append(1), slow()), warmup=50, repeats=3, min_time_s=0.0, max_time_s=0.02,
                        device="cpu")
    # Warm-up stops after ~10 ms (2-3 calls), then the estimating call, then the 3+ samples.
    assert t.n >= 3 and len(calls) <= 3 + 1 + t.n


def test_measure_side_by_side_keeps_each_function_apart():
    fast, slow = harness.measure_side_by_side([busy(0.5), busy(3.0)], warmup=1, repeats=4, min_time_s=0.0,
                                              device="cpu")
    assert fast.n >= 4 and slow.n >= 4
    assert 0.5 <= fast.min_ms and 3.0 <= slow.min_ms
    assert fast.median_ms < slow.median_ms


def test_measure_cold_cache_flushes_before_every_timed_call(monkeypatch):
    flushes = []
    real = harness._make_flush

    def counting(device, nbytes):
        flush = real(device, nbytes)
        return lambda: (flushes.append(nbytes), flush())

    monkeypatch.setattr(harness, "_make_flush", counting)
    t = harness.measure(noop, warmup=2, repeats=6, min_time_s=0.0, cold_cache=True, flush_bytes=1 << 20, device="cpu")
    assert t.cold_cache and t.flush_bytes == 1 << 20
    assert len(flushes) == t.n + 1  # every sample plus the estimating call
    assert set(flushes) == {1 << 20}


def test_flush_size_defaults_and_override(monkeypatch):
    monkeypatch.delenv(harness.FLUSH_ENV, raising=False)
    assert harness.default_flush_bytes("cpu") >= 256 << 20
    assert harness.default_flush_bytes("cpu") >= 4 * harness._llc_bytes()
    monkeypatch.setenv(harness.FLUSH_ENV, "3")
    assert harness.default_flush_bytes("cpu") == 3 << 20


@pytest.mark.parametrize("kwargs", [dict(repeats=0), dict(warmup=-1), dict(min_time_s=-1.0)])
def test_measure_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="measure: need repeats >= 1"):
        harness.measure(noop, **{"warmup": 1, "repeats": 1, "min_time_s": 0.0, **kwargs})


# -------------------------------------------------------------------------------------- suites and rows

def test_suite_registry():
    assert suites.ops_with_rows("nm-pack") == ("nm_compress", "nm_decompress")
    assert suites.ops_with_rows("no-such-suite") == ()
    assert "nm-pack" in [s.name for s in suites.applicable("cpu")]
    with pytest.raises(ValueError, match=r"ops \['nm_compress'\] registered twice"):
        suite("nm-pack", ops=("nm_compress",))(lambda ctx: [])
    # Two modules may add rows for different ops to one suite (cpu-linear: bsr_* and nm_*).
    assert set(suites.ops_with_rows("cpu-linear")) >= {"bsr_pack", "bsr_linear", "nm_pack", "nm_linear"}
    with pytest.raises(KeyError, match="unknown bench suite 'nope'"):
        suites.get("nope")


def test_nm_pack_cases_are_unique_and_lazy():
    ctx = SuiteContext(torch.device("cpu"), "full")
    cases = runner.select_cases(suites.get("nm-pack"), ctx, None)
    # CPU full: 2 shapes x 2 patterns x 3 dtypes x 3 rows (compress, prune=True, decompress); no tensor is
    # built until setup() runs.
    assert len(cases) == 36 and len({c.name for c in cases}) == 36
    assert {c.op for c in cases} == {"nm_compress", "nm_decompress"}
    assert {(c.params["rows"], c.params["cols"]) for c in cases} == {(4096, 4096), (11008, 4096)}
    picked = runner.select_cases(suites.get("nm-pack"), ctx, r"decompress 4:8 bf16")
    assert [c.name for c in picked] == ["nm_decompress 4:8 bf16 4096x4096", "nm_decompress 4:8 bf16 11008x4096"]


def _toy_suite_rows(check_ok=True):
    """Rows from a synthetic suite: ours is 'fast', baselines 'slow' and 'slower'."""
    def failing_check():
        raise AssertionError("values differ at [[0, 1]]")

    def cases(ctx):
        for sparsity in (0.5, 0.75):
            yield Case(f"toy s={sparsity}", "nm_compress", {"k": 8}, torch.float32, sparsity=sparsity, flops=2e6,
                       bytes=4e6, family="toy k=8",
                       setup=lambda: Prepared(busy(0.2), {"slow": busy(0.6), "slower": busy(1.2)},
                                              None if check_ok else failing_check, {"absent": "needs a GPU"}))

    toy = Suite("toy", cases, ("nm_compress",), ("cpu",), "toy", sparsity_axis=True)
    ctx = SuiteContext(torch.device("cpu"), "tiny")
    return runner.run([(toy, runner.select_cases(toy, ctx, None))], torch.device("cpu"),
                      runner.timing_for("tiny", repeats=3), progress=False)


def test_run_case_builds_rows_with_baselines_and_speedups():
    rows = _toy_suite_rows()
    assert [r.case for r in rows] == ["toy s=0.5", "toy s=0.75"]
    for r in rows:
        assert [b.name for b in r.baselines] == ["slow", "slower"]
        fastest = min(r.baselines, key=lambda b: b.median_ms)
        assert r.best_baseline == fastest.name and r.best_baseline_ms == fastest.median_ms
        assert r.speedup == pytest.approx(fastest.median_ms / r.median_ms)
        for b in r.baselines:
            assert b.speedup == pytest.approx(b.median_ms / r.median_ms) and len(b.samples_ms) >= 3
        assert r.gflops_dense_eq == pytest.approx(2e6 / (r.median_ms / 1e3) / 1e9)
        assert r.gbps == pytest.approx(4e6 / (r.median_ms / 1e3) / 1e9)
        assert r.check == "none" and r.notes == ["absent skipped: needs a GPU"]
        assert r.dtype == "float32" and r.threads == torch.get_num_threads()


def test_failed_check_is_recorded():
    rows = _toy_suite_rows(check_ok=False)
    assert all(r.check == "failed: values differ at [[0, 1]]" for r in rows)
    table = report.results_table(rows)
    assert "check" in table.splitlines()[1] and "failed: values differ" in table


def test_table_is_aligned_and_has_units():
    rows = _toy_suite_rows()
    table = report.results_table(rows)
    lines = table.splitlines()
    body = lines[1:5]  # header, rule, 2 rows
    assert len({len(line) for line in body}) == 1
    for header in ("median [ms]", "IQR [%]", "GB/s", "GFLOP/s dense-eq", "slow [ms]", "slower [ms]", "speedup [x]"):
        assert header in lines[1]
    assert "note: absent skipped: needs a GPU" in table
    assert report.fmt(0.012345) == "0.01235" and report.fmt(1234.5) == "1234" and report.fmt(None) == "-"


# ------------------------------------------------------------------------------ files, compare and plot

def test_json_and_csv_round_trip(tmp_path):
    rows = _toy_suite_rows()
    meta = results.collect_metadata(["toy", "--tiny"], torch.device("cpu"))
    results.write_json(tmp_path / "r.json", meta, rows)
    meta2, rows2 = results.read_json(tmp_path / "r.json")
    assert rows2 == rows and meta2 == meta
    assert meta["command"] == "python -m sparseflow.bench toy --tiny"
    assert meta["threads"] == torch.get_num_threads() and meta["cpu_model"] and meta["build_info"]["version"]
    results.write_csv(tmp_path / "r.csv", rows)
    with open(tmp_path / "r.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["case"] for line in lines] == ["toy s=0.5", "toy s=0.75"]
    assert float(lines[0]["median_ms"]) == rows[0].median_ms
    assert float(lines[1]["speedup_vs_slower"]) == rows[1].baselines[1].speedup
    assert lines[0]["params"] == "k=8" and int(lines[0]["n_samples"]) == len(rows[0].samples_ms)
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a sparseflow bench result"):
        results.read_json(tmp_path / "bad.json")


def test_compare_flags_regressions(tmp_path):
    old = _toy_suite_rows()
    results.write_json(tmp_path / "old.json", {}, old)
    new = results.read_json(tmp_path / "old.json")[1]
    new[0].median_ms = old[0].median_ms * 1.5  # slower: a regression
    new[1].median_ms = old[1].median_ms * 1.05  # inside the tolerance
    new[1].case = "toy renamed"
    out = results.compare(old, new, tolerance=0.1)
    by_case = {c.key[1]: c for c in out}
    assert by_case["toy s=0.5"].status == "regression" and by_case["toy s=0.5"].ratio == pytest.approx(1.5)
    assert by_case["toy renamed"].status == "new" and by_case["toy s=0.75"].status == "gone"
    new[1].case = "toy s=0.75"
    assert results.compare(old, new)[1].status == "same"
    new[1].median_ms = old[1].median_ms / 2
    assert results.compare(old, new)[1].status == "faster"
    text = report.compare_table(results.compare(old, new), 0.1)
    assert "REGRESSION" in text and "1 regression(s)" in text
    text = report.compare_table(results.compare(old, new[:1]), 0.1)
    assert "1 row(s) of the old run were not run this time" in text and "toy s=0.75" not in text


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_lines_and_bars(tmp_path):
    rows = _toy_suite_rows()
    report.plot(rows, tmp_path / "lines.png", {"toy": True})
    report.plot(rows, tmp_path / "bars.png", {"toy": False})
    assert _is_png(tmp_path / "lines.png") and _is_png(tmp_path / "bars.png")


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_runs_nm_pack_end_to_end(tmp_path, capsys):
    paths = {ext: str(tmp_path / f"out.{ext}") for ext in ("json", "csv", "png")}
    argv = ["nm-pack", "--tiny", "--device", "cpu", "--no-progress", "--filter", "2:4",
            "--json", paths["json"], "--csv", paths["csv"], "--plot", paths["png"]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "== nm-pack / nm_compress on cpu" in out and "nm_decompress 2:4 fp32 16x64" in out
    meta, rows = results.read_json(paths["json"])
    assert len(rows) == 9 and all(r.check == "ok" for r in rows)
    compress = [r for r in rows if r.op == "nm_compress"]
    assert {b.name for r in compress if "prune" not in r.case for b in r.baselines} == {"reference", "masked_select"}
    assert {b.name for r in compress if "prune=True" in r.case for b in r.baselines} == {"topk_gather", "sort_mask"}
    assert {b.name for r in rows if r.op == "nm_decompress" for b in r.baselines} == {"reference", "scatter"}
    assert meta["command"].startswith("python -m sparseflow.bench nm-pack --tiny")
    assert meta["suites"] == ["nm-pack"] and meta["size"] == "tiny"
    with open(paths["csv"], newline="") as f:
        assert len(list(csv.DictReader(f))) == 9
    assert _is_png(paths["png"])

    # --compare against a run that was 100x faster: every row is a regression.
    doc = json.loads(open(paths["json"]).read())
    for row in doc["rows"]:
        row["median_ms"] /= 100
    with open(tmp_path / "old.json", "w") as f:
        json.dump(doc, f)
    assert main(["nm-pack", "--tiny", "--no-progress", "--filter", "nm_compress 2:4 fp32",
                 "--compare", str(tmp_path / "old.json")]) == 0
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "1 regression(s)" in out


def test_cli_errors():
    with pytest.raises(SystemExit) as e:
        main(["nm-pack", "--tiny", "--filter", "no such case"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["no-such-suite", "--tiny"])


def test_cli_failed_check_exits_nonzero(monkeypatch, capsys):
    def cases(ctx):
        def check():
            raise AssertionError("wrong")

        yield Case("bad", "nm_compress", {}, torch.float32, setup=lambda: Prepared(noop, {"base": noop}, check))

    monkeypatch.setitem(SUITES, "bad-suite", Suite("bad-suite", cases, ("nm_compress",), ("cpu",), "", False))
    assert main(["bad-suite", "--tiny", "--device", "cpu", "--no-progress"]) == 1
    assert "WRONG RESULTS in 1 case(s): bad" in capsys.readouterr().err


def test_module_lists_suites():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PYTHON_DIR, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "sparseflow.bench", "--list"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nm-pack" in done.stdout and "nm_compress,nm_decompress" in done.stdout
