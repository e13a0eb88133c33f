"""one-shot: z = prior mean, length = argmax, every position at once. One network pass.

`lengths=N` decodes the N most likely lengths in the same pass and keeps the output with the
best joint score log p(length | x, z) + sum of its token log-probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli.decoding import (
    LENGTHS_OPTION,
    RUNTIME_OPTIONS,
    NATDecoder,
    Output,
    best_of,
    decode_latent,
    decoded_lists,
    length_beam,
)


class OneShot(NATDecoder):
    name = "one-shot"
    help = "Decode once from the prior mean (fastest)."
    option_specs = (LENGTHS_OPTION, *RUNTIME_OPTIONS)

    @torch.no_grad()
    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        m, n = self.model, self.options["lengths"]
        if n == 1:  # one pass (one call on a runtime)
            return best_of(*decoded_lists(m.decode_prior(src)[1]), 1)
        source = m.encode_source(src)
        z = m.prior(source).mean  # (B, Lx, D)
        ranks, rows = length_beam(src.size(0), n, src.device)
        tokens, scores = decode_latent(m, source.select(rows), z[rows], ranks)
        return best_of(tokens, scores, n)
