"""Text reading, SentencePiece tokenization, binarized corpora and token batching."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lanmt_cli import data as data_mod
from lanmt_cli.data import (
    Corpus,
    NpyAppender,
    binarize_split,
    guess_lang,
    id_dtype,
    prepare_corpus,
    read_meta,
    token_batches,
)
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import check_parallel, count_lines, read_lines, read_parallel
from lanmt_cli.tokenizer import BOS, EOS, NUM_SPECIAL, PAD, UNK, Tokenizer, train_sentencepiece

ROOT = Path(__file__).resolve().parent.parent
# A slice of Multi30k carried in the project: 2,000 training and 200 validation lines.
MULTI30K = ROOT / "tests" / "data" / "multi30k"


def multi30k_dir() -> Path:
    return MULTI30K


def head(path: Path, n: int) -> list[str]:
    """The first `n` lines of a gzip text file."""
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def write(path: Path, lines: list[str]) -> Path:
    """Lines to a text file, gzip when the name ends in .gz."""
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def slice_corpus(directory: Path, n: int = 2000) -> dict[str, Path]:
    """The first `n` training pairs and 200 validation pairs of Multi30k en-de, as files."""
    src = multi30k_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "train.en": write(directory / "train.en", head(src / "train.en.gz", n)),
        "train.de.gz": write(directory / "train.de.gz", head(src / "train.de.gz", n)),
        "val.en": write(directory / "val.en", head(src / "val.en.gz", 200)),
        "val.de": write(directory / "val.de", head(src / "val.de.gz", 200)),
    }


@pytest.fixture
def corpus(tmp_path) -> dict[str, Path]:
    return slice_corpus(tmp_path / "text")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared directory (vocabulary 1000, joint) shared by the read-only tests."""
    files = slice_corpus(tmp_path_factory.mktemp("text"))
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_corpus(
        out,
        (files["train.en"], files["train.de.gz"]),
        valid=(files["val.en"], files["val.de"]),
        vocab_size=1000,
    )
    return out


# --- textio -------------------------------------------------------------------------------


def test_count_lines_with_and_without_final_newline(tmp_path):
    (tmp_path / "a").write_bytes(b"one\ntwo\n")
    (tmp_path / "b").write_bytes(b"one\ntwo")
    assert count_lines(tmp_path / "a") == count_lines(tmp_path / "b") == 2


def test_only_newline_ends_a_line(tmp_path):
    """U+2028, form feed and CR inside a line must not break the alignment."""
    lines = ["a\u2028b", "c\x0cd", "e\x1cf", "g"]
    write(tmp_path / "a", lines)
    assert count_lines(tmp_path / "a") == 4
    assert [x for chunk in read_lines(tmp_path / "a") for x in chunk] == lines
    (tmp_path / "crlf").write_bytes(b"x\r\ny\r\n")
    assert next(read_lines(tmp_path / "crlf")) == ["x", "y"]


def test_gzip_reads_like_plain_text(corpus):
    plain = [x for chunk in read_lines(corpus["train.en"], 300) for x in chunk]
    gz = write(corpus["train.en"].with_suffix(".en.gz"), plain)
    assert [x for chunk in read_lines(gz, 300) for x in chunk] == plain
    assert count_lines(gz) == len(plain) == 2000


