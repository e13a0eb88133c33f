"""The benchmark scripts run end to end on the tiny model, on a small test set made from the
fixture data. Their figures are not checked (speed is measured by running them on a quiet
machine, not asserted); that they run, and report every row asked for, is."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lanmt_cli.runtime import auto_compute_type

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "multi30k"

pytestmark = pytest.mark.slow  # each starts processes that load models (about 15 s)


@pytest.fixture
def test_set(tmp_path) -> Path:
    """A folder with test_2016_flickr.{en,de}.gz: 12 lines of the fixture's val set."""
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for lang in ("en", "de"):
        with gzip.open(DATA / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()[:12]
        with gzip.open(folder / f"test_2016_flickr.{lang}.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_bench_serve_reports_served_and_offline_figures(tiny_bundle, test_set, tmp_path):
    out = tmp_path / "serve.json"
    done = run_script(
        "bench_serve.py", "--model", str(tiny_bundle), "--data", str(test_set),
        "--sentences", "12", "--latency", "3", "--threads", "1", "-d", "one-shot",
        "--clients", "1", "4", "--requests", "3", "--repeats", "1", "--json", str(out),
    )  # fmt: skip
    (result,) = json.loads(out.read_text())["results"]
    runtime = f"onnx {auto_compute_type()}"  # compute_type=auto on this CPU
    assert result["decoder"] == "one-shot" and result["runtime"] == runtime
    assert result["offline_sentences_per_s"] > 0 and result["batch1_p50_ms"] > 0
    runs = result["runs"]
    assert [(r["clients"], r["sentences"], r["failures"]) for r in runs] == [(1, 3, 0), (4, 12, 0)]
    assert f"| one-shot | {runtime} | 4 |" in done.stdout


def test_bench_separate_runs_each_system_in_its_own_process(tiny_bundle, test_set):
    done = run_script(
        "bench_separate.py", "--model", str(tiny_bundle), "--data", str(test_set),
        "--sentences", "12", "--latency", "3", "--threads", "2", "--rounds", "2",
        "--only", "one-shot (default", "greedy, int8",
    )  # fmt: skip
    rows = [line for line in done.stdout.splitlines() if line.startswith("| CTranslate2 ")
            or line.startswith("| lanmt ")]  # fmt: skip
    assert [row.split(" | ")[0] for row in rows] == [
        "| CTranslate2 greedy, int8",
        "| lanmt one-shot (default: compute_type=auto)",
    ]
    assert rows[1].endswith("| 1 x 2 threads, 4096 tokens | no |")  # no CTranslate2 there
    # two rounds: medians with their ranges, and one BLEU (the same outputs each round)
    for row in rows:
        cells = row.split(" | ")
        assert re.fullmatch(r"\d+\.\d\d", cells[1])
        assert re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+\)", cells[2])
        assert re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+\)", cells[4])
    # CTranslate2 batched: its fastest of one batch on 2 threads and 2 batches on 1 each
    tried = [line for line in done.stdout.splitlines() if line.startswith("CTranslate2 ")]
    assert [line.split(", batched")[0] for line in tried] == [
        "CTranslate2 greedy, int8, round 1",
        "CTranslate2 greedy, int8, round 2",
    ]
    for setting in ["1 x 2 threads, 4096", "2 x 1 threads, 4096", "2 x 1 threads, 1024"]:
        assert setting in tried[0]
    assert all(s in " ".join(tried) for s in rows[0].split(" | ")[5].split("; "))
