"""The decoding interface: what a decoder is, and the helpers every decoder shares.

A decoder plugin imports this module only. It subclasses `Decoder`, declares `name`, `help`
and its options (`option_specs`, typed `Option`s), implements `decode` over a batch, and
registers `"my-name" = "my_package.module:MyDecoder"` in its pyproject.toml under
`[project.entry-points."lanmt.decoders"]`. The built-in decoders (`lanmt_cli.decoders`) are
registered there the same way; `lanmt_cli.registry` finds them all.

A decoder instance holds its model (`self.model`: the LaNMT model, or the Transformer
teacher where `model_kind = "transformer"`), the teacher where it `needs_teacher`
(`self.teacher`), and its checked option values (`self.options`, a dict by option name).
The helpers below are the steps the built-in decoders are made of: `decode_latent` (length,
then argmax tokens from latents z, through `LaNMT.best_tokens`), `decoded_lists` (the
token lists and scores of a `Decoded` pass), `pad_tokens`,
`content_seed`, the LaNMT search steps (`NATDecoder`, the base of a non-autoregressive
decoder with the `runtime` and `compute_type` options; `length_beam`, `best_of`, `refine`),
and the teacher's search and scoring on CTranslate2 or PyTorch, its scoring also on ONNX
Runtime (`teacher_search`, `teacher_scores`).
A non-autoregressive decoder searches over `self.model`'s step methods (`encode_source`,
`prior`, `posterior`, `length_logits`, `predict_length`, `best_tokens`, and the whole
passes `decode_z`, `decode_prior`, `decode_posterior`), which the runtime
(`lanmt_cli.runtime`: ONNX Runtime or PyTorch) provides; it never picks an engine itself.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from lanmt_cli.config import PAD
from lanmt_cli.errors import LanmtError
from lanmt_cli.model import Decoded
from lanmt_cli.padding import pad_tokens

if TYPE_CHECKING:
    from lanmt_cli.model import LaNMT, Source
    from lanmt_cli.runtime import NATRuntime
    from lanmt_cli.teacher import Transformer

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
    """One decoded sentence: target ids (no specials stripped yet) and its score."""

    tokens: list[int]
    score: float  # the decoder's own score (log-probability of the chosen output)
    candidates: list[tuple[list[int], float]] = field(default_factory=list)  # best first


class Decoder:
    """Base class: subclasses set `name`, `help`, `option_specs` and implement `decode`."""

    name: ClassVar[str]
    help: ClassVar[str] = ""
    option_specs: ClassVar[tuple[Option, ...]] = ()  # the options it takes
    model_kind: ClassVar[str] = "lanmt"  # the kind of model it decodes with
    needs_teacher: ClassVar[bool] = False  # also needs the autoregressive teacher
    # `<name><N>` or `<name>-<N>` selects this decoder with option `numbered_option` = N
    # (`refine3` is `refine` with steps=3).
    numbered_option: ClassVar[str | None] = None
    # Post-processing collapses runs of one token (the typical NAT repetition).
    collapse_repeats: ClassVar[bool] = True

    model: LaNMT | Transformer  # the model of kind `model_kind` (or its runtime's step object)
    runtime: NATRuntime | None  # what `Translator` built for a LaNMT model: engine, precision
    teacher: Transformer | None  # the autoregressive teacher, where `needs_teacher`
    options: dict[str, Any]  # the value of every option in `option_specs`

    def __init__(
        self, model: LaNMT | Transformer, teacher: Transformer | None = None, **options: Any
    ):
        from lanmt_cli.runtime import NATRuntime

        self.options = self.check_options(options)
        self.runtime = model if isinstance(model, NATRuntime) else None
        self.model = model.model if isinstance(model, NATRuntime) else model
        self.teacher = teacher

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """All options with defaults filled in, parsed from strings and checked."""
        known = {o.name: o for o in cls.option_specs}
        for key in options:
            if key not in known:
                raise OptionError(unknown_option_message(cls, key))
        return {o.name: o.parse(options.get(o.name, o.default), cls.name) for o in cls.option_specs}

    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        """Translate a batch src (B, Lx); `seeds` gives each sentence its own random seed."""
        raise NotImplementedError


def unknown_option_message(cls: type[Decoder], key: str) -> str:
    names = [o.name for o in cls.option_specs]
    if not names:
        return f"decoder {cls.name} takes no options (got {key!r})"
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    listed = "; ".join(o.describe() for o in cls.option_specs)
    return f"decoder {cls.name} has no option {key!r}{hint}; its options: {listed}"


def content_seed(seed: int, tokens: list[int]) -> int:
    """A sentence's own random seed, from the run's seed and the sentence's tokens.

    Derived from content, not from the position in a batch, so a sentence decodes the same
    whatever else is batched with it.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    h.update(b"".join(int(t).to_bytes(4, "little") for t in tokens))
    return int.from_bytes(h.digest(), "little") >> 1  # 63 bits: fits torch's manual_seed


