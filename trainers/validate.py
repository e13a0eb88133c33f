"""Validation: the model's own metrics on the validation split, and BLEU of its translations.

LaNMT translates with one-shot, refine1 and the decoder named by --select (whose BLEU picks
the best checkpoint), and from the oracle posterior (is the latent alive?); the teacher
with greedy or beam search. Outputs are post-processed by `lanmt_cli.postprocess` and
scored with sacreBLEU against the split's original reference text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lanmt_cli import metrics as metric
from lanmt_cli.config import PAD
from lanmt_cli.data import Corpus, read_meta, token_batches
from lanmt_cli.textio import read_lines


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
        ntok = float(metrics[metric.NTOKENS])
        for name, value in metrics.items():
            value = float(value)
            if name in metric.NOT_AVERAGED:
                self.last[name] = value
                continue
            if name in metric.PER_SENTENCE:
                w = float(src.size(0))
            elif name in metric.PER_SOURCE_TOKEN:
                w = float((src != 0).sum())
            else:
                w = ntok
            self.sums[name] = self.sums.get(name, 0.0) + value * w
            self.weights[name] = self.weights.get(name, 0.0) + w

    def averages(self) -> dict[str, float]:
        out = {k: self.sums[k] / max(self.weights[k], 1e-9) for k in self.sums}
        if metric.KL_BUDGET in self.last:
            out[metric.KL_BUDGET] = self.last[metric.KL_BUDGET]
        return out


@torch.no_grad()
def valid_metrics(
    model, corpus: Corpus, max_tokens: int, device, autocast: Callable, forward_args: dict
) -> dict[str, float]:
    """The model's metrics over the whole validation split (eval mode, no dropout);
    `forward_args`: what the model's forward takes besides the batch (LaNMT: kl_budget).

    For LaNMT also whether the decoder reads z: token accuracy at the true length from the
    posterior mean (`acc_post`, the same as `word_acc` here) and from the prior mean
    (`acc_prior`); their difference is `latent_gain`.
    """
    was_training = model.training
    model.eval()
    sums = MetricSums()
    for idx in token_batches(
        corpus.src_lengths, corpus.tgt_lengths, max_tokens, seed=0, epoch=0, shuffle=False
    ):
        src, tgt = (t.to(device) for t in corpus.collate(idx))
        with autocast():
            _, metrics = model(src, tgt, **forward_args)
            if model.config.kind == "lanmt":
                metrics[metric.ACC_PRIOR] = prior_accuracy(model, src, tgt)
        sums.add(metrics, src, tgt)
    model.train(was_training)
    out = sums.averages()
    if metric.ACC_PRIOR in out:
        out[metric.ACC_POST] = out[metric.WORD_ACC]
        out[metric.LATENT_GAIN] = out[metric.ACC_POST] - out[metric.ACC_PRIOR]
    return out


def prior_accuracy(model, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Token accuracy of decoding at the true length from the prior mean."""
    source = model.encode_source(src)
    y_valid = tgt != PAD
    tokens, _ = model.best_tokens(source, model.prior(source).mean, y_valid.sum(1))  # (B, Ly)
    return ((tokens == tgt) & y_valid).sum() / y_valid.sum()


# LaNMT validation decodes with these besides the --select decoder.
LANMT_VALID_DECODERS = ("one-shot", "refine1")


@torch.no_grad()
def decode_corpus(
    model, corpus: Corpus, count: int, max_tokens: int, device, autocast: Callable, decode
) -> list[list[int]]:
    """`decode(src, tgt) -> token lists` over the first `count` pairs, in corpus order."""
    was_training = model.training
    model.eval()
    lengths = corpus.src_lengths[:count]
    out: list[list[int]] = [[] for _ in range(count)]
    for idx in token_batches(lengths, lengths, max_tokens, seed=0, epoch=0, shuffle=False):
        src, tgt = (t.to(device) for t in corpus.collate(idx))
        with autocast():
            hyps = decode(src, tgt)
        for i, tokens in zip(idx.tolist(), hyps, strict=True):
            out[i] = tokens
    model.train(was_training)
    return out


