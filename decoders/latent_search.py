"""latent-search: K latents drawn from the prior, each refined, the best by the model's score.

Candidate k of a sentence decodes from z = mu_p + noise * sigma_p * eps_k (eps_0 = 0: the first
candidate is the prior mean's) and is then refined
with the delta posterior; the NAT model's own score (sum of the per-position max log-probability)
picks the winner. Each sentence draws eps from its own generator, seeded from its content, so
results do not depend on the batch. The paper notes that self-scoring is unreliable:
`teacher-rescore` lets the autoregressive teacher choose instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli.config import PAD
from lanmt_cli.decoding import (
    LENGTHS_OPTION,
    MAX_STEPS,
    RUNTIME_OPTIONS,
    NATDecoder,
    Option,
    OptionError,
    Output,
    content_seed,
    decode_latent,
    length_beam,
    refine,
)

MAX_CANDIDATES = 1000  # samples x lengths per sentence: memory and time grow with it
Candidates = list[tuple[list[int], float]]  # (tokens, score) per candidate of one sentence


def sentence_noise(seed: int, samples: int, length: int, dim: int, width: int) -> Tensor:
    """eps (K, width, D) for one sentence of `length` tokens: its own generator, zero padding.

    The first sample's eps is 0: every search includes the prior mean itself."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.zeros(samples, width, dim)
    eps[1:, :length] = torch.randn(samples - 1, length, dim, generator=g)
    return eps


def distinct_best_first(cands: Candidates) -> Candidates:
    """One entry per distinct output (its best score), best first; ties keep sample order."""
    best: dict[tuple[int, ...], float] = {}
    for tokens, score in cands:
        key = tuple(tokens)
        if key not in best or score > best[key]:
            best[key] = score
    return sorted(((list(k), s) for k, s in best.items()), key=lambda c: -c[1])


def chunks(lengths: list[int], k: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive sentence ranges whose K copies, padded, hold at most `budget` tokens.

    Every range holds at least one sentence.
    """
    ranges, start = [], 0
    while start < len(lengths):
        end, width = start + 1, lengths[start]
        while end < len(lengths):
            wider = max(width, lengths[end])
            if k * (end + 1 - start) * wider > budget:
                break
            end, width = end + 1, wider
        ranges.append((start, end))
        start = end
    return ranges


class LatentSearch(NATDecoder):
    name = "latent-search"
    help = "Refine K noisy prior samples at once; keep the one the model itself scores best."
    option_specs = (
        Option(
            "samples",
            int,
            50,
            f"latent samples K per sentence (K x lengths at most {MAX_CANDIDATES})",
            minimum=1,
            maximum=MAX_CANDIDATES,
        ),
        Option(
            "noise", float, 0.5, "scale of the prior's std in each sample", minimum=0, maximum=100
        ),
        Option("steps", int, 1, "refinement steps for each sample", minimum=0, maximum=MAX_STEPS),
        Option(
            "nbest",
            int,
            5,
            "distinct candidates kept with their scores (jsonl)",
            minimum=0,
            maximum=MAX_CANDIDATES,
        ),
        LENGTHS_OPTION,
        *RUNTIME_OPTIONS,
    )
    numbered_option = "samples"
    max_expanded_tokens = 8192  # source tokens times samples per forward pass

    @classmethod
    def check_options(cls, options):
        checked = super().check_options(options)
        k, n = checked["samples"], checked["lengths"]
        if k * n > MAX_CANDIDATES:
            raise OptionError(
                f"options samples x lengths of decoder {cls.name} (the candidates of each "
                f"sentence) must be at most {MAX_CANDIDATES}, got {k} x {n} = {k * n}"
            )
        return checked

    @torch.no_grad()
    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        cands = self.candidates(src, seeds)
        outputs = []
        for ranked in self.rank(src, cands):
            tokens, score = ranked[0]
            outputs.append(Output(tokens, score, ranked[: self.options["nbest"]]))
        return outputs

    def rank(self, src: Tensor, cands: list[Candidates]) -> list[Candidates]:
        """Distinct candidates of each sentence, best first (here: by the model's score)."""
        return [distinct_best_first(c) for c in cands]

    def candidates(self, src: Tensor, seeds: list[int] | None) -> list[Candidates]:
        """All K refined candidates of each sentence (in sample order), with model scores."""
        lengths = (src != PAD).sum(1).tolist()
        if seeds is None:
            seeds = [content_seed(0, row[:n]) for row, n in zip(src.tolist(), lengths, strict=True)]
        out: list[Candidates] = []
        per_sentence = self.options["samples"] * self.options["lengths"]
        for a, b in chunks(lengths, per_sentence, self.max_expanded_tokens):
            out.extend(self._chunk(src[a:b], lengths[a:b], seeds[a:b]))
        return out

    def _chunk(self, src: Tensor, lengths: list[int], seeds: list[int]) -> list[Candidates]:
        m, k, n = self.model, self.options["samples"], self.options["lengths"]
        src = src[:, : max(lengths)]
        source = m.encode_source(src)
        prior = m.prior(source)  # (B, Lx, D)
        width, dim = prior.mean.shape[1:]
        eps = torch.cat(
            [sentence_noise(s, k, n, dim, width) for s, n in zip(seeds, lengths, strict=True)]
        ).to(prior.mean)  # (B*K, Lx, D)
        rows = torch.arange(src.size(0), device=src.device).repeat_interleave(k)  # (B*K,)
        z = prior.mean[rows] + self.options["noise"] * prior.std[rows] * eps
        ranks, beam = length_beam(
            rows.size(0), n, src.device
        )  # every sample at each of n length ranks
        if n > 1:
            rows, z = rows[beam], z[beam]  # (B*K*N,) sentence i, sample s, rank r
        expanded = source.select(rows)
        tokens, scores = decode_latent(m, expanded, z, ranks)
        steps = self.options["steps"]
        tokens, scores, _ = refine(m, expanded, tokens, scores, steps, ranks, rows.tolist())
        pairs = list(zip(tokens, scores, strict=True))
        return [pairs[i * k * n : (i + 1) * k * n] for i in range(src.size(0))]
