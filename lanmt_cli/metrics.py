"""The names of the training and validation metrics, and how each is averaged.

The models' `forward` reports them (`lanmt_cli.model`, `lanmt_cli.teacher`), validation adds
its own and averages all of them (`lanmt_cli.trainers.validate`), the training log stores
them under these names and the console shows them (`lanmt_cli.trainers.display`). Also the
repeat rates of outputs, for validation and `lanmt bench --evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Reported by both models' forward.
LOSS = "loss"  # the training objective per target token
NLL = "nll"  # negative log-likelihood per target token (no label smoothing)
WORD_ACC = "word_acc"  # target token accuracy (teacher-forced, or at the true length)
NTOKENS = "ntokens"  # target tokens in the batch
# Reported by LaNMT's forward.
LEN_LOSS = "len_loss"  # length prediction loss per sentence
LEN_ACC = "len_acc"  # length prediction accuracy
KL_BUDGET = "KL_budget"  # the free-bits budget of the update (a setting, not averaged)
KL = "kl"  # KL(q || p) per sentence
TOK_KL = "tok_kl"  # KL(q || p) per source token
PRIOR_SIGMA = "prior_sigma"  # mean std of the prior, per source token
POST_SIGMA = "post_sigma"  # mean std of the posterior, per source token

# Added by validation (LaNMT: is the latent alive?).
ACC_PRIOR = "acc_prior"  # token accuracy at the true length from the prior mean
ACC_POST = "acc_post"  # the same from the posterior mean (= word_acc in validation)
LATENT_GAIN = "latent_gain"  # acc_post - acc_prior
# Adjacent repeats, the typical non-autoregressive error ("mit mit", "der der"):
REPEAT_RATE = "repeat_rate"  # share of one-shot's tokens equal to the one before (uncollapsed)
WORD_REPEAT_RATE = "word_repeat_rate"  # the same for the words of its final text
BLEU = "bleu"  # the score that picks the best checkpoint
BLEU_ONE_SHOT = "bleu_one_shot"
BLEU_REFINE1 = "bleu_refine1"
BLEU_ORACLE = "bleu_oracle"  # decoding from the posterior mean given the reference


def bleu_of(decoder: str) -> str:
    """The BLEU metric of a validation decoder: `bleu_one_shot`, `bleu_refine1`, `bleu_NAME`."""
    return {"one-shot": BLEU_ONE_SHOT, "refine1": BLEU_REFINE1}.get(decoder, f"{BLEU}_{decoder}")


def repeats_of(decoder: str, words: bool = False) -> str:
    """The repeat-rate metric of a validation decoder: `repeat_rate` (one-shot),
    `repeat_rate_refine1`, ...; `word_repeat_rate...` with `words`."""
    name = WORD_REPEAT_RATE if words else REPEAT_RATE
    return name if decoder == "one-shot" else f"{name}_{decoder}"


def repeat_rate(seqs: Iterable[Sequence]) -> float:
    """Share of all tokens that equal the token right before them in their sequence."""
    tokens = repeats = 0
    for seq in seqs:
        tokens += len(seq)
        repeats += sum(a == b for a, b in zip(seq, seq[1:], strict=False))
    return repeats / max(tokens, 1)


def word_repeat_rate(texts: Iterable[str]) -> float:
    """`repeat_rate` of the whitespace-separated words of `texts`, compared case-folded
    ("Der der Hund" has one repeat in three words)."""
    return repeat_rate([text.casefold().split() for text in texts])


# How a metric is averaged over batches: by target tokens, unless listed here.
PER_SENTENCE = frozenset({KL, LEN_LOSS, LEN_ACC})
PER_SOURCE_TOKEN = frozenset({TOK_KL, PRIOR_SIGMA, POST_SIGMA})
NOT_AVERAGED = frozenset({NTOKENS, KL_BUDGET})  # a count, and a setting: the last value
