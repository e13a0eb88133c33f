"""beam: the autoregressive teacher's own beam search, the baseline every speed-up is measured
against. `beam5` is beam search with beam size 5. With a LaNMT bundle it decodes with the
bundle's teacher; a Transformer bundle decodes with itself.
"""

from __future__ import annotations

from torch import Tensor

from decoders.base import Decoder, Option, Output
from lanmt_cli.search import beam_search


class Beam(Decoder):
    name = "beam"
    help = "Autoregressive beam search with the Transformer teacher (the baseline)."
    options = (
        Option("beam", int, 3, "beam size (1 = greedy)", minimum=1),
        Option("length_penalty", float, 1.0, "rank by score / length ** length_penalty"),
        Option(
            "max_len_a",
            float,
            1.5,
            "output length limit: a * source length + b",
            minimum=0,
            maximum=1000,
        ),
        Option(
            "max_len_b",
            int,
            10,
            "output length limit: a * source length + b",
            minimum=0,
            maximum=100_000,
        ),
        Option("nbest", int, 1, "hypotheses kept with their scores (jsonl)", minimum=0),
    )
    model_kind = "transformer"
    numbered_option = "beam"
    collapse_repeats = False  # autoregressive output has no NAT repetitions to undo

    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        o = self.opts
        found = beam_search(
            self.model, src, o["beam"], o["length_penalty"], o["max_len_a"], o["max_len_b"]
        )
        outputs = []
        for hyps in found:
            best = hyps[0] if hyps else None
            tokens = best.tokens if best else []
            outputs.append(
                Output(
                    tokens,
                    best.score if best else float("-inf"),
                    len(tokens),
                    [(h.tokens, h.score) for h in hyps[: o["nbest"]]],
                )
            )
        return outputs
