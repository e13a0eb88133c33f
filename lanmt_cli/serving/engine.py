"""The server's one contact with the translation core: a model loaded once, and a
`Translator` for each decoder and options that requests name, built from it on first use.

`translate` runs on the decoding threads (see `batcher`), concurrently where there are
several; `choose` and `count_tokens` are cheap and run where a request arrives.
"""

from __future__ import annotations

import gc
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from lanmt_cli.errors import LanmtError


@dataclass
class EngineConfig:
    """What `lanmt serve` loads and how it translates."""

    model: str | None = None  # bundle folder or installed name; None: the default model
    decoder: str | None = None  # the default decoder; None: refine1 (beam for a Transformer)
    options: dict[str, Any] = field(default_factory=dict)  # the default decoder's options
    teacher: str | None = None  # a Transformer replacing the bundle's teacher
    device: str = "auto"
    threads: int | None = None  # CPU threads of each decoding thread's batch
    batch_tokens: int = 4096  # padded source tokens per decoded batch
    seed: int = 0
    max_translators: int = 4  # decoders kept built at once (each may hold a model copy)


@dataclass(frozen=True)
class Choice:
    """A decoder with its complete, checked options: requests with equal choices share
    batches."""

    name: str  # registered name, e.g. "refine"
    options: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs, defaults filled in

    def as_dict(self) -> dict[str, Any]:
        return dict(self.options)


class Engine:
    """One loaded model bundle, translating lists of sentences with any installed decoder."""

    def __init__(self, config: EngineConfig):
        import sentencepiece as spm

        from lanmt_cli.bundle import load_bundle
        from lanmt_cli.devices import pick_device
        from lanmt_cli.hub import resolve_model

        self.config = config
        self.device = pick_device(config.device)
        self.bundle = load_bundle(resolve_model(config.model), device=self.device)
        self.teacher = None
        if config.teacher is not None:
            self.teacher = load_bundle(resolve_model(config.teacher), device=self.device)
        # Counting tokens runs where requests arrive, one line at a time: SentencePiece's
        # batch call starts threads each time (about 0.1 ms), a single line takes 5 us.
        self._counter = spm.SentencePieceProcessor(model_file=str(self.bundle.tokenizer.src_model))
        languages = self.bundle.meta.get("languages") or {}
        self.source: str | None = languages.get("src")
        self.target: str | None = languages.get("tgt")
        default = config.decoder or ("refine1" if self.bundle.kind == "lanmt" else "beam")
        self._choices: dict[str, Choice] = {}
        self._translators: OrderedDict[Choice, Any] = OrderedDict()
        self._failed: dict[Choice, LanmtError] = {}
        self._building = threading.Lock()  # decoding threads share the translators
        self.default = self.choose(default, config.options)
        self.translator(self.default)  # a default that cannot be built fails at start

    def choose(self, decoder: str, options: dict[str, Any] | None = None) -> Choice:
        """The checked choice of `decoder` with `options`; LanmtError names what is wrong."""
        from lanmt_cli import registry

        memo = json.dumps([decoder, options or {}], sort_keys=True, default=str)
        if memo not in self._choices:
            name, _, checked = registry.resolve(decoder, options)
            if len(self._choices) >= 1024:  # requests may name endless option values
                self._choices.clear()
            self._choices[memo] = Choice(name, tuple(sorted(checked.items())))
        return self._choices[memo]

    def translator(self, choice: Choice):
        """The `Translator` of `choice`, built once; beyond `max_translators`, the least
        recently used one (never the default) is dropped."""
        with self._building:
            return self._translator(choice)

    def _translator(self, choice: Choice):
        from lanmt_cli.translator import Translator

        if choice in self._failed:
            raise self._failed[choice]
        if choice not in self._translators:
            try:
                tr = Translator(
                    self.bundle,
                    choice.name,
                    choice.as_dict(),
                    device=self.device,
                    batch_tokens=self.config.batch_tokens,
                    seed=self.config.seed,
                    teacher=self.teacher,
                    threads=self.config.threads,
                )
            except LanmtError as err:  # e.g. a Transformer's decoder on a LaNMT-only bundle
                self._failed[choice] = err
                raise
            self._translators[choice] = tr
            while len(self._translators) > max(2, self.config.max_translators):
                keep = (self.default, choice)
                del self._translators[next(c for c in self._translators if c not in keep)]
        self._translators.move_to_end(choice)
        return self._translators[choice]

    def translate(self, choice: Choice, lines: list[str]) -> list:
        """One `Result` per line, in order, as `Translator.translate` gives them."""
        return self.translator(choice).translate(lines)

    def count_tokens(self, lines: list[str]) -> list[int]:
        """Source tokens of each line (at least 1): what a batch's budget counts."""
        return [max(1, len(self._counter.encode(line.strip()))) for line in lines]

    def warm_up(self) -> None:
        """Decode once, so that the first request does not pay for lazy set-up; then move
        every object loaded so far out of the garbage collector's full scans (`gc.freeze`):
        they are about 300,000 once torch is imported, and a full collection of them took
        0.2 s, which every request in flight waited for."""
        self.translate(self.default, ["A warm-up sentence."])
        gc.collect()
        gc.freeze()
