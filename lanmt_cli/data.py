"""Binarized parallel corpora: prepared once, then memory-mapped by the trainers.

A prepared directory holds the tokenizer, `meta.json`, and one subdirectory per
split; each side of a split is a flat array of token ids plus an offsets array::

    DIR/meta.json
    DIR/spm.model                      (joint; or src.model + tgt.model)
    DIR/train/src.ids.npy              uint16 ids (int32 when vocab > 65536), no BOS/EOS
    DIR/train/src.offsets.npy          int64, n + 1 entries: sentence i is ids[off[i]:off[i+1]]
    DIR/train/tgt.ids.npy, tgt.offsets.npy
    DIR/train/lines.npy                int64, 0-based line number of each kept pair in the input
    DIR/valid/...

Reading costs no Python object per sentence: `Corpus` memory-maps the arrays.
Everything is written in a temporary directory and renamed into place, so a
failure never leaves half a corpus.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lanmt_cli.errors import LanmtError
from lanmt_cli.locks import beside, hold
from lanmt_cli.padding import pad_rows
from lanmt_cli.textio import (
    atomic_dir,
    atomic_file,
    check_parallel,
    check_writable,
    read_once,
    read_parallel,
    remove_leftovers,
)
from lanmt_cli.tokenizer import (
    BOS,
    EOS,
    JOINT_MODEL,
    NUM_SPECIAL,
    PAD,
    SRC_MODEL,
    TGT_MODEL,
    UNK,
    Tokenizer,
    train_sentencepiece,
)

if TYPE_CHECKING:
    import torch

DATA_VERSION = 1
META_FILE = "meta.json"
CHUNK_LINES = 100_000
_NOT_LANGS = {"txt", "tok", "raw", "src", "tgt", "ref", "hyp", "out", "bpe", "spm", "tsv", "sgm"}
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]  # (split, pairs done, pairs in all)


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype for token ids: uint16 up to 65536 entries, else int32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def check_split_name(name: str) -> str:
    """Split names become directory names: letters, digits, `_` and `-` only."""
    if not _SPLIT_NAME.fullmatch(name):
        raise LanmtError(
            f"split name {name!r} must be letters, digits, '_' or '-' (like 'test2016')"
        )
    return name


class NpyAppender:
    """Write a 1-D `.npy` file whose length is known only at the end, chunk by chunk.

    The header is written with room to spare and rewritten with the final shape
    when the file is closed; readers see an ordinary `.npy` file.
    """

    HEADER_BYTES = 128  # magic + version + length + dict padded with spaces, a multiple of 64

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._file.write(self._header(0))

    def _header(self, count: int) -> bytes:
        descr = np.lib.format.dtype_to_descr(self.dtype)
        text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': ({count},), }}"
        size = self.HEADER_BYTES - 10  # 6 magic, 2 version, 2 header length
        return (
            b"\x93NUMPY\x01\x00"
            + size.to_bytes(2, "little")
            + text.ljust(size - 1).encode()
            + b"\n"
        )

    def append(self, values: np.ndarray) -> None:
        values = values.astype(self.dtype, copy=False)
        self._file.write(values.tobytes())
        self.count += len(values)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(self._header(self.count))
        self._file.close()

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()


@dataclass
class SplitStats:
    """How many pairs a split had, how many were kept, and why the others went."""

    pairs: int = 0
    kept: int = 0
    empty: int = 0  # a side with no tokens
    too_long: int = 0  # a side with more than max_len tokens
    ratio: int = 0  # longer side more than max_ratio times the shorter one
    src_tokens: int = 0  # in kept pairs
    tgt_tokens: int = 0

    @property
    def dropped(self) -> int:
        return self.pairs - self.kept


def _flatten(seqs: list[list[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (flat ids, lengths), without a Python object per token kept."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    ids = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(lengths.sum()))
    return ids, lengths


def _keep_mask(
    src_len: np.ndarray, tgt_len: np.ndarray, max_len: int | None, max_ratio: float | None
) -> tuple[np.ndarray, int, int, int]:
    """Pairs to keep, and how many went for each reason (first reason counts)."""
    shorter = np.minimum(src_len, tgt_len)
    longer = np.maximum(src_len, tgt_len)
    empty = shorter == 0
    too_long = ~empty & (longer > max_len) if max_len is not None else np.zeros_like(empty)
    if max_ratio is not None:
        ratio = ~empty & ~too_long & (longer > max_ratio * np.maximum(shorter, 1))
    else:
        ratio = np.zeros_like(empty)
    keep = ~(empty | too_long | ratio)
    return keep, int(empty.sum()), int(too_long.sum()), int(ratio.sum())


def _binarize(
    out: Path,
    src_file: Path,
    tgt_file: Path,
    tokenizer: Tokenizer,
    *,
    max_len: int | None,
    max_ratio: float | None,
    total: int,
    name: str,
    chunk_lines: int = CHUNK_LINES,
    progress: Progress | None = None,
) -> SplitStats:
    """Encode, filter and write one split into the (new, empty) directory `out`."""
    src_dtype = id_dtype(tokenizer.src_vocab_size)
    tgt_dtype = id_dtype(tokenizer.tgt_vocab_size)
    stats = SplitStats()
    src_end = tgt_end = 0
    with (
        NpyAppender(out / "src.ids.npy", src_dtype) as src_ids,
        NpyAppender(out / "tgt.ids.npy", tgt_dtype) as tgt_ids,
        NpyAppender(out / "src.offsets.npy", np.int64) as src_off,
        NpyAppender(out / "tgt.offsets.npy", np.int64) as tgt_off,
        NpyAppender(out / "lines.npy", np.int64) as lines,
    ):
        src_off.append(np.zeros(1, np.int64))
        tgt_off.append(np.zeros(1, np.int64))
        for src_text, tgt_text in read_parallel(src_file, tgt_file, chunk_lines):
            s_ids, s_len = _flatten(tokenizer.encode_src(src_text), src_dtype)
            t_ids, t_len = _flatten(tokenizer.encode_tgt(tgt_text), tgt_dtype)
            keep, empty, too_long, ratio = _keep_mask(s_len, t_len, max_len, max_ratio)
            src_ids.append(s_ids[np.repeat(keep, s_len)])  # ids of the kept sentences
            tgt_ids.append(t_ids[np.repeat(keep, t_len)])
            s_len, t_len = s_len[keep], t_len[keep]
            src_off.append(src_end + np.cumsum(s_len))
            tgt_off.append(tgt_end + np.cumsum(t_len))
            lines.append(stats.pairs + np.flatnonzero(keep))
            src_end += int(s_len.sum())
            tgt_end += int(t_len.sum())
            stats.pairs += len(keep)
            stats.kept += int(keep.sum())
            stats.empty += empty
            stats.too_long += too_long
            stats.ratio += ratio
            if progress:
                progress(name, stats.pairs, total)
    stats.src_tokens, stats.tgt_tokens = src_end, tgt_end
    return stats


def read_meta(data_dir: Path) -> dict[str, Any]:
    """The `meta.json` of a prepared directory."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise LanmtError(f"{data_dir} is not a prepared data directory (no {META_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LanmtError(f"{path}: unreadable ({err})") from None


def _write_meta(data_dir: Path, meta: dict[str, Any]) -> None:
    with atomic_file(Path(data_dir) / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _split_meta(
    src_file: Path,
    tgt_file: Path,
    stats: SplitStats,
    max_len: float | None,
    max_ratio: float | None,
) -> dict[str, Any]:
    """A split's entry in `meta.json`; a filter that is off is null."""
    return {
        "src_file": str(Path(src_file).resolve()),
        "tgt_file": str(Path(tgt_file).resolve()),
        "max_len": None if max_len in (None, math.inf) else max_len,
        "max_ratio": None if max_ratio in (None, math.inf) else max_ratio,
        **asdict(stats),
    }


def guess_lang(path: Path) -> str | None:
    """Language code from a file name such as `train.en` or `train.de.gz`, if it has one."""
    name = Path(path).name
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = name.rpartition(".")[2] if "." in name else ""
    if suffix in _NOT_LANGS or not re.fullmatch(r"[a-z]{2,3}([_-][A-Za-z]{2,4})?", suffix):
        return None
    return suffix


def binarize_split(
    data_dir: Path,
    split: str,
    src_file: Path,
    tgt_file: Path,
    tokenizer: Tokenizer | None = None,
    *,
    max_len: int | None = None,
    max_ratio: float | None = None,
    force: bool = False,
    chunk_lines: int = CHUNK_LINES,
    progress: Progress | None = None,
) -> SplitStats:
    """Add split `split` to the prepared directory `data_dir`, tokenized as the rest.

    `tokenizer` defaults to the directory's own; `max_len` and `max_ratio` default to
    the filter `prepare_corpus` applied to the training data (pass `math.inf` to
    switch one off). An existing split is replaced only with `force`. The split
    appears in `meta.json` only once all its files are in place.
    """
    data_dir = Path(data_dir)
    check_split_name(split)
    meta = read_meta(data_dir)
    if tokenizer is None:
        tokenizer = Tokenizer.from_dir(data_dir)
    elif (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size) != (
        meta["src_vocab_size"],
        meta["tgt_vocab_size"],
    ):
        raise LanmtError(
            f"tokenizer vocabulary sizes ({tokenizer.src_vocab_size}, {tokenizer.tgt_vocab_size})"
            f" differ from those of {data_dir} ({meta['src_vocab_size']}, {meta['tgt_vocab_size']})"
        )
    if not force and (split in meta["splits"] or (data_dir / split).exists()):
        raise LanmtError(f"{data_dir} already has a split {split!r}; use force to replace it")
    max_len = meta["max_len"] if max_len is None else max_len
    max_ratio = meta["max_ratio"] if max_ratio is None else max_ratio
    with atomic_dir(data_dir / split) as tmp, read_once([src_file, tgt_file], tmp) as path:
        total = check_parallel(path[0], path[1])
        stats = _binarize(
            tmp, path[0], path[1], tokenizer,
            max_len=max_len, max_ratio=max_ratio, total=total, name=split,
            chunk_lines=chunk_lines, progress=progress,
        )  # fmt: skip
    meta = read_meta(data_dir)
    meta["splits"][split] = _split_meta(src_file, tgt_file, stats, max_len, max_ratio)
    _write_meta(data_dir, meta)
    return stats


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        return
    if not force:
        raise LanmtError(f"{out_dir} already exists; use --force to replace it")
    if not out_dir.is_dir():
        raise LanmtError(f"{out_dir} exists and is not a directory")
    if any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file():
        raise LanmtError(
            f"{out_dir} is not empty and not a prepared data directory (no {META_FILE}); "
            "refusing to replace it"
        )


def prepare_corpus(
    out_dir: Path,
    train: tuple[Path, Path],
    *,
    valid: tuple[Path, Path] | None = None,
    tests: Mapping[str, tuple[Path, Path]] | None = None,
    vocab_size: int = 8000,
    joint: bool = True,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    sample_size: int = 1_000_000,
    max_len: int = 100,
    max_ratio: float = 3.0,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    tokenizer_from: Path | None = None,
    threads: int | None = None,
    force: bool = False,
    seed: int = 0,
    chunk_lines: int = CHUNK_LINES,
    log: Log | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Tokenize and binarize a parallel corpus into `out_dir`; return its `meta.json` content.

    Trains SentencePiece on (a sample of) the training pairs unless `tokenizer_from`
    names a directory holding one. The training split drops pairs with an empty
    side, a side over `max_len` tokens, or a length ratio over `max_ratio`; the
    valid and test splits drop only empty and over-long pairs, so that held-out
    scores stay comparable. Everything is built in a temporary directory next to
    `out_dir` and renamed into place at the end, under a lock (one `prepare` per output
    folder at a time). Pipes (`<(zcat a.gz)`) are read once, into a temporary copy.
    """
    out_dir = Path(out_dir)
    say = log or (lambda _msg: None)
    splits: dict[str, tuple[Path, Path]] = {"train": (Path(train[0]), Path(train[1]))}
    if valid is not None:
        splits["valid"] = (Path(valid[0]), Path(valid[1]))
    for name, (src, tgt) in (tests or {}).items():
        if name in splits:
            raise LanmtError(f"split name {name!r} is used twice")
        splits[check_split_name(name)] = (Path(src), Path(tgt))
    if max_len < 1:
        raise LanmtError(f"max length must be at least 1, got {max_len}")
    if max_ratio < 1:
        raise LanmtError(f"max length ratio must be at least 1, got {max_ratio}")
    _check_out_dir(out_dir, force)  # at once; again under the lock below
    check_writable(out_dir, folder=True, whole=True)
    start = time.monotonic()
    inputs = [p for pair in splits.values() for p in pair]
    with hold(beside(out_dir), f"{out_dir} is being prepared"):
        _check_out_dir(out_dir, force)  # again, under the lock: nobody else writes it now
        remove_leftovers(out_dir)  # of a prepare that was killed
        with atomic_dir(out_dir, replace=force) as tmp, read_once(inputs, tmp) as path:
            files = {name: (path[2 * i], path[2 * i + 1]) for i, name in enumerate(splits)}
            totals = {name: check_parallel(src, tgt) for name, (src, tgt) in files.items()}
            for name, (src, tgt) in splits.items():
                say(f"{name}: {totals[name]:,} pairs in {src} and {tgt}")
            if tokenizer_from is not None:
                tokenizer = Tokenizer.from_dir(Path(tokenizer_from))
                tokenizer.save(tmp)
                tokenizer = Tokenizer.from_dir(tmp)
                spm_meta: dict[str, Any] = {"from": str(tokenizer_from)}
            else:
                src_file, tgt_file = files["train"]
                kind = "joint" if joint else "separate"
                say(f"training {kind} SentencePiece {model_type} models, vocabulary {vocab_size:,}")
                spm_meta = {
                    "model_type": model_type,
                    "vocab_size": vocab_size,
                    "character_coverage": character_coverage,
                    "sample_size": sample_size,
                    "seed": seed,
                }
                opts = {k: v for k, v in spm_meta.items() if k != "vocab_size"}
                opts["threads"] = threads
                if joint:
                    train_sentencepiece([src_file, tgt_file], tmp / JOINT_MODEL, vocab_size, **opts)
                    tokenizer = Tokenizer.load(tmp / JOINT_MODEL)
                else:
                    train_sentencepiece([src_file], tmp / SRC_MODEL, vocab_size, **opts)
                    train_sentencepiece([tgt_file], tmp / TGT_MODEL, vocab_size, **opts)
                    tokenizer = Tokenizer.load(tmp / SRC_MODEL, tmp / TGT_MODEL)
            if threads:
                tokenizer.threads = threads
            train_src, train_tgt = splits["train"]
            meta: dict[str, Any] = {
                "format": DATA_VERSION,
                "src_lang": src_lang or guess_lang(train_src),
                "tgt_lang": tgt_lang or guess_lang(train_tgt),
                "src_vocab_size": tokenizer.src_vocab_size,
                "tgt_vocab_size": tokenizer.tgt_vocab_size,
                "joint": tokenizer.joint,
                "tokenizer_files": tokenizer.files(),
                "special_ids": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
                "first_subword_id": NUM_SPECIAL,
                "sentencepiece": spm_meta,
                "max_len": max_len,
                "max_ratio": max_ratio,
                "splits": {},
            }
            for name, (src, tgt) in files.items():
                ratio = max_ratio if name == "train" else None
                (tmp / name).mkdir()
                stats = _binarize(
                    tmp / name, src, tgt, tokenizer,
                    max_len=max_len, max_ratio=ratio, total=totals[name], name=name,
                    chunk_lines=chunk_lines, progress=progress,
                )  # fmt: skip
                meta["splits"][name] = _split_meta(*splits[name], stats, max_len, ratio)
                say(f"{name}: kept {stats.kept:,} of {stats.pairs:,} pairs")
            meta["seconds"] = round(time.monotonic() - start, 1)
            _write_meta(tmp, meta)
    return meta


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Corpus:
    """One memory-mapped split of a prepared directory."""

    split: str
    src_ids: np.ndarray  # (total src tokens,) uint16 or int32
    src_offsets: np.ndarray  # (n + 1,) int64
    tgt_ids: np.ndarray  # (total tgt tokens,)
    tgt_offsets: np.ndarray  # (n + 1,) int64
    lines: np.ndarray  # (n,) int64: line of each pair in the input files

    @classmethod
    def open(cls, data_dir: Path, split: str) -> Corpus:
        """Memory-map split `split` of the prepared directory `data_dir`."""
        data_dir = Path(data_dir)
        meta = read_meta(data_dir)
        if meta.get("format") != DATA_VERSION:
            raise LanmtError(f"{data_dir}: data format {meta.get('format')} is not supported")
        if split not in meta["splits"]:
            have = ", ".join(meta["splits"]) or "none"
            raise LanmtError(f"{data_dir} has no split {split!r} (has: {have})")
        d = data_dir / split

        def load(name: str) -> np.ndarray:
            return np.load(d / f"{name}.npy", mmap_mode="r")

        return cls(
            split, load("src.ids"), load("src.offsets"), load("tgt.ids"),
            load("tgt.offsets"), load("lines"),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @functools.cached_property
    def src_lengths(self) -> np.ndarray:
        """(n,) int64 source lengths in tokens."""
        return np.diff(self.src_offsets)

    @functools.cached_property
    def tgt_lengths(self) -> np.ndarray:
        """(n,) int64 target lengths in tokens."""
        return np.diff(self.tgt_offsets)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and target ids of pair `i` (read-only views)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} out of range for {len(self)} pairs")
        i %= len(self)
        s = self.src_ids[self.src_offsets[i] : self.src_offsets[i + 1]]
        t = self.tgt_ids[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]
        return s, t

    def collate(self, indices: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs `indices` as right-padded LongTensors: src (B, Lx), tgt (B, Ly); PAD = 0."""
        idx = np.asarray(indices, dtype=np.int64)  # (B,)
        return (
            pad_rows(self.src_ids, self.src_offsets, idx),
            pad_rows(self.tgt_ids, self.tgt_offsets, idx),
        )


def token_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    max_tokens: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> list[np.ndarray]:
    """Index batches of similar length, each padded to at most `max_tokens` tokens.

    A batch's padded size is `len(batch) * max(longest source, longest target)`; a
    single pair longer than `max_tokens` gets a batch of its own. With `shuffle`,
    pairs of equal length are ordered at random and the batches are shuffled, both
    determined by `(seed, epoch)`; without, batches come shortest first. Every rank
    computes the same batches and takes every `world_size`-th one, the remainder
    (fewer than `world_size` batches) dropped, so all ranks get as many batches.
    """
    src = np.asarray(src_lengths, dtype=np.int64)
    tgt = np.asarray(tgt_lengths, dtype=np.int64)
    if src.shape != tgt.shape or src.ndim != 1:
        raise ValueError(f"length arrays differ in shape: {src.shape} and {tgt.shape}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in range for world size {world_size}")
    longest = np.maximum(np.maximum(src, tgt), 1)  # (n,) padded width of each pair alone
    rng = np.random.default_rng([seed, epoch])
    # Sort by length; shuffling first makes the stable sort break ties at random.
    order = rng.permutation(len(longest)) if shuffle else np.arange(len(longest))
    key = longest[order]
    if len(key) and key.max() < 1 << 16:
        key = key.astype(np.uint16)  # numpy's stable sort is a radix sort for 16-bit keys
    order = order[np.argsort(key, kind="stable")]
    widths = longest[order]  # (n,) non-decreasing
    batches = []
    start = 0
    while start < len(order):
        window = widths[start : start + max(1, max_tokens // widths[start])]
        # (k + 1) * widths[start + k] grows with k: the batch ends where it first exceeds the budget
        over = np.arange(1, len(window) + 1) * window > max_tokens
        size = max(1, int(np.argmax(over))) if over.any() else len(window)
        batches.append(order[start : start + size])
        start += size
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    per_rank = len(batches) // world_size
    return batches[rank : per_rank * world_size : world_size]