def test_read_parallel_chunks(corpus):
    chunks = list(read_parallel(corpus["train.en"], corpus["train.de.gz"], chunk_lines=700))
    assert [len(s) for s, _ in chunks] == [700, 700, 600]
    assert all(len(s) == len(t) for s, t in chunks)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "bad.txt: no such file"),
        (b"", "bad.txt is empty"),
        (b"ok\n" * 16 + b"caf\xe9\nok\n", "bad.txt line 17: not valid UTF-8"),
        (b"ok\n\xe2\x82", "bad.txt line 2: not valid UTF-8"),
        (b"\x1f\x8b not gzip at all", "bad.txt: not a valid gzip file"),
    ],
)
def test_count_lines_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LanmtError) as err:
        count_lines(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mismatched_line_counts(tmp_path):
    a = write(tmp_path / "train.en", ["x"] * 1000)
    b = write(tmp_path / "train.de", ["y"] * 999)
    expected = f"{a} has 1000 lines but {b} has 999"
    with pytest.raises(LanmtError, match=expected):
        check_parallel(a, b)
    with pytest.raises(LanmtError, match=expected):
        list(read_parallel(a, b, chunk_lines=300))


# --- tokenizer ----------------------------------------------------------------------------


def test_joint_round_trip(corpus, tmp_path):
    lines = [x for chunk in read_lines(corpus["train.en"]) for x in chunk]
    de = [x for chunk in read_lines(corpus["train.de.gz"]) for x in chunk]
    model = train_sentencepiece(
        [corpus["train.en"], corpus["train.de.gz"]], tmp_path / "spm.model", 800
    )
    assert not list(tmp_path.glob(".spm.model*"))  # no temporary left over
    tok = Tokenizer.load(model)
    assert tok.joint and tok.src_vocab_size == tok.tgt_vocab_size == 800
    ids = tok.encode_tgt(de)
    assert all(NUM_SPECIAL <= i < 800 for seq in ids for i in seq)  # no BOS/EOS, no UNK
    assert tok.decode_tgt(ids) == [" ".join(x.split()) for x in de]
    assert tok.decode_src(tok.encode_src(lines[:50])) == [" ".join(x.split()) for x in lines[:50]]


def test_decode_drops_special_ids(tmp_path, corpus):
    tok = Tokenizer.load(train_sentencepiece([corpus["val.de"]], tmp_path / "m.model", 300))
    ids = tok.encode_tgt(["Ein Hund rennt."])[0]
    noisy = [BOS, *ids[:2], PAD, UNK, *ids[2:], EOS, PAD, PAD]
    assert tok.decode_tgt([noisy, np.array(ids), torch.tensor(ids)]) == ["Ein Hund rennt."] * 3


def test_separate_vocabularies_save_and_reload(corpus, tmp_path):
    src = train_sentencepiece([corpus["train.en"]], tmp_path / "a.model", 500, model_type="bpe")
    tgt = train_sentencepiece([corpus["train.de.gz"]], tmp_path / "b.model", 700)
    tok = Tokenizer.load(src, tgt)
    assert not tok.joint and (tok.src_vocab_size, tok.tgt_vocab_size) == (500, 700)
    (tmp_path / "out").mkdir()
    assert tok.save(tmp_path / "out") == tok.files() == ["src.model", "tgt.model"]
    again = Tokenizer.from_dir(tmp_path / "out")
    assert (again.src_vocab_size, again.tgt_vocab_size) == (500, 700)
    assert again.encode_tgt(["Ein Hund."]) == tok.encode_tgt(["Ein Hund."])


def test_tokenizer_errors(tmp_path, corpus):
    with pytest.raises(LanmtError, match="has no tokenizer"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(LanmtError, match="too large for this data"):
        train_sentencepiece([corpus["val.en"]], tmp_path / "x.model", 50_000)
    assert not (tmp_path / "x.model").exists()
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(LanmtError, match="not a SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")


# --- prepared corpora ---------------------------------------------------------------------


def test_layout_and_meta(prepared):
    names = sorted(p.name for p in prepared.iterdir())
    assert names == ["meta.json", "spm.model", "train", "valid"]
    assert sorted(p.name for p in (prepared / "train").iterdir()) == [
        "lines.npy", "src.ids.npy", "src.offsets.npy", "tgt.ids.npy", "tgt.offsets.npy",
    ]  # fmt: skip
    meta = read_meta(prepared)
    assert (meta["src_lang"], meta["tgt_lang"]) == ("en", "de")
    assert meta["src_vocab_size"] == meta["tgt_vocab_size"] == 1000
    assert meta["tokenizer_files"] == ["spm.model"]
    train = meta["splits"]["train"]
    assert train["pairs"] == 2000 and 1900 < train["kept"] <= 2000
    assert meta["splits"]["valid"]["max_ratio"] is None  # held-out data: no ratio filter
    assert not list(prepared.parent.glob(".data.*"))


def test_corpus_matches_encoding(prepared):
    """Every kept pair is the tokenizer's encoding of its input line, in order."""
    corpus = Corpus.open(prepared, "train")
    tok = Tokenizer.from_dir(prepared)
    meta = read_meta(prepared)["splits"]["train"]
    en = [x for chunk in read_lines(Path(meta["src_file"])) for x in chunk]
    de = [x for chunk in read_lines(Path(meta["tgt_file"])) for x in chunk]
    assert corpus.src_ids.dtype == np.uint16 and len(corpus) == meta["kept"]
    assert np.all(np.diff(corpus.lines) > 0)
    for i in (0, 1, len(corpus) // 2, len(corpus) - 1):
        src, tgt = corpus.pair(i)
        line = int(corpus.lines[i])
        assert src.tolist() == tok.encode_src([en[line]])[0]
        assert tgt.tolist() == tok.encode_tgt([de[line]])[0]
    assert corpus.src_lengths.sum() == meta["src_tokens"] == len(corpus.src_ids)
    assert corpus.tgt_lengths.sum() == meta["tgt_tokens"]


def test_filtering_counts(corpus, tmp_path):
    """Empty, over-long and lopsided training pairs are dropped and counted; held-out ones
    lose only empty and over-long pairs."""
    en = [x for chunk in read_lines(corpus["train.en"]) for x in chunk][:300]
    de = [x for chunk in read_lines(corpus["train.de.gz"]) for x in chunk][:300]
    en += ["", "A dog.", " ".join(["A dog runs."] * 20), "Dog", "Dog"]
    de += ["Ein Hund.", "", "Ein Hund rennt.", " ".join(["Ein Hund rennt."] * 3), "Hund"]
    a, b = write(tmp_path / "t.en", en), write(tmp_path / "t.de", de)
    out = tmp_path / "out"
    meta = prepare_corpus(
        out, (a, b), valid=(a, b), vocab_size=600, max_len=30, max_ratio=2.5, joint=False
    )
    tok = Tokenizer.from_dir(out)
    ls = np.array([len(x) for x in tok.encode_src(en)])
    lt = np.array([len(x) for x in tok.encode_tgt(de)])
    empty = np.minimum(ls, lt) == 0
    long = ~empty & (np.maximum(ls, lt) > 30)
    ratio = ~empty & ~long & (np.maximum(ls, lt) > 2.5 * np.minimum(ls, lt))
    assert empty.sum() == 2 and long.sum() >= 1 and ratio.sum() >= 1
    train, valid = meta["splits"]["train"], meta["splits"]["valid"]
    assert (train["empty"], train["too_long"], train["ratio"]) == (2, long.sum(), ratio.sum())
    assert train["kept"] == 305 - empty.sum() - long.sum() - ratio.sum()
    assert (valid["empty"], valid["too_long"], valid["ratio"]) == (2, long.sum(), 0)
    assert valid["kept"] == 305 - empty.sum() - long.sum()
    kept = Corpus.open(out, "train")
    assert kept.lines.tolist() == np.flatnonzero(~(empty | long | ratio)).tolist()
    assert kept.src_lengths.min() >= 1 and max(kept.src_lengths.max(), kept.tgt_lengths.max()) <= 30


def test_collate_pads_with_zero(prepared):
    corpus = Corpus.open(prepared, "valid")
    idx = [5, 0, 17, 3]
    src, tgt = corpus.collate(idx)
    assert src.dtype == tgt.dtype == torch.long
    assert src.shape == (4, corpus.src_lengths[idx].max())  # (B, Lx)
    assert tgt.shape == (4, corpus.tgt_lengths[idx].max())  # (B, Ly)
    for row, i in enumerate(idx):
        s, t = corpus.pair(i)
        assert src[row, : len(s)].tolist() == s.tolist() and not src[row, len(s) :].any()
        assert tgt[row, : len(t)].tolist() == t.tolist() and not tgt[row, len(t) :].any()
    assert (src != PAD).sum() == corpus.src_lengths[idx].sum()


def test_open_errors(prepared, tmp_path):
    with pytest.raises(LanmtError, match="no split 'test'.*has: train, valid"):
        Corpus.open(prepared, "test")
    with pytest.raises(LanmtError, match="not a prepared data directory"):
        Corpus.open(tmp_path, "train")


def test_binarize_split_adds_distilled_targets(prepared, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(prepared, data_dir)
    meta = read_meta(data_dir)["splits"]["train"]
    en = [x for chunk in read_lines(Path(meta["src_file"])) for x in chunk]
    distilled = write(tmp_path / "distill.de", [line.upper() for line in en])
    stats = binarize_split(data_dir, "distill", Path(meta["src_file"]), distilled)
    assert stats.pairs == 2000 and stats.kept == len(Corpus.open(data_dir, "distill"))
    new = read_meta(data_dir)["splits"]["distill"]
    assert (new["max_len"], new["max_ratio"]) == (100, 3.0)  # the corpus' own filter
    with pytest.raises(LanmtError, match="already has a split 'distill'"):
        binarize_split(data_dir, "distill", Path(meta["src_file"]), distilled)
    stats = binarize_split(
        data_dir, "distill", Path(meta["src_file"]), distilled, max_ratio=math.inf, force=True
    )
    assert stats.ratio == 0
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".")) == []
    other = Tokenizer.load(train_sentencepiece([distilled], tmp_path / "o.model", 300))
    with pytest.raises(LanmtError, match="differ from those of"):
        binarize_split(data_dir, "x", Path(meta["src_file"]), distilled, other)


def test_failure_leaves_nothing_behind(corpus, tmp_path, monkeypatch):
    out = tmp_path / "deep" / "out"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data_mod, "_binarize", boom)
    with pytest.raises(RuntimeError):
        prepare_corpus(out, (corpus["train.en"], corpus["train.de.gz"]), vocab_size=500)
    assert list(tmp_path.iterdir()) == [corpus["train.en"].parent]  # not even deep/


def test_force_replaces_only_prepared_dirs(corpus, tmp_path):
    out = tmp_path / "out"
    files = (corpus["val.en"], corpus["val.de"])
    prepare_corpus(out, files, vocab_size=400)
    with pytest.raises(LanmtError, match="already exists"):
        prepare_corpus(out, files, vocab_size=400)
    meta = prepare_corpus(out, files, vocab_size=300, force=True)
    assert read_meta(out)["src_vocab_size"] == meta["src_vocab_size"] == 300
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(LanmtError, match="refusing to replace"):
        prepare_corpus(tmp_path / "home", files, vocab_size=300, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "out", "text"]


def test_tokenizer_from_reuses_models(prepared, corpus, tmp_path):
    out = tmp_path / "again"
    meta = prepare_corpus(out, (corpus["val.en"], corpus["val.de"]), tokenizer_from=prepared)
    assert (out / "spm.model").read_bytes() == (prepared / "spm.model").read_bytes()
    assert meta["sentencepiece"] == {"from": str(prepared)}
    assert json.loads((out / "meta.json").read_text())["src_vocab_size"] == 1000


def test_npy_appender_and_dtypes(tmp_path):
    with NpyAppender(tmp_path / "a.npy", np.uint16) as w:
        w.append(np.arange(5))
        w.append(np.array([], dtype=np.int64))
        w.append(np.arange(65530, 65536))
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert a.dtype == np.uint16 and a.tolist() == [*range(5), *range(65530, 65536)]
    with NpyAppender(tmp_path / "e.npy", np.int64):
        pass
    assert np.load(tmp_path / "e.npy", mmap_mode="r").shape == (0,)
    assert (id_dtype(65536), id_dtype(65537)) == (np.uint16, np.int32)
    assert [guess_lang(Path(p)) for p in ("train.en", "x/train.de.gz", "corpus", "a.txt")] == [
        "en", "de", None, None,
    ]  # fmt: skip


# --- token batches ------------------------------------------------------------------------


def random_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(1, 120, n)
    return src, np.maximum(1, src + rng.integers(-10, 10, n))


def padded(batch: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> int:
    return len(batch) * max(src[batch].max(), tgt[batch].max())


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), max_size=400),
    max_tokens=st.integers(1, 2000),
    shuffle=st.booleans(),
)
def test_batches_respect_budget_and_cover_everything(lengths, max_tokens, shuffle):
    src = np.array([s for s, _ in lengths], dtype=np.int64)
    tgt = np.array([t for _, t in lengths], dtype=np.int64)
    batches = token_batches(src, tgt, max_tokens, seed=3, epoch=1, shuffle=shuffle)
    for b in batches:
        assert len(b) == 1 or padded(b, src, tgt) <= max_tokens
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))


