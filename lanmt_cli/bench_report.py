"""The report of a `lanmt bench` run: the table (terminal or Markdown) with its notes, the
JSON figures, the translations every figure was computed on, and a plot."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lanmt_cli.errors import LanmtError

if TYPE_CHECKING:
    from lanmt_cli.bench import Report
    from lanmt_cli.bench_data import TestSet


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def columns(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the results table (the paper's shape, plus what it left out)."""
    evaluated = any(r.quality for r in report.rows)
    timed = any(r.latency for r in report.rows)
    header = ["decoding"]
    if evaluated:
        header += ["BLEU", "BLEU intl lc", "chrF", "repeats"]
    if timed:
        header += ["ms / sentence", "median", "p90", "speed-up"]
    header += ["sentences/s", "tokens/s", "speed-up (batched)", "runtime"]
    cells = []
    for r in report.rows:
        row = [r.label + (" (baseline)" if r.baseline else "")]
        if evaluated:
            q = r.quality
            row += (
                [f"{q.bleu:.2f}", f"{q.bleu_intl_lc:.2f}", f"{q.chrf:.2f}"]
                + [f"{100 * q.word_repeat_rate:.2f}%"]
                if q
                else ["-"] * 4
            )
        if timed:
            lat = r.latency
            row += (
                [f"{_ms(lat.mean_ms)} ± {_ms(lat.std_ms)}", _ms(lat.median_ms), _ms(lat.p90_ms)]
                + [_x(lat.speedup)]
                if lat
                else ["-"] * 4
            )
        t = r.throughput
        row += [f"{t.sentences_per_s:.1f}", f"{t.tokens_per_s:.0f}", _x(t.speedup)]
        row += [r.options.get("runtime", "?")]
        cells.append(row)
    return header, cells


def notes(report: Report) -> list[str]:
    """What the figures mean and where they come from, one statement a line."""
    from lanmt_cli.devices import SMALL_BATCH_TOKENS

    env, ts, st = report.environment, report.test_set, report.settings
    name = ts.get("name") or Path(ts["src"]).name
    if ts.get("langpair"):
        name += f" {ts['langpair']}"
    lines = [
        f"{ts['sentences']} of {ts['sentences_total']} sentences of {name}; "
        f"model {Path(report.model['path']).name} ({report.model['kind']})."
    ]
    if ts["latency_sentences"]:
        lines.append(
            f"ms / sentence: mean ± std over {ts['latency_sentences']} sentences decoded one "
            f"at a time (batch size 1; under {SMALL_BATCH_TOKENS} tokens on one thread, in both "
            f"engines) after a warm-up of up to {st['warmup']} sentences per decoder; model "
            "loading and tokenization excluded."
        )
    runs = f"median of {st['repeats']} runs" if st["repeats"] > 1 else "one run"
    lines.append(
        f"Batched: the whole set, text in, text out, {st['batch_tokens']} source tokens "
        f"per batch, {runs}; tokens/s counts target SentencePiece tokens."
    )
    if st["repeats"] < 3 and min(r.throughput.seconds for r in report.rows) < 1.0:
        lines.append(
            "Warning: some batched runs took under a second; times that short are noisy: "
            "use --repeats 5 (or more sentences) before quoting batched speed-ups."
        )
    lines.append(
        f"Device: {env['device']} ({env['device_name']}), threads: {env['threads']} "
        f"(torch and CTranslate2), torch {env['torch']}, CTranslate2 "
        f"{env.get('ctranslate2')}, {report.date}. runtime: the engine and compute type."
    )
    lines.append(
        f"Speed-up: time of {report.baseline.label} / time of the decoder, both measured "
        "in this one run on this machine; absolute times hold for this device only."
    )
    engines = {
        part.split()[0] for r in report.rows for part in r.options.get("runtime", "").split(" + ")
    }
    if env["device"] == "cpu" and {"torch", "ctranslate2"} <= engines:
        lines.append(
            "PyTorch and CTranslate2 ran in one process, where they share one OpenMP runtime "
            "and slow each other on the CPU; benchmarks/bench_separate.py measures each alone."
        )
    q = report.rows[0].quality
    if q:
        lines.append(
            f"BLEU: sacreBLEU {q.bleu_signature}; BLEU intl lc (the paper's variant): "
            f"{q.bleu_intl_lc_signature}; chrF: {q.chrf_signature}; repeats: the share of "
            "output words equal to the word before them, case-folded (doubled words)."
        )
    return lines