# --- LaNMT: from latents to tokens -------------------------------------------------------


def length_choices(model: LaNMT, source: Source, z: Tensor, ranks: Tensor) -> tuple[Tensor, Tensor]:
    """The `ranks[i]`-th most likely target length of each row (B,) and its log-probability."""
    logp = model.length_logits(source, z).float().log_softmax(-1)  # (B, 2W)
    top_logp, top = logp.topk(int(ranks.max()) + 1, dim=-1)  # (B, R)
    pick = ranks[:, None]
    delta = top.gather(1, pick)[:, 0] - model.config.length_window
    lengths = (source.lengths + delta).clamp(1, model.config.max_len)
    return lengths, top_logp.gather(1, pick)[:, 0]


def decoded_lists(
    decoded: Decoded, length_logp: Tensor | None = None
) -> tuple[list[list[int]], list[float]]:
    """Each row's tokens cut at its length, and its score: the sum of its tokens'
    log-probabilities, plus its length's log-probability (B,) where given."""
    scores = decoded.logps.sum(1)  # (B,)
    if length_logp is not None:
        scores = scores + length_logp
    rows = decoded.tokens.tolist()
    cut = [row[: int(n)] for row, n in zip(rows, decoded.lengths.tolist(), strict=True)]
    return cut, scores.tolist()


def decode_latent(
    model: LaNMT, source: Source, z: Tensor, ranks: Tensor | None = None
) -> tuple[list[list[int]], list[float]]:
    """Length, then argmax tokens, from latents z (B, Lx, D): token lists and their scores.

    ranks None: the most likely length, score = token log-probabilities. ranks (B,): the
    ranks[i]-th most likely length, score = joint with the length's log-probability.
    """
    if ranks is None:
        return decoded_lists(model.decode_z(source, z))
    lengths, length_logp = length_choices(model, source, z, ranks)
    return decoded_lists(Decoded(lengths, *model.best_tokens(source, z, lengths)), length_logp)


# --- LaNMT: the search steps of the built-in decoders, for any NAT decoder -----------------

MAX_STEPS = 100  # refinement converges or cycles within a few steps; more is a mistake
MAX_LENGTHS = 20  # length-beam width limit


def refine(
    model,
    source,
    tokens: list[list[int]],
    scores: list[float],
    steps: int,
    ranks: Tensor | None = None,
    groups: list[int] | None = None,
) -> tuple[list[list[int]], list[float], int]:
    """Up to `steps` delta-posterior steps on every row; a row stops once its output repeats
    any earlier output of that row (a fixed point or a cycle).

    ranks (B,): each row's length rank (see `decode_latent`); None: the most likely length.
    groups: a sentence id per row; rows of one sentence with the same rank and output are
    refined once (refinement is deterministic). Returns the refined tokens, their scores (of
    the last pass each row took) and the number of passes taken.
    """
    tokens, scores = list(tokens), list(scores)
    seen = [{tuple(t)} for t in tokens]  # every output each row has had
    active = list(range(len(tokens)))  # rows still changing
    groups = groups if groups is not None else list(range(len(tokens)))
    rank_list = ranks.tolist() if ranks is not None else [0] * len(tokens)
    passes = 0
    for _ in range(steps):
        if not active:
            break
        passes += 1
        first: dict[tuple, int] = {}  # (sentence, rank, output) -> the row that computes it
        for row in active:
            first.setdefault((groups[row], rank_list[row], tuple(tokens[row])), row)
        unique = list(first.values())
        index = torch.tensor(unique, device=source.valid.device)
        sub = source.select(index)
        y = pad_tokens([tokens[i] for i in unique], source.valid.device)  # (b, Ly)
        if ranks is None:  # the most likely length: one pass (one call on a runtime)
            new_tokens, new_scores = decoded_lists(model.decode_posterior(sub, y))
        else:
            z = model.posterior(sub, y).mean  # (b, Lx, D)
            new_tokens, new_scores = decode_latent(model, sub, z, ranks[index])
        result = dict(zip(unique, zip(new_tokens, new_scores, strict=True), strict=True))
        still = []
        for row in active:
            new, score = result[first[groups[row], rank_list[row], tuple(tokens[row])]]
            key = tuple(new)
            if key not in seen[row]:
                still.append(row)
                seen[row].add(key)
            tokens[row], scores[row] = list(new), score
        active = still
    return tokens, scores, passes


