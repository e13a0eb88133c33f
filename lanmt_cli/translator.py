"""The Python API for translation: load a model once, translate lists of strings.

    from lanmt_cli.translator import Translator
    tr = Translator("path/to/model", decoder="refine1")
    for r in tr.translate(["a sentence", ""]):
        print(r.translation, r.score)

`lanmt translate` is one user of this class. Every input string gets exactly one `Result`,
in order: an empty or blank string gives an empty translation; a string longer than the
model takes is split at spaces into pieces translated on their own and joined (or, with
`truncate=True`, cut). Sentences are sorted by length and batched by token count; each one
gets a random seed derived from `seed` and its own tokens, so the output does not depend on
the batch size or on what else is translated with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lanmt_cli import registry
from lanmt_cli.bundle import Bundle, load_bundle
from lanmt_cli.decoding import Decoder, Output, content_seed
from lanmt_cli.devices import batch_threads, pick_device, torch_threads
from lanmt_cli.errors import LanmtError
from lanmt_cli.padding import pad_tokens
from lanmt_cli.postprocess import detokenize


@dataclass
class Result:
    """The translation of one input string."""

    source: str
    translation: str
    decoder: str  # registered decoder name, e.g. "refine"
    score: float | None  # the decoder's score (summed over pieces); None for an empty line
    length: int  # chosen target length in tokens (summed over pieces)
    candidates: list[tuple[str, float]] = field(default_factory=list)  # best first
    pieces: int = 1  # 0: empty input; more than 1: split because it was too long
    truncated: bool = False  # cut to the model's input limit (truncate=True)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [{"translation": t, "score": s} for t, s in self.candidates]
        return d


def _load(spec: str | Path | Bundle, device: str) -> Bundle:
    if isinstance(spec, Bundle):
        return spec
    from lanmt_cli.hub import resolve_model

    return load_bundle(resolve_model(None if spec is None else str(spec)), device=device)


class Translator:
    """A model bundle and one decoder, loaded once.

    model: a bundle folder, an installed model name, None (the default model) or a `Bundle`.
    decoder: a registered decoder name (`refine1`, `latent-search`, ...); None picks
        `refine1` for a LaNMT model and `beam` for a Transformer.
    decoder_options: option values (Python values or strings) checked against the decoder.
    teacher: an autoregressive teacher (folder, name or Bundle) replacing the bundle's own.
    max_input_tokens: longest input the model gets at once (default: the model's max_len).
    """

    def __init__(
        self,
        model: str | Path | Bundle | None = None,
        decoder: str | None = None,
        decoder_options: dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        batch_tokens: int = 4096,
        seed: int = 0,
        teacher: str | Path | Bundle | None = None,
        threads: int | None = None,
        max_input_tokens: int | None = None,
        truncate: bool = False,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()  # for batches; small ones run on one
        self.device = pick_device(device)
        if decoder is not None:  # a wrong name or option fails before any loading
            registry.resolve(decoder, decoder_options)
        self.bundle = _load(model, self.device)
        self._teacher_spec = teacher
        if decoder is None:
            decoder = "refine1" if self.bundle.kind == "lanmt" else "beam"
        self.name, cls, self.options = registry.resolve(decoder, decoder_options)
        self.decoder_class = cls
        decoding = self._decoding_bundle(cls)
        teacher_model = self._teacher_bundle(cls).model if cls.needs_teacher else None
        if teacher_model is not None:
            self._check_vocab(decoding, teacher_model)
        self.tokenizer = decoding.tokenizer
        if threads:
            self.tokenizer.threads = threads
        model = decoding.model
        if cls.model_kind == "lanmt":  # the runtime, built once per loaded model
            runtime = self.options.get("runtime", "auto")
            compute_type = self.options.get("compute_type", "auto")
            model = decoding.nat_runtime(runtime, compute_type, self.threads)
        self.decoder: Decoder = cls(model, teacher_model, **self.options)
        limit = decoding.config.max_len
        if teacher_model is not None:
            limit = min(limit, teacher_model.config.max_len)
        self.max_input_tokens = max(1, min(max_input_tokens or limit, limit))
        self.batch_tokens = max(1, batch_tokens)
        self.seed = seed
        self.truncate = truncate

    # -- loading --------------------------------------------------------------------------
    def _teacher_bundle(self, cls: type[Decoder]) -> Bundle:
        if self._teacher_spec is not None:
            teacher = _load(self._teacher_spec, self.device)
            if teacher.kind != "transformer":
                raise LanmtError(
                    f"--teacher {teacher.path}: a {teacher.kind} model, not an autoregressive "
                    "Transformer"
                )
            return teacher
        teacher = self.bundle.teacher()
        if teacher is None:
            raise LanmtError(
                f"decoder {self.name} needs an autoregressive teacher, and the model at "
                f"{self.bundle.path} has none; supply one with --teacher DIR|NAME (a Transformer "
                "bundle, like the teacher/ folder `lanmt train` writes), or pick a decoder "
                f"without a teacher: {', '.join(_decoders_without_teacher())}"
            )
        return teacher

    def _decoding_bundle(self, cls: type[Decoder]) -> Bundle:
        """The bundle whose model the decoder runs: the LaNMT model or the teacher."""
        if cls.model_kind == "transformer":
            return self._teacher_bundle(cls)
        if cls.model_kind != self.bundle.kind:
            raise LanmtError(
                f"decoder {self.name} decodes {cls.model_kind} models, and the model at "
                f"{self.bundle.path} is a {self.bundle.kind} model; use --decoder beam"
            )
        return self.bundle

    @staticmethod
    def _check_vocab(decoding: Bundle, teacher) -> None:
        a, b = decoding.config, teacher.config
        if (a.src_vocab, a.tgt_vocab) != (b.src_vocab, b.tgt_vocab):
            raise LanmtError(
                f"the teacher's vocabularies ({b.src_vocab}, {b.tgt_vocab}) differ from the "
                f"model's ({a.src_vocab}, {a.tgt_vocab}); it cannot score its outputs"
            )

    # -- the steps ------------------------------------------------------------------------
    def encode(self, lines: list[str]) -> list[list[int]]:
        """Source token ids of each line (no splitting)."""
        return self.tokenizer.encode_src([line.strip() for line in lines])

    def split(self, line: str, ids: list[int]) -> tuple[list[list[int]], bool]:
        """The pieces `line` is translated in (at most max_input_tokens each), and whether
        it was truncated. Splits between words; a single overlong word is cut by tokens."""
        limit = self.max_input_tokens
        if len(ids) <= limit:
            return ([ids] if ids else []), False
        if self.truncate:
            return [ids[:limit]], True
        pieces: list[list[int]] = [[]]
        for word in self.encode(line.split()):  # SentencePiece encodes words independently
            for start in range(0, len(word), limit):
                part = word[start : start + limit]
                if len(pieces[-1]) + len(part) > limit:
                    pieces.append([])
                pieces[-1].extend(part)
        return [p for p in pieces if p], False

    def batches(self, sentences: list[list[int]]) -> list[list[int]]:
        """Indices of `sentences` in batches of similar length, at most batch_tokens padded
        tokens each (a longer sentence alone), shortest first."""
        order = sorted(range(len(sentences)), key=lambda i: (len(sentences[i]), i))
        batches: list[list[int]] = []
        for i in order:
            width = max(1, len(sentences[i]))  # the longest so far: sorted by length
            if batches and (len(batches[-1]) + 1) * width <= self.batch_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def decode_batch(self, sentences: list[list[int]]) -> list[Output]:
        """Decode one batch of source id lists (not empty); what the bench times.

        A batch of under SMALL_BATCH_TOKENS padded tokens (lanmt_cli.devices) runs on one
        CPU thread, a larger one on `threads`."""
        src = pad_tokens(sentences, self.device)  # (B, L)
        seeds = [content_seed(self.seed, ids) for ids in sentences]
        with torch.no_grad(), torch_threads(batch_threads(src.numel(), self.threads)):
            return self.decoder.decode(src, seeds)

    def detokenize(self, seqs: list[list[int]]) -> list[str]:
        """Target text of id sequences, post-processed as the decoder asks."""
        return detokenize(self.tokenizer, seqs, self.decoder_class.collapse_repeats)

    # -- all together ---------------------------------------------------------------------
    def translate(self, lines: list[str]) -> list[Result]:
        """One Result per line, in order."""
        if not lines:
            return []
        ids = self.encode(lines)
        split = [self.split(line, i) for line, i in zip(lines, ids, strict=True)]
        units = [piece for pieces, _ in split for piece in pieces]  # every piece of every line
        outputs: list[Output | None] = [None] * len(units)
        for batch in self.batches(units):
            for i, out in zip(batch, self.decode_batch([units[i] for i in batch]), strict=True):
                outputs[i] = out
        texts = iter(self.detokenize([o.tokens for o in outputs]) if outputs else [])
        results, at = [], 0
        for line, (pieces, truncated) in zip(lines, split, strict=True):
            outs = outputs[at : at + len(pieces)]
            at += len(pieces)
            parts = [next(texts) for _ in outs]
            candidates = []
            if len(outs) == 1 and outs[0].candidates:
                cand_texts = self.detokenize([t for t, _ in outs[0].candidates])
                candidates = [
                    (t, s) for t, (_, s) in zip(cand_texts, outs[0].candidates, strict=True)
                ]
            results.append(
                Result(
                    source=line,
                    translation=" ".join(p for p in parts if p),
                    decoder=self.name,
                    score=sum(o.score for o in outs) if outs else None,
                    length=sum(len(o.tokens) for o in outs),
                    candidates=candidates,
                    pieces=len(pieces),
                    truncated=truncated,
                )
            )
        return results


def _decoders_without_teacher() -> list[str]:
    return [
        d["name"]
        for d in registry.describe()
        if not d["error"] and not d["needs_teacher"] and d["model_kind"] == "lanmt"
    ]
