"""What every decoder is: a named class with typed options and one batched `decode` call.

Decoders are found through the `lanmt.decoders` entry-point group; the built-in ones are
registered there by this project's own pyproject.toml, exactly like a third-party plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class Option:
    """One decoder option: `--opt name=value` on the command line."""

    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str


@dataclass
class Output:
    """One decoded sentence: target ids (no specials stripped yet), its score and length."""

    tokens: list[int]
    score: float  # the decoder's own score (log-probability of the chosen output)
    length: int  # the chosen target length
    candidates: list[tuple[list[int], float]] = field(default_factory=list)  # best first


class Decoder:
    """Base class: subclasses set `name`, `help`, `options` and implement `decode`."""

    name: ClassVar[str]
    help: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    model_kind: ClassVar[str] = "lanmt"  # the kind of model it decodes with
    needs_teacher: ClassVar[bool] = False  # also needs the autoregressive teacher

    def __init__(self, model, teacher=None, **options: Any):
        self.model = model
        self.teacher = teacher
        known = {o.name: o for o in self.options}
        for key in options:
            if key not in known:
                raise ValueError(f"unknown option {key!r} for decoder {self.name}")
        self.opts = {o.name: options.get(o.name, o.default) for o in self.options}

    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        """Translate a batch src (B, Lx); `seeds` gives each sentence its own random seed."""
        raise NotImplementedError


def argmax_outputs(logp: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Best token per position and the summed log-probability over each length.

    logp (B, Ly, V), lengths (B,) -> tokens (B, Ly) with PAD beyond the length, scores (B,).
    """
    best, tokens = logp.max(-1)  # (B, Ly)
    valid = torch.arange(logp.size(1), device=logp.device)[None, :] < lengths[:, None]
    return tokens.masked_fill(~valid, 0), (best * valid).sum(1)


def to_outputs(tokens: Tensor, scores: Tensor, lengths: Tensor) -> list[Output]:
    return [
        Output(tokens[i, : int(lengths[i])].tolist(), float(scores[i]), int(lengths[i]))
        for i in range(tokens.size(0))
    ]
