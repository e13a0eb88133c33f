"""`lanmt bench`: latency, throughput, speed-up and (with --evaluate) BLEU of several decoders.

The paper's results table, for any model on any test set, from one command anyone can rerun.
The measuring is in `lanmt_cli.bench`; this module reads the options, loads the test set and
the model once, and writes the table, JSON, Markdown, plot and translation files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from lanmt_cli.commands.options import (
    BatchTokensOption,
    Device,
    DeviceOption,
    ModelOption,
    SeedOption,
    TeacherOption,
    ThreadsOption,
)
from lanmt_cli.errors import LanmtError

DEFAULTS = (
    "beam (the baseline: beam 3 on CTranslate2), beam1 (greedy), one-shot, refine1, "
    "latent-search, teacher-rescore"
)


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _check_outputs(json_file: Path | None, plot: Path | None, output_dir: Path | None) -> None:
    """Every output can be written: checked before any model is loaded, so that a long
    benchmark never ends in a write error with its results lost."""
    from lanmt_cli.textio import check_writable

    for path, option in ((json_file, "--json"), (plot, "--plot")):
        if path is not None:
            check_writable(path, option)
    if output_dir is not None:
        check_writable(output_dir, "--output-dir", folder=True)


def _check_arguments(src, ref, test_set, langpair, evaluate, plot, latency_sentences) -> None:
    """Every mistake in the options, before anything slow happens."""
    if (src is None) == (test_set is None):
        raise LanmtError("give the test set: --src FILE [--ref FILE] or --test-set NAME --langpair")
    if test_set is not None and (ref or langpair is None):
        raise LanmtError(
            "--test-set takes --langpair (e.g. --test-set wmt14 --langpair en-de) and no --ref"
        )
    if src is not None and langpair is not None:
        raise LanmtError("--langpair goes with --test-set, not with --src")
    if evaluate and src is not None and not ref:
        raise LanmtError("--evaluate needs references: give --ref FILE")
    if plot is not None:
        if not evaluate:
            raise LanmtError("--plot draws BLEU against latency: it needs --evaluate")
        if latency_sentences == 0:
            raise LanmtError("--plot draws BLEU against latency: it needs --latency-sentences > 0")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise LanmtError('--plot needs matplotlib: pip install "lanmt[plot]"') from None


def bench(
    src: Annotated[
        Path | None,
        typer.Option("--src", metavar="FILE", help="Source sentences, one a line (plain or .gz)."),
    ] = None,
    ref: Annotated[
        list[Path] | None,
        typer.Option(
            "--ref", metavar="FILE", help="Reference translations, aligned with --src. Repeatable."
        ),
    ] = None,
    test_set: Annotated[
        str | None,
        typer.Option(
            "--test-set",
            metavar="NAME",
            help="A sacreBLEU test set (e.g. wmt14), from its cache (~/.sacrebleu or "
            "$SACREBLEU) or downloaded.",
        ),
    ] = None,
    langpair: Annotated[
        str | None,
        typer.Option(
            "--langpair", metavar="SRC-TGT", help="Language pair of --test-set, e.g. en-de."
        ),
    ] = None,
    model: ModelOption = None,
    decoder: Annotated[
        list[str] | None,
        typer.Option(
            "--decoder",
            "-d",
            metavar="NAME[:KEY=VALUE,...]",
            help=f"A decoder to measure, with options as in `lanmt translate --opt` "
            f"(e.g. latent-search:samples=20). Repeatable. Default: {DEFAULTS}.",
        ),
    ] = None,
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline",
            metavar="NAME[:KEY=VALUE,...]",
            help="The decoder every speed-up is relative to (always measured, first).",
        ),
    ] = "beam",
    teacher: TeacherOption = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="Score the translations: BLEU, BLEU intl lc, chrF.")
    ] = False,
    max_sentences: Annotated[
        int | None,
        typer.Option("--max-sentences", min=1, help="Use only the first N sentences of the set."),
    ] = None,
    latency_sentences: Annotated[
        int | None,
        typer.Option(
            "--latency-sentences",
            min=0,
            help="Time only the first N sentences one at a time (default: all used; 0: none).",
        ),
    ] = None,
    warmup: Annotated[
        int,
        typer.Option("--warmup", min=0, help="Untimed sentences per decoder before measuring."),
    ] = 10,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats", min=1, help="Batched runs of the whole set per decoder; the median counts."
        ),
    ] = 1,
    batch_tokens: BatchTokensOption = 4096,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = None,
    seed: SeedOption = 0,
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--json",
            metavar="FILE",
            help="Write every figure and the environment to this JSON file.",
        ),
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as Markdown (for a README).")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="FILE.png",
            help="Draw BLEU against latency to this image (needs matplotlib).",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            metavar="DIR",
            help="Write the sources, references and each decoder's translations here, "
            "one file each, so anyone can recompute BLEU.",
        ),
    ] = None,
) -> None:
    """Measure decoders side by side: latency at batch size 1, batched throughput, speed-up
    over the baseline and, with --evaluate, BLEU (sacreBLEU) and chrF.

    Example: lanmt bench -m MODEL --src test.en --ref test.de --evaluate --max-sentences 500
    """
    _check_arguments(src, ref, test_set, langpair, evaluate, plot, latency_sentences)
    _check_outputs(json_file, plot, output_dir)
    from lanmt_cli import bench as measure
    from lanmt_cli import bench_data, bench_report

    measure.check_specs(baseline, decoder or [])
    if test_set is not None:
        data = bench_data.sacrebleu_test_set(test_set, langpair)
    else:
        data = bench_data.read_test_set(src, ref or [])
    data = data.head(max_sentences)
    _say(f"test set: {data.origin['src']}, {len(data.sources)} of {data.total} sentences")

    import torch

    from lanmt_cli.bundle import load_bundle
    from lanmt_cli.devices import pick_device
    from lanmt_cli.hub import resolve_model

    if threads:
        torch.set_num_threads(threads)
    where = pick_device(device.value)
    start = time.perf_counter()
    bundle = load_bundle(resolve_model(model), device=where)
    teacher_bundle = load_bundle(resolve_model(teacher), device=where) if teacher else None
    load_seconds = time.perf_counter() - start
    _say(f"model {bundle.path} on {where}, torch threads: {torch.get_num_threads()}")

    report = measure.bench(
        bundle,
        decoder,
        data,
        baseline=baseline,
        teacher=teacher_bundle,
        evaluate=evaluate,
        batch_tokens=batch_tokens,
        warmup=warmup,
        latency_sentences=latency_sentences,
        repeats=repeats,
        seed=seed,
        say=_say,
    )
    report.model.update(spec=model, load_seconds=load_seconds)
    # The table first: a failing write below cannot lose the results.
    if markdown:
        typer.echo(bench_report.markdown(report), nl=False)
    else:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 200)
        console.print(bench_report.rich_table(report))
    _write_outputs(report, data, json_file, plot, output_dir)


def _write_outputs(report, data, json_file, plot, output_dir) -> None:
    from lanmt_cli import bench_report
    from lanmt_cli.textio import writing

    if output_dir is not None:
        with writing(output_dir):
            bench_report.write_translations(report, data, output_dir)
        _say(f"translations in {output_dir}")
    if json_file is not None:
        with writing(json_file):
            bench_report.write_json(report, json_file)
        _say(f"figures in {json_file}")
    if plot is not None:
        with writing(plot):
            bench_report.plot(report, plot)
        _say(f"plot in {plot}")


def register(app: typer.Typer, wrap) -> None:
    app.command("bench")(wrap(bench))
