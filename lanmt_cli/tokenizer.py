"""SentencePiece subword tokenization with fixed special ids, joint or separate vocabularies.

Every model trained here, and every model `Tokenizer` accepts, has the special ids
`PAD=0, UNK=1, BOS=2, EOS=3`; real subwords start at `NUM_SPECIAL`. Encoding gives
ids without BOS/EOS: whoever builds model inputs adds what it needs.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lanmt_cli.config import BOS, EOS, NUM_SPECIAL, PAD, UNK  # noqa: F401 (re-exported)
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import atomic_file, iter_lines

if TYPE_CHECKING:
    import sentencepiece as spm

MODEL_TYPES = ("unigram", "bpe")
SAMPLE_BYTES = 50_000_000  # text SentencePiece trains on at most: about 1.2 GB of memory

JOINT_MODEL = "spm.model"
SRC_MODEL = "src.model"
TGT_MODEL = "tgt.model"


def default_threads() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _sentences(texts_or_files: Iterable[str] | Sequence[Path]) -> Iterator[str]:
    for item in texts_or_files:
        if isinstance(item, Path):
            yield from iter_lines(item)
        else:
            yield item


def _mean_line_bytes(files: Sequence[Path], probe: int = 10_000) -> float:
    """Mean UTF-8 size of a line, estimated from the first `probe` lines of each file."""
    sizes = [
        len(line.encode()) + 1 for f in files for line in itertools.islice(iter_lines(f), probe)
    ]
    return sum(sizes) / max(1, len(sizes))


def train_sentencepiece(
    texts_or_files: Iterable[str] | Sequence[Path],
    model_path: Path,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    sample_size: int = 1_000_000,
    sample_bytes: int = SAMPLE_BYTES,
    threads: int | None = None,
    seed: int = 0,
) -> Path:
    """Train a SentencePiece model on sentences or text files and write it to `model_path`.

    `texts_or_files` holds `Path`s (plain or gzip text files, read as a stream) or
    sentences (`str`). At most `sample_size` sentences, drawn uniformly at random
    (reservoir sampling), train the model; for files, fewer when their lines are
    long, so that the sample stays near `sample_bytes` of text (SentencePiece needs
    about 25 bytes of memory per byte of sample). The model is written under a
    temporary name and renamed, so `model_path` is either complete or absent.
    """
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise LanmtError(
            f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}"
        )
    if vocab_size <= NUM_SPECIAL:
        raise LanmtError(f"vocabulary size must be larger than {NUM_SPECIAL}, got {vocab_size}")
    model_path = Path(model_path)
    if isinstance(texts_or_files, Sequence) and all(isinstance(f, Path) for f in texts_or_files):
        sample_size = min(sample_size, max(1, int(sample_bytes / _mean_line_bytes(texts_or_files))))
    proto = io.BytesIO()
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=_sentences(texts_or_files),
            model_writer=proto,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=sample_size,
            shuffle_input_sentence=True,
            num_threads=threads or default_threads(),
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            minloglevel=2,
        )
    except RuntimeError as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        limit = re.search(r"<= (\d+)", message)
        if limit:
            raise LanmtError(
                f"vocabulary size {vocab_size} is too large for this data "
                f"(sentencepiece allows at most {limit.group(1)})"
            ) from None
        raise LanmtError(f"sentencepiece training failed: {message}") from None
    with atomic_file(model_path) as tmp:
        tmp.write_bytes(proto.getvalue())
    return model_path


def _load_processor(path: Path) -> spm.SentencePieceProcessor:
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise LanmtError(f"{path}: no such SentencePiece model")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as err:
        raise LanmtError(f"{path}: not a SentencePiece model ({err})") from None
    specials = [sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()]
    if specials != [PAD, UNK, BOS, EOS]:
        raise LanmtError(
            f"{path}: special ids (pad, unk, bos, eos) are {tuple(specials)}, expected (0, 1, 2, 3)"
        )
    return sp


def _as_ids(seq: Sequence[int]) -> list[int]:
    return seq.tolist() if hasattr(seq, "tolist") else list(seq)  # numpy arrays, tensors


class Tokenizer:
    """Source and target SentencePiece models; one shared model when `joint`."""

    def __init__(
        self, src_model: Path, tgt_model: Path | None = None, *, threads: int | None = None
    ):
        self.src_model = Path(src_model)
        self.tgt_model = None if tgt_model is None else Path(tgt_model)
        self.threads = threads or default_threads()
        self._src = _load_processor(self.src_model)
        self._tgt = self._src if self.tgt_model is None else _load_processor(self.tgt_model)

    @classmethod
    def load(cls, src_model: Path, tgt_model: Path | None = None) -> Tokenizer:
        """Load from model files; `tgt_model=None` means one joint model."""
        return cls(src_model, tgt_model)

    @classmethod
    def from_dir(cls, directory: Path) -> Tokenizer:
        """Load `spm.model` (joint) or `src.model` + `tgt.model` from `directory`."""
        directory = Path(directory)
        if (directory / JOINT_MODEL).is_file():
            return cls(directory / JOINT_MODEL)
        if (directory / SRC_MODEL).is_file() and (directory / TGT_MODEL).is_file():
            return cls(directory / SRC_MODEL, directory / TGT_MODEL)
        raise LanmtError(
            f"{directory} has no tokenizer ({JOINT_MODEL}, or {SRC_MODEL} and {TGT_MODEL})"
        )

    @property
    def joint(self) -> bool:
        return self.tgt_model is None

    @property
    def src_vocab_size(self) -> int:
        return self._src.vocab_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.vocab_size()

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        """Subword ids of each source line, without BOS/EOS."""
        return self._src.encode(lines, out_type=int, num_threads=self.threads)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        """Subword ids of each target line, without BOS/EOS."""
        return self._tgt.encode(lines, out_type=int, num_threads=self.threads)

    def _decode(self, sp: spm.SentencePieceProcessor, seqs: Sequence[Sequence[int]]) -> list[str]:
        size = sp.vocab_size()
        kept = [[i for i in _as_ids(seq) if NUM_SPECIAL <= i < size] for seq in seqs]
        return sp.decode(kept, num_threads=self.threads)

    def decode_src(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        """Text of each source id sequence; special ids are dropped."""
        return self._decode(self._src, seqs)

    def decode_tgt(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        """Text of each target id sequence; special ids (< 4) are dropped."""
        return self._decode(self._tgt, seqs)

    def files(self) -> list[str]:
        """File names `save` writes: `["spm.model"]` or `["src.model", "tgt.model"]`."""
        return [JOINT_MODEL] if self.joint else [SRC_MODEL, TGT_MODEL]

    def save(self, directory: Path) -> list[str]:
        """Copy the model files into `directory` under the names of `files()`; return them."""
        directory = Path(directory)
        sources = [self.src_model] if self.joint else [self.src_model, self.tgt_model]
        for source, name in zip(sources, self.files(), strict=True):
            target = directory / name
            if target.exists() and target.samefile(source):
                continue
            with atomic_file(target) as tmp:
                shutil.copyfile(source, tmp)
        return self.files()

    def __repr__(self) -> str:
        kind = "joint" if self.joint else "separate"
        return (
            f"Tokenizer({kind}, src_vocab={self.src_vocab_size}, tgt_vocab={self.tgt_vocab_size})"
        )
