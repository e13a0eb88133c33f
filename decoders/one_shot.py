"""one-shot: z = prior mean, length = argmax, every position at once. One network pass."""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli.decoders.base import Decoder, Output, argmax_outputs, to_outputs


class OneShot(Decoder):
    name = "one-shot"
    help = "Decode once from the prior mean (fastest)."

    @torch.no_grad()
    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        m = self.model
        source = m.encode_source(src)
        z = m.prior(source).mean  # (B, Lx, D)
        lengths = m.predict_length(source, z)  # (B,)
        tokens, scores = argmax_outputs(m.log_probs(source, z, lengths), lengths)
        return to_outputs(tokens, scores, lengths)