def markdown(report: Report) -> str:
    """The table and its notes as Markdown, for a README."""
    header, cells = columns(report)
    right = [":---"] + ["---:"] * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(right) + "|",
        *("| " + " | ".join(row) + " |" for row in cells),
        "",
        *notes(report),
    ]
    return "\n".join(lines) + "\n"


def rich_table(report: Report):
    """The table for the terminal (a rich Table with the notes as its caption)."""
    from rich.table import Table

    header, cells = columns(report)
    table = Table(title="lanmt bench", caption="\n".join(notes(report)), caption_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i > 0)
    for row in cells:
        table.add_row(*row)
    return table


def write_json(report: Report, path: Path) -> None:
    from lanmt_cli.textio import atomic_file

    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", label).strip(".") or "decoder"


def write_translations(report: Report, test_set: TestSet, directory: Path) -> None:
    """DIR/src.txt, DIR/ref.txt (ref.2.txt, ... for more references) and DIR/LABEL.txt for
    each decoder: the exact lines every figure was computed on. Sets `translations_file`.

    All or nothing: the files are written into a temporary folder first, which becomes DIR,
    or (where DIR exists) whose files are then moved into it; other files of DIR stay.
    """
    from lanmt_cli.textio import atomic_dir

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise LanmtError(f"--output-dir {directory}: exists and is not a directory")
    files: dict[str, list[str]] = {"src.txt": test_set.sources}
    for i, ref in enumerate(test_set.references, start=1):
        files["ref.txt" if i == 1 else f"ref.{i}.txt"] = ref
    for row in report.rows:
        name, n = _file_name(row.label), 1
        while f"{name}.txt" in files:  # two labels with one file name, or "src"/"ref"
            n += 1
            name = f"{_file_name(row.label)}.{n}"
        files[f"{name}.txt"] = row.translations
        row.translations_file = str(directory / f"{name}.txt")
    if not directory.is_dir():
        with atomic_dir(directory) as tmp:
            _write_files(tmp, files)
        return
    tmp = Path(tempfile.mkdtemp(prefix=".lanmt-bench.tmp-", dir=directory))
    try:
        _write_files(tmp, files)
        for name in files:  # renames take no room: once written, every file gets in place
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_files(folder: Path, files: dict[str, list[str]]) -> None:
    for name, lines in files.items():
        (folder / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def plot(report: Report, path: Path) -> None:
    """BLEU against mean latency (log scale), one point per decoder, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lanmt_cli.textio import atomic_file

    rows = [r for r in report.rows if r.latency and r.quality]
    if not rows:
        raise LanmtError("--plot needs BLEU (--evaluate) and latency (--latency-sentences > 0)")
    env = report.environment
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        lat = r.latency
        low = min(lat.std_ms, lat.mean_ms - lat.min_ms)  # the log axis ends above zero
        ax.errorbar(
            lat.mean_ms, r.quality.bleu, xerr=[[low], [lat.std_ms]], capsize=3,
            fmt="s" if r.baseline else "o",
        )  # fmt: skip
        ax.annotate(
            f"{r.label} ({_x(lat.speedup)})",
            (lat.mean_ms, r.quality.bleu),
            textcoords="offset points",
            xytext=(6, 6 if i % 2 == 0 else -14),  # neighbours with equal BLEU stay legible
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel(
        f"ms / sentence, batch size 1: mean, bars ± std, cut at the fastest ({env['device_name']})"
    )
    ax.set_ylabel("BLEU (sacreBLEU 13a, cased)")
    ts = report.test_set
    ax.set_title(f"quality and speed: {ts['sentences']} sentences, torch threads: {env['threads']}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    kind = path.suffix.lstrip(".").lower() or "png"
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=kind, dpi=150)
    except ValueError as err:  # an unknown image format
        raise LanmtError(f"--plot {path}: {err}") from None
    finally:
        plt.close(fig)
