"""refine-N: deterministic inference with a delta posterior (the paper's main decoder).

Start from the one-shot output; then, N times, set z to the posterior mean mu_q(x, y_t) of the
current output, re-predict the length and decode again. A sentence stops as soon as its output
repeats one it had before (unchanged, or a cycle such as A, B, A): from there on it would only
go round again. `refine1`, `refine3`, ... name this decoder with steps = 1, 3, ...

Length beam (`lengths=N`): candidate k of a sentence always decodes at the k-th most likely
length (k = 0 is plain refinement); the candidate with the best joint score
log p(length | x, z) + sum of its token log-probabilities wins.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli.decoding import (
    LENGTHS_OPTION,
    MAX_STEPS,
    RUNTIME_OPTIONS,
    NATDecoder,
    Option,
    Output,
    best_of,
    decode_latent,
    decoded_lists,
    length_beam,
    refine,
)


class Refine(NATDecoder):
    name = "refine"
    help = "One-shot, then N deterministic refinement steps with the posterior mean."
    option_specs = (
        Option(
            "steps",
            int,
            1,
            "refinement steps (stops early once its output repeats)",
            minimum=0,
            maximum=MAX_STEPS,
        ),
        LENGTHS_OPTION,
        *RUNTIME_OPTIONS,
    )
    numbered_option = "steps"

    @torch.no_grad()
    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        m, n = self.model, self.options["lengths"]
        ranks, rows = length_beam(src.size(0), n, src.device)
        if n == 1:  # one pass (one call on a runtime)
            source, first = m.decode_prior(src)
            tokens, scores = decoded_lists(first)
        else:
            source = m.encode_source(src)
            z = m.prior(source).mean  # (B, Lx, D)
            source, z = source.select(rows), z[rows]
            tokens, scores = decode_latent(m, source, z, ranks)
        groups = rows.tolist()
        tokens, scores, _ = refine(m, source, tokens, scores, self.options["steps"], ranks, groups)
        return best_of(tokens, scores, n)
