"""`lanmt prepare`: train SentencePiece and binarize a parallel corpus for training."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lanmt_cli.errors import LanmtError


class ModelType(str, Enum):
    unigram = "unigram"
    bpe = "bpe"


def _parse_test(spec: str) -> tuple[str, tuple[Path, Path]]:
    """`NAME=SRC,TGT` (or `SRC,TGT`, named `test`) -> (name, (src, tgt))."""
    name, _, files = spec.rpartition("=")
    parts = files.split(",")
    if len(parts) != 2 or not all(parts):
        raise LanmtError(
            f"--test expects NAME=SRC,TGT (like test2016=test.en,test.de), got {spec!r}"
        )
    return name or "test", (Path(parts[0]), Path(parts[1]))


def prepare(
    train_src: Annotated[
        Path,
        typer.Option("--train-src", help="Training source text, one sentence a line (.gz ok)."),
    ],
    train_tgt: Annotated[
        Path,
        typer.Option("--train-tgt", help="Training target text, line-aligned with the source."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to create.")],
    valid_src: Annotated[
        Path | None, typer.Option("--valid-src", help="Validation source text.")
    ] = None,
    valid_tgt: Annotated[
        Path | None, typer.Option("--valid-tgt", help="Validation target text.")
    ] = None,
    test: Annotated[
        list[str] | None,
        typer.Option(
            "--test",
            metavar="NAME=SRC,TGT",
            help="A test split, e.g. test2016=test.en.gz,test.de.gz. Repeatable.",
        ),
    ] = None,
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="SentencePiece vocabulary size (per side).")
    ] = 8000,
    joint: Annotated[
        bool,
        typer.Option("--joint/--separate", help="One vocabulary for both sides, or one each."),
    ] = True,
    model_type: Annotated[
        ModelType, typer.Option("--model-type", help="SentencePiece model type.")
    ] = ModelType.unigram,
    character_coverage: Annotated[
        float,
        typer.Option("--character-coverage", help="Share of characters SentencePiece must cover."),
    ] = 1.0,
    sample_size: Annotated[
        int,
        typer.Option(
            "--sample-size",
            help="Sentences sampled at random to train SentencePiece (fewer if over 50 MB).",
        ),
    ] = 1_000_000,
    max_len: Annotated[
        int, typer.Option("--max-len", help="Drop pairs with a side longer than this (tokens).")
    ] = 100,
    max_ratio: Annotated[
        float,
        typer.Option(
            "--max-ratio", help="Drop training pairs whose longer side is this many times longer."
        ),
    ] = 3.0,
    src_lang: Annotated[
        str | None,
        typer.Option(
            "--src-lang", "-s", metavar="LANG", help="Source language code [default: file suffix]."
        ),
    ] = None,
    tgt_lang: Annotated[
        str | None,
        typer.Option(
            "--tgt-lang", "-t", metavar="LANG", help="Target language code [default: file suffix]."
        ),
    ] = None,
    tokenizer_from: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer-from",
            help="Reuse the SentencePiece models in this directory instead of training new ones.",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-j", help="Threads [default: all cores].")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for SentencePiece sampling.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace an existing --out.")
    ] = False,
) -> None:
    """Train SentencePiece and binarize parallel text into a directory for `lanmt train`.

    Training pairs with an empty side, a side over --max-len tokens, or a length
    ratio over --max-ratio are dropped; validation and test pairs only when empty
    or over-long. The directory appears only once complete.
    """
    from rich.console import Console
    from rich.table import Table

    from lanmt_cli.data import prepare_corpus
    from lanmt_cli.progress import bar as progress_bar

    if (valid_src is None) != (valid_tgt is None):
        raise LanmtError("--valid-src and --valid-tgt go together")
    tests: dict[str, tuple[Path, Path]] = {}
    for spec in test or []:
        name, files = _parse_test(spec)
        if name in tests:
            raise LanmtError(f"--test name {name!r} given twice")
        tests[name] = files

    bar = progress_bar(transient=True)
    tasks: dict[str, int] = {}

    # Progress and stage messages only on a terminal: in a pipe, stderr carries just errors.
    def log(msg: str) -> None:
        if not bar.disable:
            bar.console.print(msg, style="dim", soft_wrap=True)

    def on_progress(split: str, done: int, total: int) -> None:
        if split not in tasks:
            tasks[split] = bar.add_task(split, total=total)
        bar.update(tasks[split], completed=done)

    with bar:
        meta = prepare_corpus(
            out,
            (train_src, train_tgt),
            valid=None if valid_src is None else (valid_src, valid_tgt),
            tests=tests,
            vocab_size=vocab_size,
            joint=joint,
            model_type=model_type.value,
            character_coverage=character_coverage,
            sample_size=sample_size,
            max_len=max_len,
            max_ratio=max_ratio,
            src_lang=src_lang,
            tgt_lang=tgt_lang,
            tokenizer_from=tokenizer_from,
            threads=threads,
            force=force,
            seed=seed,
            log=log,
            progress=on_progress,
        )

    table = Table(box=None, pad_edge=False)
    for column in ("split", "pairs", "kept", "empty", "too long", "ratio", "src tok", "tgt tok"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, s in meta["splits"].items():
        counts = (s["pairs"], s["kept"], s["empty"], s["too_long"], s["ratio"])
        tokens = (s["src_tokens"], s["tgt_tokens"])
        table.add_row(name, *(f"{n:,}" for n in counts + tokens))
    out_console = Console(highlight=False)
    out_console.print(table)
    kind = "joint" if meta["joint"] else "separate"
    langs = f"{meta['src_lang'] or '?'}-{meta['tgt_lang'] or '?'}"
    vocab = f"{meta['src_vocab_size']:,}"
    if not meta["joint"]:
        vocab += f" + {meta['tgt_vocab_size']:,}"
    out_console.print(
        f"wrote {out} ({langs}, {kind} vocabulary {vocab}, {meta['seconds']} s)", soft_wrap=True
    )


def register(app: typer.Typer, wrap) -> None:
    app.command("prepare")(wrap(prepare))