def length_beam(b: int, lengths: int, device) -> tuple[Tensor | None, Tensor]:
    """Rows for a length beam of width `lengths` over b rows: (ranks (b*N,) or None where
    N = 1, and the row each comes from (b*N,))."""
    rows = torch.arange(b, device=device).repeat_interleave(lengths)
    if lengths == 1:
        return None, rows
    return torch.arange(lengths, device=device).repeat(b), rows


def best_of(tokens: list, scores: list[float], n: int) -> list[Output]:
    """The best-scoring of each consecutive group of n candidates, the others as candidates."""
    outputs = []
    for i in range(0, len(tokens), n):
        group = list(zip(tokens[i : i + n], scores[i : i + n], strict=True))
        order = sorted(range(n), key=lambda k: -group[k][1])  # ties: the more likely length
        t, s = group[order[0]]
        cands = [group[k] for k in order] if n > 1 else []
        outputs.append(Output(list(t), s, cands))
    return outputs


LENGTHS_OPTION = Option(
    "lengths",
    int,
    1,
    "length beam: try the N most likely lengths, keep the best",
    minimum=1,
    maximum=MAX_LENGTHS,
)
COMPUTE_TYPE_OPTION = Option(
    "compute_type",
    str,
    "auto",
    "precision of the NAT model: auto (fastest that keeps its translations), default, float32, "
    "int8, bfloat16 (CPUs with AVX512-BF16 or AMX)",
)
RUNTIME_OPTION = Option(
    "runtime", str, "auto", "engine of the NAT model: auto (onnx on a CPU), onnx or torch"
)
RUNTIME_OPTIONS = (COMPUTE_TYPE_OPTION, RUNTIME_OPTION)


class NATDecoder(Decoder):
    """Shared by the LaNMT decoders: the runtime, and the check of its options.

    `model` is a built `lanmt_cli.runtime.NATRuntime` (what `Translator` passes: built once
    per loaded model) or a LaNMT module, for which a runtime is built here from the options
    `runtime` and `compute_type` (a model that is still training gets a fresh one with each
    new decoder). The decoders search over `self.model`'s step methods whatever runs them.
    """

    engine: str  # onnx or torch
    compute_type: str  # float32, int8 or bfloat16 on a CPU; the model's dtype on a GPU

    def __init__(self, model, teacher=None, **options):
        from lanmt_cli.runtime import build

        super().__init__(model, teacher, **options)
        if model is None:
            return
        if self.runtime is None:
            self.runtime = build(model, self.options["runtime"], self.options["compute_type"])
            self.model = self.runtime.model
        self.engine, self.compute_type = self.runtime.engine, self.runtime.compute_type

    @classmethod
    def check_options(cls, options):
        from lanmt_cli.runtime import COMPUTE_TYPES, RUNTIMES

        checked = super().check_options(options)
        where = f"of decoder {cls.name}"
        for name, allowed in (("compute_type", COMPUTE_TYPES), ("runtime", RUNTIMES)):
            if name in checked and checked[name] not in allowed:
                raise OptionError(
                    f"option {name} {where} takes one of {', '.join(allowed)}, "
                    f"got {checked[name]!r}"
                )
        return checked


# --- the autoregressive teacher: search and scoring --------------------------------------

# The teacher's runtime, for decoders that run it: CTranslate2 (the teacher converted once,
# see `lanmt_cli.ct2`) or lanmt's own PyTorch search (`lanmt_cli.search`).
BACKEND_OPTIONS = (
    Option("backend", str, "ctranslate2", "teacher runtime: ctranslate2 or torch"),
    Option("compute_type", str, "default", "CTranslate2 compute type: default, int8, int16, ..."),
)
# Scoring alone (`teacher_scores`) may also run on ONNX Runtime (`lanmt_cli.onnx_teacher`),
# in the NAT model's thread pool; `auto` picks it where it can (`scoring_backend`).
SCORING_BACKENDS = ("auto", "onnx", "ctranslate2", "torch")
SCORING_BACKEND_OPTION = Option(
    "backend",
    str,
    "auto",
    "teacher runtime for scoring: auto (onnx where ONNX Runtime is installed, else "
    "ctranslate2), onnx, ctranslate2 or torch",
)


