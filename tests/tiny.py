"""A tiny synthetic translation task and tiny models trained on it in seconds.

The task: translate each word through a fixed dictionary and reverse the word order
("big red dog" -> "hund rot groß"). Lengths vary; some target words are two words
("bird" -> "der vogel"), so the target length differs from the source length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from lanmt_cli.config import LaNMTConfig, TransformerConfig
from lanmt_cli.padding import pad_tokens as pad  # noqa: F401 (the tests' short name)

DICTIONARY = {
    "red": "rot", "blue": "blau", "green": "grün", "dog": "hund", "cat": "katze",
    "bird": "der vogel", "runs": "läuft", "jumps": "springt", "sits": "sitzt",
    "big": "groß", "small": "klein", "old": "alt",
}  # fmt: skip


def make_task(n: int, seed: int, min_words: int = 2, max_words: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = sorted(DICTIONARY)
    pairs = []
    for _ in range(n):
        src: list[str] = []
        n_words = rng.randint(min_words, max_words)
        while len(src) < n_words:
            # no word twice in a row: NAT post-processing collapses repeated tokens
            src.append(rng.choice([w for w in words if not src or w != src[-1]]))
        pairs.append((" ".join(src), " ".join(DICTIONARY[w] for w in reversed(src))))
    return pairs


def make_variant_task(
    n: int, seed: int, words: int = 12, min_words: int = 2, max_words: int = 7
) -> list[tuple[list[int], list[int]]]:
    """A task with two right answers, as ids: z must carry which one.

    Each source word (ids 4 .. 4+words-1) has two translations, variant 0 and variant 1; a
    sentence uses one variant throughout, drawn at random, and reverses the word order. Word 0
    becomes two tokens. A model that ignores z mixes the variants (the multimodality that
    makes non-autoregressive translation hard); the latent can hold the choice.
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src: list[int] = []
        n_words = rng.randint(min_words, max_words)
        while len(src) < n_words:
            src.append(rng.choice([w for w in range(words) if not src or w != src[-1]]))
        variant = rng.randrange(2)
        tgt: list[int] = []
        for w in reversed(src):
            tgt.append(4 + words * (1 + variant) + w)
            if w == 0:
                tgt.append(4 + 3 * words + variant)
        pairs.append(([4 + w for w in src], tgt))
    return pairs


def train(model, batches, steps: int, lr: float = 3e-3, lanmt: bool = False) -> list[float]:
    """A minimal Adam loop over (src, tgt) tensor batches; returns the loss per step.

    LaNMT follows the KL budget schedule of `lanmt train`'s defaults, over `steps`.
    """
    from lanmt_cli.trainers.config import STAGE_DEFAULTS, TrainConfig
    from lanmt_cli.trainers.schedule import kl_budget

    recipe = TrainConfig(stage="lanmt", data="", out="", **STAGE_DEFAULTS["lanmt"])
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    losses = []
    for step in range(steps):
        src, tgt = batches[step % len(batches)]
        kw = {}
        if lanmt:
            kw["kl_budget"] = kl_budget(
                step, steps, recipe.kl_budget, recipe.kl_anneal, recipe.kl_floor
            )
        loss, _ = model(src, tgt, **kw)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warm.step()
        losses.append(loss.item())
    model.eval()
    return losses


@dataclass
class TinyModels:
    tokenizer: object
    teacher: torch.nn.Module
    lanmt: torch.nn.Module


def teacher_config(vocab: int) -> TransformerConfig:
    return TransformerConfig(
        vocab, vocab, hidden=64, heads=4, ffn=128, encoder_layers=2, decoder_layers=2,
        dropout=0.0, max_len=64,
    )  # fmt: skip


def lanmt_config(vocab: int) -> LaNMTConfig:
    return LaNMTConfig(
        vocab, vocab, hidden=64, heads=4, ffn=128, prior_layers=2, posterior_layers=1,
        posterior_cross_layers=1, decoder_layers=2, dropout=0.0, max_len=64, length_window=16,
    )  # fmt: skip


def train_tiny_models(workdir: Path, seed: int = 0, threads: int = 1) -> TinyModels:
    """Tokenizer, teacher and LaNMT for the synthetic task (about half a minute on one
    thread of a quiet machine). Models this small train fastest on one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_tiny_models(workdir, seed)
    finally:
        torch.set_num_threads(before)


def _train_tiny_models(workdir: Path, seed: int) -> TinyModels:
    from lanmt_cli.tokenizer import Tokenizer, train_sentencepiece

    torch.manual_seed(seed)
    pairs = make_task(3000, seed=seed)
    text = [s for pair in pairs for s in pair]
    spm_path = train_sentencepiece(
        text, workdir / "spm.model", vocab_size=55
    )  # every word one piece
    tok = Tokenizer.load(spm_path)
    src_ids = tok.encode_src([s for s, _ in pairs])
    tgt_ids = tok.encode_tgt([t for _, t in pairs])
    batches = [
        (pad(src_ids[i : i + 128]), pad(tgt_ids[i : i + 128])) for i in range(0, len(pairs), 128)
    ]
    vocab = tok.src_vocab_size
    from lanmt_cli.model import LaNMT
    from lanmt_cli.teacher import Transformer

    teacher = Transformer(teacher_config(vocab))
    train(teacher, batches, steps=500, lr=5e-3)
    lanmt = LaNMT(lanmt_config(vocab))
    train(lanmt, batches, steps=800, lr=5e-3, lanmt=True)
    return TinyModels(tok, teacher, lanmt)
