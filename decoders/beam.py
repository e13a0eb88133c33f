"""beam: the autoregressive teacher's own search, the baseline every speed-up is measured
against. `beam5` is beam search with beam size 5; `beam1` is greedy search. With a LaNMT
bundle it decodes with the bundle's teacher; a Transformer bundle decodes with itself.

It runs on CTranslate2 (`backend=ctranslate2`, the default; the teacher converted once, see
`lanmt_cli.ct2`) or on lanmt's own PyTorch search (`backend=torch`).
"""

from __future__ import annotations

from torch import Tensor

from lanmt_cli import ct2
from lanmt_cli.config import PAD
from lanmt_cli.decoding import Decoder, Option, Output
from lanmt_cli.search import beam_search, max_lengths

BACKEND_OPTIONS = (
    Option("backend", str, "ctranslate2", "teacher runtime: ctranslate2 or torch"),
    Option("compute_type", str, "default", "CTranslate2 compute type: default, int8, int16, ..."),
)


class Beam(Decoder):
    name = "beam"
    help = "Autoregressive beam search with the Transformer teacher (the baseline)."
    options = (
        Option("beam", int, 3, "beam size (1 = greedy)", minimum=1),
        Option("length_penalty", float, 1.0, "rank by score / length ** length_penalty"),
        Option("max_len_a", float, 1.5, "output length limit: a * source length + b", minimum=0),
        Option("max_len_b", int, 10, "output length limit: a * source length + b", minimum=0),
        Option("nbest", int, 1, "hypotheses kept with their scores (jsonl)", minimum=0),
        *BACKEND_OPTIONS,
    )
    model_kind = "transformer"
    numbered_option = "beam"
    collapse_repeats = False  # autoregressive output has no NAT repetitions to undo

    @classmethod
    def check_options(cls, options):
        checked = super().check_options(options)
        ct2.options_check(checked)
        return checked

    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        o = self.opts
        beam, penalty = o["beam"], o["length_penalty"]
        if o["backend"] == "ctranslate2":
            lengths = (src != PAD).sum(1).tolist()
            sources = [row[:n] for row, n in zip(src.tolist(), lengths, strict=True)]
            limits = max_lengths(src, self.model, o["max_len_a"], o["max_len_b"]).tolist()
            engine = ct2.engine_for(self.model, o["compute_type"])
            found = engine.search(sources, limits, beam, penalty, o["nbest"])
        else:
            found = beam_search(self.model, src, beam, penalty, o["max_len_a"], o["max_len_b"])
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
