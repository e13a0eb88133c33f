"""What every decoder is: a named class with typed options and one batched `decode` call.

Decoders are found through the `lanmt.decoders` entry-point group; the built-in ones are
registered there by this project's own pyproject.toml, exactly like a third-party plugin.
A plugin subclasses `Decoder`, sets `name`, `help` and `options`, implements `decode`, and
registers `"my-name" = "my_package.module:MyDecoder"` in its pyproject.toml under
`[project.entry-points."lanmt.decoders"]`.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from lanmt_cli.errors import LanmtError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class OptionError(LanmtError, ValueError):
    """A decoder option that does not exist or has a bad value."""


@dataclass(frozen=True)
class Option:
    """One decoder option: `--opt name=value` on the command line."""

    name: str
    type: type  # int, float, str or bool
    default: Any
    help: str
    minimum: float | None = None  # smallest allowed value (numbers only)
    maximum: float | None = None  # largest allowed value (numbers only)

    def parse(self, value: Any, decoder: str = "") -> Any:
        """A value of this option's type from a string or a Python value; OptionError if bad."""
        where = f"option {self.name} of decoder {decoder}" if decoder else f"option {self.name}"
        kind = self.type.__name__
        if isinstance(value, str) and self.type is not str:
            text = value.strip().lower()
            try:
                if self.type is bool:
                    if text not in _TRUE | _FALSE:
                        raise ValueError(text)
                    value = text in _TRUE
                else:
                    value = self.type(text)
            except ValueError:
                raise OptionError(f"{where} takes {kind}, got {value!r}") from None
        elif self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise OptionError(f"{where} takes {kind}, got {value!r}")
        if self.type is float and not math.isfinite(value):  # nan, inf: never a sane setting
            raise OptionError(f"{where} must be a finite number, got {value}")
        if self.minimum is not None and value < self.minimum:
            raise OptionError(f"{where} must be at least {self.minimum:g}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise OptionError(f"{where} must be at most {self.maximum:g}, got {value}")
        return value

    def describe(self) -> str:
        """`steps (int, default 1, >= 0): help`"""
        limit = f", >= {self.minimum:g}" if self.minimum is not None else ""
        limit += f", <= {self.maximum:g}" if self.maximum is not None else ""
        return f"{self.name} ({self.type.__name__}, default {self.default}{limit}): {self.help}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "help": self.help,
        }


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
    # `<name><N>` or `<name>-<N>` selects this decoder with option `numbered_option` = N
    # (`refine3` is `refine` with steps=3).
    numbered_option: ClassVar[str | None] = None
    # Post-processing collapses runs of one token (the typical NAT repetition).
    collapse_repeats: ClassVar[bool] = True

    def __init__(self, model, teacher=None, **options: Any):
        self.model = model
        self.teacher = teacher
        self.opts = self.check_options(options)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """All options with defaults filled in, parsed from strings and checked."""
        known = {o.name: o for o in cls.options}
        for key in options:
            if key not in known:
                raise OptionError(unknown_option_message(cls, key))
        return {o.name: o.parse(options.get(o.name, o.default), cls.name) for o in cls.options}

    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        """Translate a batch src (B, Lx); `seeds` gives each sentence its own random seed."""
        raise NotImplementedError


def unknown_option_message(cls: type[Decoder], key: str) -> str:
    names = [o.name for o in cls.options]
    if not names:
        return f"decoder {cls.name} takes no options (got {key!r})"
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    listed = "; ".join(o.describe() for o in cls.options)
    return f"decoder {cls.name} has no option {key!r}{hint}; its options: {listed}"


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


def content_seed(seed: int, tokens: list[int]) -> int:
    """A sentence's own random seed, from the run's seed and the sentence's tokens.

    Derived from content, not from the position in a batch, so a sentence decodes the same
    whatever else is batched with it.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    h.update(b"".join(int(t).to_bytes(4, "little") for t in tokens))
    return int.from_bytes(h.digest(), "little") >> 1  # 63 bits: fits torch's manual_seed
