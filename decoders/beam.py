"""beam: the autoregressive teacher's own search, the baseline every speed-up is measured
against. `beam5` is beam search with beam size 5; `beam1` is greedy search. With a LaNMT
bundle it decodes with the bundle's teacher; a Transformer bundle decodes with itself.

It runs on CTranslate2 (`backend=ctranslate2`, the default; the teacher converted once, see
`lanmt_cli.ct2`) or on lanmt's own PyTorch search (`backend=torch`).
"""

from __future__ import annotations

from torch import Tensor

from lanmt_cli.decoding import (
    BACKEND_OPTIONS,
    Decoder,
    Option,
    Output,
    check_backend_options,
    teacher_search,
)

MAX_BEAM = 100  # time and memory grow with the beam; wider beams rarely help a Transformer


class Beam(Decoder):
    name = "beam"
    help = "Autoregressive beam search with the Transformer teacher (the baseline)."
    option_specs = (
        Option("beam", int, 3, "beam size (1 = greedy)", minimum=1, maximum=MAX_BEAM),
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
        Option(
            "nbest",
            int,
            1,
            "hypotheses kept with their scores (jsonl)",
            minimum=0,
            maximum=MAX_BEAM,
        ),
        *BACKEND_OPTIONS,
    )
    model_kind = "transformer"
    numbered_option = "beam"
    collapse_repeats = False  # autoregressive output has no NAT repetitions to undo

    @classmethod
    def check_options(cls, options):
        checked = super().check_options(options)
        check_backend_options(checked)
        return checked

    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        return teacher_search(self.model, src, **self.options)  # its options are the search's
