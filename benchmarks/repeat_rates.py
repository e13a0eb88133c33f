"""Adjacent repeats in NAT outputs ("mit mit"), the typical non-autoregressive error.

    python benchmarks/repeat_rates.py --data PREPARED [--split test2016] [--model DIR]
        [-d one-shot -d refine1 ...] [--threads 1]

PREPARED is a `lanmt prepare` folder made with the model's tokenizer (`--tokenizer-from`).
For each decoder (float32, as validation decodes) it prints sacreBLEU (13a, cased) and two
repeat rates: of the subword tokens the decoder wrote, before post-processing collapses runs
of the same token (`repeat_rate` of validation), and of the words of the final text, which
is what a reader sees (`word_repeat_rate`, also in `lanmt bench --evaluate`). Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from lanmt_cli.bundle import load_bundle
from lanmt_cli.data import Corpus
from lanmt_cli.metrics import repeat_rate, word_repeat_rate
from lanmt_cli.postprocess import clean_ids
from lanmt_cli.trainers.validate import (
    corpus_bleu,
    decode_corpus,
    decoder_fn,
    output_text,
    split_text,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "lanmt_cli" / "models" / "default"))
    parser.add_argument("--data", type=Path, required=True, help="a lanmt prepare folder")
    parser.add_argument("--split", default="test2016")
    parser.add_argument("-d", "--decoder", action="append", dest="decoders")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    model, tokenizer = bundle.model, bundle.tokenizer
    corpus = Corpus.open(args.data, args.split)
    references = split_text(args.data, args.split, "tgt", tokenizer)
    print(f"{args.split}: {len(corpus)} sentences; model {args.model}")
    print()
    print("| decoder | BLEU | subword repeats, before collapsing | word repeats, final text |")
    print("|:---|---:|---:|---:|")
    for spec in args.decoders or ["one-shot", "refine1", "refine3"]:
        hyps = decode_corpus(
            model, corpus, len(corpus), 4096, torch.device("cpu"), contextlib.nullcontext,
            decoder_fn(model, spec),
        )  # fmt: skip
        texts = output_text(model, tokenizer, hyps)
        raw = [clean_ids(h, collapse_repeats=False) for h in hyps]
        words = sum(len(t.split()) for t in texts)
        print(
            f"| {spec} | {corpus_bleu(texts, references):.2f} "
            f"| {share(repeat_rate(raw), sum(map(len, raw)))} "
            f"| {share(word_repeat_rate(texts), words)} |"
        )


def share(rate: float, total: int) -> str:
    """`rate` as a percentage, with the count it stands for: "9.31% (1,397 of 15,004)"."""
    return f"{100 * rate:.2f}% ({round(rate * total):,} of {total:,})"


if __name__ == "__main__":
    main()
