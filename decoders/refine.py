"""refine-N: deterministic inference with a delta posterior (the paper's main decoder).

Start from the one-shot output; then, N times, set z to the posterior mean mu_q(x, y_t) of the
current output, re-predict the length and decode again. A sentence stops as soon as its output
no longer changes (its next step would give the same z and so the same output).
`refine1`, `refine3`, ... name this decoder with steps = 1, 3, ...
"""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli.config import PAD
from lanmt_cli.decoders.base import Decoder, Option, Output, argmax_outputs


def decode_latent(model, source, z: Tensor) -> tuple[list[list[int]], list[float]]:
    """Length, then argmax tokens, from latents z (B, Lx, D): token lists and their scores."""
    lengths = model.predict_length(source, z)  # (B,)
    tokens, scores = argmax_outputs(model.log_probs(source, z, lengths), lengths)
    rows = tokens.tolist()
    return [row[: int(n)] for row, n in zip(rows, lengths.tolist(), strict=True)], scores.tolist()


def pad_tokens(seqs: list[list[int]], device) -> Tensor:
    """Token lists -> (B, L) LongTensor padded with PAD (L >= 1)."""
    width = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), width), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device)


def refine(
    model, source, tokens: list[list[int]], scores: list[float], steps: int
) -> tuple[list[list[int]], list[float], int]:
    """Up to `steps` delta-posterior steps on every row; rows stop once their output is stable.

    Returns the refined tokens, their scores (of the last pass each row took) and the number of
    passes taken.
    """
    tokens, scores = list(tokens), list(scores)
    active = list(range(len(tokens)))  # rows still changing
    passes = 0
    for _ in range(steps):
        if not active:
            break
        passes += 1
        index = torch.tensor(active, device=source.valid.device)
        sub = source.select(index)
        y = pad_tokens([tokens[i] for i in active], source.valid.device)  # (b, Ly)
        z = model.posterior(sub, y).mean  # (b, Lx, D)
        new_tokens, new_scores = decode_latent(model, sub, z)
        still = []
        for row, new, score in zip(active, new_tokens, new_scores, strict=True):
            if new != tokens[row]:
                still.append(row)
            tokens[row], scores[row] = new, score
        active = still
    return tokens, scores, passes


class Refine(Decoder):
    name = "refine"
    help = "One-shot, then N deterministic refinement steps with the posterior mean."
    options = (Option("steps", int, 1, "refinement steps (stops early when stable)", minimum=0),)
    numbered_option = "steps"

    @torch.no_grad()
    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        m = self.model
        source = m.encode_source(src)
        tokens, scores = decode_latent(m, source, m.prior(source).mean)
        tokens, scores, _ = refine(m, source, tokens, scores, self.opts["steps"])
        return [Output(t, s, len(t)) for t, s in zip(tokens, scores, strict=True)]