def translate_ids(
    model, corpus: Corpus, count: int, max_tokens: int, device, autocast: Callable, beam: int = 1
) -> list[list[int]]:
    """Output ids for the first `count` source sentences: LaNMT one-shot, teacher search."""
    from lanmt_cli.search import beam_search, greedy_search

    if model.config.kind == "lanmt":
        return decode_corpus(
            model, corpus, count, max_tokens, device, autocast, decoder_fn(model, "one-shot")
        )

    def search(src, _tgt):
        if beam == 1:
            return greedy_search(model, src)
        return [h[0].tokens if h else [] for h in beam_search(model, src, beam=beam)]

    budget = max(1, max_tokens // beam)
    return decode_corpus(model, corpus, count, budget, device, autocast, search)


def decoder_fn(model, spec: str):
    """`decode(src, tgt)` through the registered decoder `spec` (e.g. refine1).

    A NAT decoder decodes on PyTorch in float32 where it would pick for itself (`runtime=auto`,
    `compute_type=auto`): the model changes between validations, so exporting it to another
    engine each time would cost more than the decoding, and float32 keeps the figures
    comparable across machines and with earlier runs."""
    from lanmt_cli.registry import resolve

    _, cls, options = resolve(spec)
    if options.get("runtime") == "auto" and options.get("compute_type") == "auto":
        options.update(runtime="torch", compute_type="float32")
    decoder = cls(model, **options)
    return lambda src, _tgt: [o.tokens for o in decoder.decode(src)]


def oracle_posterior(model, src: torch.Tensor, tgt: torch.Tensor) -> list[list[int]]:
    """Argmax decoding from z = posterior mean of q(z|x, reference), at the reference length."""
    source = model.encode_source(src)
    lengths = (tgt != PAD).sum(1)
    tokens, _ = model.best_tokens(source, model.posterior(source, tgt).mean, lengths)
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)]


def lanmt_bleus(
    model, corpus: Corpus, count: int, max_tokens: int, device, autocast, tokenizer,
    references: list[str], select: str,
) -> dict[str, float]:  # fmt: skip
    """BLEU of one-shot, refine1, the --select decoder and oracle-posterior decoding, and the
    three decoders' repeat rates: of their tokens before repeats are collapsed
    (`repeat_rate...`) and of the words of their final text (`word_repeat_rate...`).
    `bleu` is the --select decoder's (it picks the best checkpoint)."""
    from lanmt_cli.postprocess import clean_ids

    out: dict[str, float] = {}

    def run(fn):
        return decode_corpus(model, corpus, count, max_tokens, device, autocast, fn)

    for spec in dict.fromkeys([*LANMT_VALID_DECODERS, select]):
        hyps = run(decoder_fn(model, spec))
        texts = output_text(model, tokenizer, hyps)
        raw = [clean_ids(h, collapse_repeats=False) for h in hyps]
        out[metric.repeats_of(spec)] = metric.repeat_rate(raw)
        out[metric.repeats_of(spec, words=True)] = metric.word_repeat_rate(texts)
        score = corpus_bleu(texts, references)
        out[metric.bleu_of(spec)] = score
        if spec == select:
            out[metric.BLEU] = score
    hyps = run(lambda src, tgt: oracle_posterior(model, src, tgt))
    out[metric.BLEU_ORACLE] = bleu_score(model, tokenizer, hyps, references)
    return out


def output_text(model, tokenizer, hyp_ids: list[list[int]]) -> list[str]:
    """The post-processed text of output ids, as translation gives it: NAT repeats collapsed."""
    from lanmt_cli.postprocess import detokenize

    return detokenize(tokenizer, hyp_ids, collapse_repeats=model.config.kind == "lanmt")


def corpus_bleu(texts: list[str], references: list[str]) -> float:
    """sacreBLEU (13a, cased) of `texts` against the first references."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(texts, [references[: len(texts)]]).score)


def bleu_score(model, tokenizer, hyp_ids: list[list[int]], references: list[str]) -> float:
    """sacreBLEU (13a, cased) of post-processed outputs; NAT repeats are collapsed."""
    return corpus_bleu(output_text(model, tokenizer, hyp_ids), references)


def no_autocast():
    return contextlib.nullcontext()
