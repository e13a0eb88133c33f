"""Learnability: with the recipe's KL schedule the latent carries what the source cannot.

On a task with two right answers per sentence (tests/tiny.py `make_variant_task`), a
decoder that ignores z mixes the two; refinement with the delta posterior must commit to
one, and decoding from the posterior of the reference (the oracle) must be near-perfect.
"""

from __future__ import annotations

import pytest
import torch

from lanmt_cli.config import LaNMTConfig
from lanmt_cli.decoders.one_shot import OneShot
from lanmt_cli.decoders.refine import Refine
from lanmt_cli.model import LaNMT
from lanmt_cli.trainers.validate import oracle_posterior
from tests.tiny import make_variant_task, pad, train

WORDS = 12
VOCAB = 4 + 3 * WORDS + 2


@pytest.fixture(scope="module")
def variant_model() -> LaNMT:
    torch.manual_seed(0)
    pairs = make_variant_task(3000, seed=0, words=WORDS)
    batches = [
        (pad([s for s, _ in pairs[i : i + 128]]), pad([t for _, t in pairs[i : i + 128]]))
        for i in range(0, len(pairs), 128)
    ]
    config = LaNMTConfig(
        VOCAB, VOCAB, hidden=64, heads=4, ffn=128, prior_layers=2, posterior_layers=1,
        posterior_cross_layers=1, decoder_layers=2, dropout=0.0, max_len=64, length_window=16,
    )  # fmt: skip
    model = LaNMT(config)
    train(model, batches, steps=600, lr=5e-3, lanmt=True)
    return model


def exact_match(hyps: list[list[int]], refs: list[list[int]]) -> float:
    return sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs)


@pytest.mark.slow
def test_refinement_beats_one_shot_and_the_oracle_posterior_is_near_perfect(variant_model):
    test = make_variant_task(300, seed=999, words=WORDS)
    src, tgt = pad([s for s, _ in test]), pad([t for _, t in test])
    refs = [t for _, t in test]
    one_shot = exact_match([o.tokens for o in OneShot(variant_model).decode(src)], refs)
    refine1 = exact_match([o.tokens for o in Refine(variant_model, steps=1).decode(src)], refs)
    with torch.no_grad():
        oracle = exact_match(oracle_posterior(variant_model, src, tgt), refs)
    assert oracle >= 0.95, (oracle, one_shot, refine1)
    assert refine1 >= one_shot + 0.1, (one_shot, refine1)
