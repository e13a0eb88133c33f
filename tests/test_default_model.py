"""The embedded English-German model: installed with the package, translates offline."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import sacrebleu
from typer.testing import CliRunner

from lanmt_cli import hub
from lanmt_cli.app import app
from lanmt_cli.bundle import read_config

DEFAULT = Path(hub.DEFAULT_MODEL_DIR)
VAL = Path(__file__).parent / "data" / "multi30k"

# The model is trained by recipes/multi30k_ende.sh and shipped in lanmt_cli/models/default/.


def test_default_model_ships_with_its_teacher_within_50_mb():
    meta = read_config(DEFAULT)
    assert meta["model"]["kind"] == "lanmt" and meta["languages"] == {"src": "en", "tgt": "de"}
    assert read_config(DEFAULT / meta["teacher"])["model"]["kind"] == "transformer"
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size <= 50_000_000, size


def test_quickstart_sentence_translates_to_german_with_no_model_option():
    result = CliRunner().invoke(app, ["translate"], input="Two dogs play in the snow.\n")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert "Hunde" in line and "Schnee" in line, line


@pytest.mark.parametrize("decoder", ["one-shot", "refine1"])
def test_default_model_translates_real_sentences(decoder, tmp_path):
    """On 100 Multi30k validation sentences the model is a real translator (BLEU well above 0)."""
    with gzip.open(VAL / "val.en.gz", "rt") as f:
        src = [next(f).rstrip("\n") for _ in range(100)]
    with gzip.open(VAL / "val.de.gz", "rt") as f:
        ref = [next(f).rstrip("\n") for _ in range(100)]
    result = CliRunner().invoke(app, ["translate", "-d", decoder], input="\n".join(src) + "\n")
    assert result.exit_code == 0, result.output
    hyps = result.stdout.splitlines()
    assert len(hyps) == len(src)
    assert sacrebleu.corpus_bleu(hyps, [ref]).score > 10


def test_models_lists_the_embedded_model():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["default"]["status"] == "embedded"
    assert rows["default"]["path"] == str(DEFAULT)
