"""`lanmt bench` on the tiny model: every decoder gets a row, the BLEU it prints is sacreBLEU's
on the files it wrote, the speed figures hang together and the JSON holds what the README says."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sacrebleu.metrics import BLEU, CHRF
from typer.testing import CliRunner

from lanmt_cli.app import app
from lanmt_cli.bench import latency_stats, speedup_interval
from lanmt_cli.registry import parse_spec
from lanmt_cli.runtime import auto_compute_type

ROOT = Path(__file__).resolve().parent.parent
DECODERS = ["one-shot", "refine1", "latent-search:samples=4", "teacher-rescore:samples=4"]
N = 12  # sentences used (of the 50 of tiny_task)
LATENCY = 3  # of which timed one at a time
REPEATS = 3  # batched runs: an odd number, so that the median is one of them


def lanmt(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def files(tiny_task, tmp_path_factory):
    """The tiny task's sources (plain) and references (gzip)."""
    d = tmp_path_factory.mktemp("bench-data")
    (d / "test.en").write_text("".join(f"{s}\n" for s, _ in tiny_task))
    with gzip.open(d / "test.de.gz", "wt") as f:
        f.write("".join(f"{r}\n" for _, r in tiny_task))
    return d / "test.en", d / "test.de.gz"


@pytest.fixture(scope="module")
def run(tiny_bundle, files, tmp_path_factory):
    """One evaluated run of every default kind of decoder; (stdout, JSON report, out dir)."""
    out = tmp_path_factory.mktemp("bench-out")
    src, ref = files
    decoders = [arg for d in DECODERS for arg in ("-d", d)]
    result = lanmt(
        "bench", "-m", tiny_bundle, "--src", src, "--ref", ref, "--evaluate",
        "--max-sentences", N, "--latency-sentences", LATENCY, "--warmup", 1,
        "--repeats", REPEATS, "--device", "cpu", *decoders,
        "--json", out / "bench.json", "--output-dir", out / "translations", "--markdown",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.stdout, json.loads((out / "bench.json").read_text()), out / "translations"


def table_row(stdout: str, label: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in (label, f"{label} (baseline)"):
            return cells
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def test_every_decoder_gets_a_row(run):
    stdout, report, _ = run
    rows = report["decoders"]
    assert [r["label"] for r in rows] == ["beam", *DECODERS]  # the baseline first
    assert [r["baseline"] for r in rows] == [True] + [False] * len(DECODERS)
    beam = rows[0]
    assert beam["decoder"] == "beam" and beam["options"]["beam"] == 3
    assert beam["model_kind"] == "transformer"  # the teacher's beam search
    assert rows[3]["options"]["samples"] == 4  # options from the spec reached the decoder
    # every row says what it ran on: beam on CTranslate2, the NAT model and scoring on ONNX Runtime
    assert (beam["options"]["runtime"], beam["options"]["compute_type"]) == (
        "ctranslate2 float32",
        "float32",
    )
    auto = auto_compute_type()  # int8 on a CPU with AVX2 or AVX-512, else float32
    assert rows[-1]["options"]["runtime"] == f"onnx {auto} + onnx {auto}"  # rescore: both ORT
    for r in rows[1:-1]:
        assert r["options"]["compute_type"] == auto  # compute_type=auto, resolved
        assert r["options"]["compute_type_requested"] == "auto"
        assert r["options"]["runtime"] == f"onnx {auto}"
    assert table_row(stdout, "beam")[-1] == "ctranslate2 float32"
    header = table_row(stdout, "decoding")
    assert header[:5] == ["decoding", "BLEU", "BLEU intl lc", "chrF", "repeats"]
    for r in rows:
        assert len(table_row(stdout, r["label"])) == len(header)
    assert f"{N} of 50 sentences" in stdout and f"over {LATENCY} sentences" in stdout
    assert "measured in this one run on this machine" in stdout
    # only where PyTorch decoded beside CTranslate2 does the table warn of their shared OpenMP
    assert "share one OpenMP runtime" not in stdout


def test_printed_bleu_is_sacrebleu_on_the_written_translations(run, tiny_task):
    stdout, report, out = run
    lines = lambda path: Path(path).read_text(encoding="utf-8").split("\n")[:-1]  # noqa: E731
    assert lines(out / "src.txt") == [s for s, _ in tiny_task[:N]]
    refs = lines(out / "ref.txt")
    assert refs == [r for _, r in tiny_task[:N]]
    some_right = False
    for row in report["decoders"]:
        hyps = lines(row["translations_file"])
        assert len(hyps) == N
        bleu, paper_bleu, chrf = BLEU(), BLEU(tokenize="intl", lowercase=True), CHRF()
        q = row["quality"]
        assert q["bleu"] == bleu.corpus_score(hyps, [refs]).score
        assert q["bleu_intl_lc"] == paper_bleu.corpus_score(hyps, [refs]).score
        assert q["chrf"] == chrf.corpus_score(hyps, [refs]).score
        assert q["bleu_signature"] == str(bleu.get_signature())
        assert "tok:13a" in q["bleu_signature"] and "case:mixed" in q["bleu_signature"]
        assert (
            "tok:intl" in q["bleu_intl_lc_signature"] and "case:lc" in q["bleu_intl_lc_signature"]
        )
        cells = table_row(stdout, row["label"])
        assert cells[1:4] == [f"{q['bleu']:.2f}", f"{q['bleu_intl_lc']:.2f}", f"{q['chrf']:.2f}"]
        # doubled words of the written translations, counted here
        words = [h.casefold().split() for h in hyps]
        doubled = sum(a == b for w in words for a, b in zip(w, w[1:], strict=False))
        assert q["word_repeat_rate"] == doubled / sum(map(len, words))
        assert cells[4] == f"{100 * q['word_repeat_rate']:.2f}%"
        some_right |= q["bleu"] > 20  # the tiny models learned their task
    assert some_right
    assert report["decoders"][0]["quality"]["bleu_signature"] in stdout


def test_bench_translates_what_translate_does(run, tiny_bundle, tiny_task):
    from lanmt_cli.translator import Translator

    _, report, _ = run
    row = next(r for r in report["decoders"] if r["label"] == "refine1")
    expected = Translator(tiny_bundle, "refine1").translate([s for s, _ in tiny_task[:N]])
    got = Path(row["translations_file"]).read_text().split("\n")[:-1]
    assert got == [r.translation for r in expected]


def test_speed_figures_hang_together(run, tiny_bundle):
    _, report, out = run
    rows = report["decoders"]
    base = rows[0]
    assert base["latency"]["speedup"] == 1.0 and base["throughput"]["speedup"] == 1.0
    for row in rows:
        lat, thr = row["latency"], row["throughput"]
        assert lat["sentences"] == LATENCY and thr["sentences"] == N
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["max_ms"]
        assert lat["min_ms"] <= lat["mean_ms"] <= lat["max_ms"] and lat["std_ms"] >= 0
        assert lat["total_s"] * 1000 == pytest.approx(lat["mean_ms"] * LATENCY)
        assert lat["speedup"] == pytest.approx(base["latency"]["mean_ms"] / lat["mean_ms"])
        low, high = lat["speedup_ci95"]
        assert 0 < low <= high
        assert thr["speedup"] == pytest.approx(base["throughput"]["seconds"] / thr["seconds"])
        assert len(thr["runs_s"]) == REPEATS
        assert thr["seconds"] == sorted(thr["runs_s"])[REPEATS // 2]  # the median run
        assert thr["sentences_per_s"] == pytest.approx(N / thr["seconds"])
        assert thr["tokens_per_s"] == pytest.approx(thr["target_tokens"] / thr["seconds"])
        assert thr["target_tokens"] > N
        assert thr["peak_memory_mb"] is None  # CPU
    ts, env = report["test_set"], report["environment"]
    assert (ts["sentences"], ts["sentences_total"], ts["latency_sentences"]) == (N, 50, LATENCY)
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
    assert env["torch"] == torch.__version__
    assert report["model"]["path"] == str(Path(tiny_bundle).resolve())
    assert report["model"]["teacher"] == str(Path(tiny_bundle, "teacher").resolve())


def _flatten(value, prefix: str = "") -> set[str]:
    """Dotted paths of a JSON value's fields; lists of objects as `name[]`."""
    open_ended = {"decoders[].options", "model.languages"}  # keys vary with decoder / model
    if isinstance(value, dict) and prefix not in open_ended:
        paths: set[str] = set()
        for key, item in value.items():
            paths |= _flatten(item, f"{prefix}.{key}" if prefix else key)
        return paths
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return set().union(*(_flatten(v, f"{prefix}[]") for v in value))
    return {prefix}


def test_the_json_holds_exactly_the_fields_the_readme_documents(run):
    _, report, _ = run
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_.\[\]]+)` \|", readme, flags=re.M))
    assert len(documented) > 40
    assert _flatten(report) == documented


def test_without_references_it_measures_speed_only(tiny_bundle, files, tmp_path):
    src, _ = files
    common = ["bench", "-m", tiny_bundle, "--src", src, "--max-sentences", 6, "--warmup", 1]
    result = lanmt(*common, "-d", "one-shot", "--latency-sentences", 2, "--json", tmp_path / "j")
    assert result.exit_code == 0, result.output
    assert "one-shot" in result.stdout and "beam (baseline)" in result.stdout  # the rich table
    assert "BLEU" not in result.stdout and "ms / sentence" in result.stdout
    report = json.loads((tmp_path / "j").read_text())
    assert [r["quality"] for r in report["decoders"]] == [None, None]
    # no latency run at all: batched figures only
    result = lanmt(*common, "-d", "refine2", "--latency-sentences", 0, "--markdown")
    assert result.exit_code == 0, result.output
    assert "ms / sentence" not in result.stdout and "speed-up (batched)" in result.stdout
    assert len(table_row(result.stdout, "refine2")) == 5  # 3 batched figures, the runtime


def test_spec_and_statistics_helpers():
    assert parse_spec("refine1") == ("refine1", {})
    assert parse_spec("latent-search:samples=20, noise=0.3") == (
        "latent-search",
        {"samples": "20", "noise": "0.3"},
    )
    stats = latency_stats([0.001, 0.002, 0.003, 0.004])
    assert (stats.mean_ms, stats.median_ms, stats.min_ms, stats.max_ms) == pytest.approx(
        (2.5, 2.5, 1.0, 4.0)
    )
    assert stats.p90_ms == pytest.approx(3.7) and stats.std_ms == pytest.approx(1.118034)
    assert speedup_interval([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]) == [2.0, 2.0]


@pytest.fixture
def short_ref(tmp_path) -> Path:
    path = tmp_path / "short.de"
    path.write_text("eins\nzwei\n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the test set"),
        (["--src", "{src}", "--evaluate"], "--evaluate needs references"),
        (["--src", "{src}", "--ref", "{short}"], "has 50 lines but"),
        (["--src", "{missing}"], "no such file"),
        (["--src", "{src}", "-d", "refine1:steps=x"], "takes int"),
        (["--src", "{src}", "-d", "refin1"], "did you mean refine"),
        (["--src", "{src}", "-d", "latent-search:"], "no options after ':'"),
        (["--src", "{src}", "-d", "one-shot", "-d", "one-shot"], "listed twice"),
        (["--src", "{src}", "--ref", "{ref}", "--plot", "{png}"], "needs --evaluate"),
        (["--test-set", "wmt99", "--langpair", "en-de"], "unknown sacreBLEU test set 'wmt99'"),
        (["--test-set", "wmt14", "--langpair", "xx-yy"], "no language pair 'xx-yy'"),
        (["--test-set", "wmt14"], "--test-set takes --langpair"),
    ],
)
def test_mistakes_get_one_clear_line(tiny_bundle, files, short_ref, tmp_path, args, message):
    names = {
        "src": files[0], "ref": files[1], "short": short_ref,
        "missing": tmp_path / "nothing.en", "png": tmp_path / "p.png",
    }  # fmt: skip
    args = [str(a).format(**names) for a in args]
    result = lanmt("bench", "-m", tiny_bundle, "--max-sentences", 2, "--warmup", 0, *args)
    assert result.exit_code == 1, result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr
    assert result.stderr.count("error") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


def _cli(args: list, env: dict, offline: bool = False) -> subprocess.CompletedProcess:
    """`lanmt ...` in a fresh interpreter (sacreBLEU reads $SACREBLEU when imported)."""
    code = "import sys; from lanmt_cli.app import main; sys.argv = ['lanmt', *sys.argv[1:]]; main()"
    if offline:  # what a machine without network sees
        code = (
            "import urllib.error, urllib.request\n"
            "def refuse(*a, **k): raise urllib.error.URLError('no network')\n"
            "urllib.request.urlopen = refuse\n" + code
        )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_sacrebleu_test_sets_from_the_cache_or_a_clear_error(tiny_bundle, tiny_task, tmp_path):
    from sacrebleu.dataset import DATASETS

    cache = tmp_path / "sacrebleu"
    (cache / "wmt14").mkdir(parents=True)
    # sacreBLEU's own layout of a processed test set: DIR/wmt14/wmt14.en-de.<field>
    fields = {"src": [s for s, _ in tiny_task], "ref": [r for _, r in tiny_task]}
    for name in DATASETS["wmt14"].fieldnames("en-de"):
        lines = fields.get(name, ["x"] * len(tiny_task))
        (cache / "wmt14" / f"wmt14.en-de.{name}").write_text("".join(f"{t}\n" for t in lines))
    args = [
        "bench", "-m", tiny_bundle, "--test-set", "wmt14", "--langpair", "en-de", "--evaluate",
        "-d", "one-shot", "--max-sentences", 5, "--latency-sentences", 0, "--warmup", 1,
        "--threads", 1, "--json", tmp_path / "j.json", "--markdown",
    ]  # fmt: skip
    done = _cli(args, {"SACREBLEU": str(cache)}, offline=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "j.json").read_text())
    assert report["test_set"]["name"] == "wmt14" and report["test_set"]["langpair"] == "en-de"
    assert report["test_set"]["sentences"] == 5 and report["environment"]["threads"] == 1
    assert "5 of 50 sentences of wmt14 en-de" in done.stdout

    done = _cli(args, {"SACREBLEU": str(tmp_path / "empty")}, offline=True)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "error: cannot download sacreBLEU test set wmt14 en-de (no network?): use --src/--ref"
    )
    assert done.stderr.count("\n") == 1, done.stderr


def test_plot_draws_bleu_against_latency(tiny_bundle, files, tmp_path):
    src, ref = files
    result = lanmt(
        "bench", "-m", tiny_bundle, "--src", src, "--ref", ref, "--evaluate", "-d", "one-shot",
        "--max-sentences", 4, "--warmup", 0, "--plot", tmp_path / "speed.png", "--markdown",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_decoders_measure_greedy_beside_the_baseline(tiny_bundle):
    from lanmt_cli.bench import default_decoders
    from lanmt_cli.bundle import load_bundle
    from lanmt_cli.commands.bench import DEFAULTS

    defaults = default_decoders(load_bundle(tiny_bundle))
    assert defaults[:2] == ["beam", "beam1"]
    assert default_decoders(load_bundle(tiny_bundle / "teacher")) == ["beam", "beam1"]
    # what --help and benchmarks/README.md say the default list is
    assert re.sub(r" \([^)]*\)", "", DEFAULTS).split(", ") == defaults
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    listed = re.search(r"`-d/--decoder` \(repeatable; default (.*?)\)", readme, flags=re.S)
    assert re.findall(r"`([^`]+)`", listed[1]) == defaults
