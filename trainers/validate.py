"""Validation: the model's own metrics on the validation split, and BLEU of its translations.

LaNMT translates with the one-shot decoder (prior mean, one pass), the teacher with
greedy or beam search; outputs are post-processed by `lanmt_cli.postprocess` and
scored with sacreBLEU against the split's original reference text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lanmt_cli.data import Corpus, read_meta, token_batches
from lanmt_cli.textio import read_lines

# How each validation metric is averaged over batches: by target tokens (the default),
# sentences or source tokens.
PER_SENTENCE = {"kl", "len_loss", "len_acc"}
PER_SOURCE_TOKEN = {"tok_kl"}
NOT_AVERAGED = {"ntokens", "KL_budget"}


def split_text(data_dir: Path, split: str, side: str, tokenizer) -> list[str]:
    """The text of each pair kept in `split` (`side` "src" or "tgt").

    The original lines where the input file named in meta.json is still there (exact
    references for BLEU), else the stored ids decoded.
    """
    corpus = Corpus.open(data_dir, split)
    info = read_meta(data_dir)["splits"][split]
    path = Path(info.get(f"{side}_file", ""))
    if path.is_file() and info.get("pairs") and len(corpus):
        wanted = corpus.lines  # (n,) sorted line numbers
        out, seen = [], 0
        for chunk in read_lines(path):
            lo, hi = np.searchsorted(wanted, [seen, seen + len(chunk)])
            out += [chunk[i - seen] for i in wanted[lo:hi]]
            seen += len(chunk)
        if len(out) == len(corpus) and seen == info["pairs"]:
            return out
    ids = corpus.src_ids if side == "src" else corpus.tgt_ids
    offsets = corpus.src_offsets if side == "src" else corpus.tgt_offsets
    seqs = [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(corpus))]
    return tokenizer.decode_src(seqs) if side == "src" else tokenizer.decode_tgt(seqs)


class MetricSums:
    """Weighted sums of per-batch metrics, averaged the way each metric is defined."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def add(self, metrics: dict, src: torch.Tensor, tgt: torch.Tensor) -> None:
        ntok = float(metrics["ntokens"])
        for name, value in metrics.items():
            value = float(value)
            if name in NOT_AVERAGED:
                self.last[name] = value
                continue
            if name in PER_SENTENCE:
                w = float(src.size(0))
            elif name in PER_SOURCE_TOKEN:
                w = float((src != 0).sum())
            else:
                w = ntok
            self.sums[name] = self.sums.get(name, 0.0) + value * w
            self.weights[name] = self.weights.get(name, 0.0) + w

    def averages(self) -> dict[str, float]:
        out = {k: self.sums[k] / max(self.weights[k], 1e-9) for k in self.sums}
        if "KL_budget" in self.last:
            out["KL_budget"] = self.last["KL_budget"]
        return out


@torch.no_grad()
def valid_metrics(
    model, corpus: Corpus, max_tokens: int, device, autocast: Callable, kl_budget: float
) -> dict[str, float]:
    """The model's metrics over the whole validation split (eval mode, no dropout)."""
    was_training = model.training
    model.eval()
    sums = MetricSums()
    for idx in token_batches(
        corpus.src_lengths, corpus.tgt_lengths, max_tokens, seed=0, epoch=0, shuffle=False
    ):
        src, tgt = (t.to(device) for t in corpus.collate(idx))
        with autocast():
            _, metrics = model(src, tgt, kl_budget=kl_budget)
        sums.add(metrics, src, tgt)
    model.train(was_training)
    return sums.averages()


@torch.no_grad()
def translate_ids(
    model, corpus: Corpus, count: int, max_tokens: int, device, autocast: Callable, beam: int = 1
) -> list[list[int]]:
    """Output ids for the first `count` source sentences of `corpus`, in corpus order."""
    from lanmt_cli.decoders.one_shot import OneShot
    from lanmt_cli.search import beam_search, greedy_search

    was_training = model.training
    model.eval()
    lengths = corpus.src_lengths[:count]
    out: list[list[int]] = [[] for _ in range(count)]
    budget = max(1, max_tokens // beam) if model.config.kind == "transformer" else max_tokens
    for idx in token_batches(lengths, lengths, budget, seed=0, epoch=0, shuffle=False):
        src = corpus.collate(idx)[0].to(device)
        with autocast():
            if model.config.kind == "lanmt":
                hyps = [o.tokens for o in OneShot(model).decode(src)]
            elif beam == 1:
                hyps = greedy_search(model, src)
            else:
                hyps = [h[0].tokens if h else [] for h in beam_search(model, src, beam=beam)]
        for i, tokens in zip(idx.tolist(), hyps, strict=True):
            out[i] = tokens
    model.train(was_training)
    return out


def bleu_score(model, tokenizer, hyp_ids: list[list[int]], references: list[str]) -> float:
    """sacreBLEU (13a, cased) of post-processed outputs; NAT repeats are collapsed."""
    import sacrebleu

    from lanmt_cli.postprocess import detokenize

    hyps = detokenize(tokenizer, hyp_ids, collapse_repeats=model.config.kind == "lanmt")
    return float(sacrebleu.corpus_bleu(hyps, [references[: len(hyps)]]).score)


def no_autocast():
    return contextlib.nullcontext()