def test_batches_deterministic_and_vary_by_epoch():
    src, tgt = random_lengths(5000)
    a = token_batches(src, tgt, 4096, seed=7, epoch=0)
    b = token_batches(src, tgt, 4096, seed=7, epoch=0)
    c = token_batches(src, tgt, 4096, seed=7, epoch=1)
    d = token_batches(src, tgt, 4096, seed=8, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    assert [x.tolist() for x in a] != [x.tolist() for x in d]
    assert all(padded(x, src, tgt) <= 4096 for x in a)
    # Length bucketing: little padding overall.
    real = sum(np.maximum(src, tgt)[x].sum() for x in a)
    assert real / sum(padded(x, src, tgt) for x in a) > 0.9


def test_batches_without_shuffle_go_shortest_first():
    src, tgt = random_lengths(2000)
    batches = token_batches(src, tgt, 2048, seed=0, epoch=0, shuffle=False)
    widths = [np.maximum(src, tgt)[b].max() for b in batches]
    assert widths == sorted(widths)
    assert token_batches(src, tgt, 2048, seed=1, epoch=5, shuffle=False)[0].tolist() == (
        batches[0].tolist()
    )


def test_over_long_pair_gets_its_own_batch():
    src, tgt = np.array([5, 500, 5, 6]), np.array([5, 20, 6, 400])
    batches = token_batches(src, tgt, 100, seed=0, epoch=0, shuffle=False)
    assert [b.tolist() for b in batches] == [[0, 2], [3], [1]]


@pytest.mark.parametrize("world_size", [2, 3, 8])
def test_shards_disjoint_equal_and_covering(world_size):
    src, tgt = random_lengths(3000, seed=world_size)
    every = token_batches(src, tgt, 1500, seed=1, epoch=2)
    shards = [
        token_batches(src, tgt, 1500, seed=1, epoch=2, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert len({len(s) for s in shards}) == 1  # every rank takes as many steps
    seen = np.concatenate([b for s in shards for b in s])
    assert len(seen) == len(set(seen.tolist()))  # disjoint
    assert sum(map(len, shards)) > len(every) - world_size
    assert len(every) - sum(map(len, shards)) < world_size  # all but < world_size batches
    with pytest.raises(ValueError, match="rank"):
        token_batches(src, tgt, 1500, seed=1, epoch=2, rank=world_size, world_size=world_size)
