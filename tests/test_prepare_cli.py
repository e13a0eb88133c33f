"""`lanmt prepare` through the real Typer app: results, summary, and one-line errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lanmt_cli.app import app
from lanmt_cli.data import Corpus, read_meta
from tests.test_data import slice_corpus, write

runner = CliRunner()


def lanmt(*args: str):
    """`lanmt prepare ARGS...` in-process."""
    return runner.invoke(app, ["prepare", *map(str, args)])


@pytest.fixture
def text(tmp_path) -> dict[str, Path]:
    return slice_corpus(tmp_path / "text", n=1500)


def base_args(text: dict[str, Path], out: Path) -> list:
    return ["--train-src", text["train.en"], "--train-tgt", text["train.de.gz"], "--out", out]


def test_prepare_writes_splits_and_summary(text, tmp_path):
    out = tmp_path / "data"
    test_spec = f"test2016={text['val.en']},{text['val.de']}"
    result = lanmt(
        *base_args(text, out), "--valid-src", text["val.en"], "--valid-tgt", text["val.de"],
        "--test", test_spec, "--vocab-size", "900", "--model-type", "bpe", "--max-len", "60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for split in ("train", "valid", "test2016"):
        assert split in result.stdout
    assert f"wrote {out} (en-de, joint vocabulary 900" in result.stdout
    meta = read_meta(out)
    assert list(meta["splits"]) == ["train", "valid", "test2016"]
    assert meta["sentencepiece"]["model_type"] == "bpe" and meta["max_len"] == 60
    assert len(Corpus.open(out, "test2016")) == meta["splits"]["test2016"]["kept"]


def test_separate_vocabularies_and_languages(text, tmp_path):
    out = tmp_path / "data"
    args = [*base_args(text, out), "--separate", "--vocab-size", "500", "-s", "eng", "-t", "deu"]
    result = lanmt(*args)
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    assert meta["tokenizer_files"] == ["src.model", "tgt.model"]
    assert (meta["src_lang"], meta["tgt_lang"]) == ("eng", "deu")


def test_refuses_existing_dir_without_force(text, tmp_path):
    out = tmp_path / "data"
    assert lanmt(*base_args(text, out), "--vocab-size", "500").exit_code == 0
    result = lanmt(*base_args(text, out), "--vocab-size", "400")
    assert result.exit_code == 1
    assert result.stderr == f"error: {out} already exists; use --force to replace it\n"
    result = lanmt(*base_args(text, out), "--vocab-size", "400", "--force")
    assert result.exit_code == 0, result.output
    assert read_meta(out)["src_vocab_size"] == 400


def test_tokenizer_from(text, tmp_path):
    first = tmp_path / "first"
    assert lanmt(*base_args(text, first), "--vocab-size", "500").exit_code == 0
    second = tmp_path / "second"
    args = ["--train-src", text["val.en"], "--train-tgt", text["val.de"], "--out", second]
    result = lanmt(*args, "--tokenizer-from", first)
    assert result.exit_code == 0, result.output
    assert (second / "spm.model").read_bytes() == (first / "spm.model").read_bytes()


def bad_utf8(path: Path) -> Path:
    lines = [b"Ein Hund rennt.\n"] * 16 + [b"Ein Caf\xe9.\n"] + [b"Ein Hund.\n"] * 3
    path.write_bytes(gzip.compress(b"".join(lines)))
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "error: {tgt}: no such file"),
        ("empty", "error: {tgt} is empty"),
        ("mismatch", "error: {src} has 20 lines but {tgt} has 19"),
        ("utf8", "error: {tgt} line 17: not valid UTF-8"),
    ],
)
def test_input_errors_are_one_line(tmp_path, case, expected):
    src = write(tmp_path / "train.en", ["A dog runs."] * 20)
    tgt = tmp_path / "train.de.gz"
    if case == "empty":
        tgt.write_bytes(b"")
    elif case == "mismatch":
        write(tgt, ["Ein Hund rennt."] * 19)
    elif case == "utf8":
        bad_utf8(tgt)
    out = tmp_path / "out" / "data"
    result = lanmt("--train-src", src, "--train-tgt", tgt, "--out", out, "--vocab-size", "50")
    assert result.exit_code == 1
    assert result.stderr == expected.format(src=src, tgt=tgt) + "\n"
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["train.en"] + (["train.de.gz"] if case != "missing" else [])
    )  # neither out/ nor a temporary directory


def test_error_in_valid_split_leaves_nothing(text, tmp_path):
    out = tmp_path / "data"
    bad = bad_utf8(tmp_path / "val.de.gz")
    vals = write(tmp_path / "val.en", ["A dog."] * 20)
    result = lanmt(*base_args(text, out), "--valid-src", vals, "--valid-tgt", bad)
    assert result.exit_code == 1
    assert result.stderr == f"error: {bad} line 17: not valid UTF-8\n"
    assert not out.exists() and not list(tmp_path.glob(".data*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vocab-size", "90000"], "error: vocabulary size 90000 is too large for this data"),
        (["--test", "nonsense"], "error: --test expects NAME=SRC,TGT"),
        (["--test", "bad.name=a,b"], "error: split name 'bad.name' must be"),
        (["--valid-src", "x"], "error: --valid-src and --valid-tgt go together"),
        (["--tokenizer-from", "."], "error: . has no tokenizer"),
    ],
)
def test_option_errors(text, tmp_path, extra, message):
    out = tmp_path / "data"
    result = lanmt(*base_args(text, out), *extra)
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".data*"))