def check_backend_options(options: dict[str, Any], backends: tuple[str, ...] | None = None) -> None:
    """backend and compute_type (BACKEND_OPTIONS) of checked options: one clear error.
    backends: those allowed (default: the search's, ctranslate2 and torch)."""
    from lanmt_cli.ct2 import BACKENDS, COMPUTE_TYPES

    backends = backends or BACKENDS
    if options["backend"] not in backends:
        raise OptionError(
            f"option backend takes one of {', '.join(backends)}, got {options['backend']!r}"
        )
    if options["compute_type"] not in COMPUTE_TYPES:
        raise OptionError(
            f"option compute_type takes one of {', '.join(COMPUTE_TYPES)}, "
            f"got {options['compute_type']!r}"
        )


def scoring_backend(backend: str, compute_type: str) -> str:
    """The teacher's scoring runtime for `backend` (SCORING_BACKENDS) and its CTranslate2-named
    `compute_type`: `auto` is onnx where ONNX Runtime is installed and runs that type (float32
    or int8), else ctranslate2; onnx where it cannot run is one clear error."""
    from lanmt_cli.onnx_teacher import COMPUTE_TYPES
    from lanmt_cli.runtime import onnx_available

    if backend not in SCORING_BACKENDS:
        raise OptionError(
            f"option backend takes one of {', '.join(SCORING_BACKENDS)}, got {backend!r}"
        )
    if backend == "auto":
        ok = compute_type in COMPUTE_TYPES and onnx_available()
        return "onnx" if ok else "ctranslate2"
    if backend == "onnx" and not onnx_available():
        raise OptionError("backend=onnx needs ONNX Runtime: pip install onnxruntime onnx")
    if backend == "onnx" and compute_type not in COMPUTE_TYPES:
        raise OptionError(
            f"backend=onnx scores the teacher in float32 or int8 (compute_type "
            f"{', '.join(COMPUTE_TYPES)}), not {compute_type}"
        )
    return backend


def _sources(src: Tensor) -> list[list[int]]:
    """src (B, Lx) -> each row's tokens without padding."""
    lengths = (src != PAD).sum(1).tolist()
    return [row[:n] for row, n in zip(src.tolist(), lengths, strict=True)]


def teacher_search(
    teacher: Transformer,
    src: Tensor,
    beam: int = 3,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    nbest: int = 1,
    backend: str = "ctranslate2",
    compute_type: str = "default",
) -> list[Output]:
    """The teacher's beam search (greedy with beam=1) of each sentence of src (B, Lx).

    Outputs are at most max_len_a * source length + max_len_b tokens long; each keeps its
    best `nbest` hypotheses as candidates; a sentence without any scores -inf.
    """
    from lanmt_cli.search import beam_search, max_lengths

    if backend == "ctranslate2":
        from lanmt_cli import ct2

        limits = max_lengths(src, teacher, max_len_a, max_len_b).tolist()
        engine = ct2.engine_for(teacher, compute_type)
        found = engine.search(_sources(src), limits, beam, length_penalty, nbest)
    else:
        found = beam_search(teacher, src, beam, length_penalty, max_len_a, max_len_b, nbest)
    outputs = []
    for hyps in found:
        best = hyps[0] if hyps else None
        outputs.append(
            Output(
                best.tokens if best else [],
                best.score if best else float("-inf"),
                [(h.tokens, h.score) for h in hyps[:nbest]],
            )
        )
    return outputs


def teacher_scores(
    teacher: Transformer,
    src: Tensor,
    rows: list[int],
    ys: list[list[int]],
    backend: str = "ctranslate2",
    compute_type: str = "default",
) -> list[float]:
    """log p_AR(ys[j] | src[rows[j]]), EOS included, for every candidate j; src (B, Lx).

    By teacher forcing, no search: on ONNX Runtime (`backend=onnx`; compute_type default or
    float32, int8 or int8_float32), CTranslate2's `score_batch`, or one batched PyTorch pass;
    `auto` as `scoring_backend` resolves it.
    """
    backend = scoring_backend(backend, compute_type)
    if backend == "onnx":
        from lanmt_cli import onnx_teacher

        return onnx_teacher.scorer_for(teacher, compute_type).score(src, rows, ys)
    if backend == "ctranslate2":
        from lanmt_cli import ct2

        sources = _sources(src)
        per_token = ct2.engine_for(teacher, compute_type).score([sources[r] for r in rows], ys)
        return [sum(t) for t in per_token]
    index = torch.tensor(rows, device=src.device)
    memory = teacher.encode(src).select(index)
    return teacher.score(None, pad_tokens(ys, src.device), memory).tolist()
