"""The model bundle: save then load gives identical outputs; broken bundles say what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lanmt_cli.bundle import load_bundle, read_config, save_bundle
from lanmt_cli.errors import LanmtError
from lanmt_cli.model import LaNMT
from lanmt_cli.teacher import Transformer
from tests.tiny import lanmt_config, make_task, pad, teacher_config


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lanmt_cli.tokenizer import Tokenizer, train_sentencepiece

    text = [s for pair in make_task(500, seed=3) for s in pair]
    path = train_sentencepiece(text, tmp_path_factory.mktemp("spm") / "spm.model", vocab_size=55)
    return Tokenizer.load(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """A randomly initialised LaNMT bundle with its teacher, and the original models."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bundles")
    teacher = Transformer(teacher_config(tokenizer.tgt_vocab_size)).eval()
    lanmt = LaNMT(lanmt_config(tokenizer.tgt_vocab_size)).eval()
    langs = {"src": "en", "tgt": "de"}
    tdir = save_bundle(root / "teacher", teacher, tokenizer, languages=langs)
    ldir = save_bundle(root / "lanmt", lanmt, tokenizer, teacher=tdir, languages=langs)
    return ldir, lanmt, teacher


def test_save_then_load_gives_identical_outputs(saved, tokenizer):
    path, lanmt, teacher = saved
    bundle = load_bundle(path)
    src = pad(tokenizer.encode_src(["big red dog", "the old cat sits"]))
    tgt = pad(tokenizer.encode_tgt(["hund rot groß", "sitzt katze alt"]))
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(src, tgt)[0], lanmt(src, tgt)[0], rtol=0, atol=0)
        loaded_teacher = bundle.teacher()
        assert loaded_teacher is not None and loaded_teacher.kind == "transformer"
        torch.testing.assert_close(
            loaded_teacher.model.score(src, tgt), teacher.score(src, tgt), rtol=0, atol=0
        )
    assert bundle.meta["languages"] == {"src": "en", "tgt": "de"}
    assert bundle.tokenizer.encode_src(["big dog"]) == tokenizer.encode_src(["big dog"])
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp leftovers


def test_half_precision_storage_loads_close(saved, tokenizer, tmp_path):
    _, lanmt, _ = saved
    half = save_bundle(tmp_path / "half", lanmt, tokenizer, half=True)
    assert read_config(half)["dtype"] == "float16"
    bundle = load_bundle(half)
    src = pad(tokenizer.encode_src(["big red dog"]))
    with torch.no_grad():
        a = bundle.model.prior(bundle.model.encode_source(src)).mean
        b = lanmt.prior(lanmt.encode_source(src)).mean
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def broken_copy(saved, tmp_path):
    dest = tmp_path / "broken"
    shutil.copytree(saved[0], dest)
    return dest


def test_missing_weights_file_is_named(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(LanmtError, match="missing file model.safetensors"):
        load_bundle(path)


def test_missing_config_is_named(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(LanmtError, match="missing config.json"):
        load_bundle(path)


def test_unknown_format_version(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["format_version"] = 99
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LanmtError, match="unknown format version 99"):
        load_bundle(path)


def test_shapes_that_do_not_fit_the_config(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["ffn"] = 96
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LanmtError, match=r"has shape .* the config needs"):
        load_bundle(path)


def test_sizes_that_do_not_fit_the_weights_allocate_nothing(saved, tmp_path):
    """The stored shapes are read from the file's header and compared with those of a model
    built on the meta device: a config of huge sizes fails before any memory is taken."""
    path = broken_copy(saved, tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["ffn"] = 10**10  # 10**10 x hidden floats: far more memory than any machine
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LanmtError, match=r"has shape .* the config needs"):
        load_bundle(path)
    meta["model"]["ffn"] = saved[1].config.ffn
    meta["model"]["decoder_layers"] = 100
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LanmtError, match=r"weights do not fit the config \(missing: decoder"):
        load_bundle(path)


@pytest.mark.parametrize("what", ["teacher", "model.safetensors"])
def test_a_link_out_of_the_bundle_is_refused(saved, tmp_path, what):
    """As for a tokenizer file: what a bundle holds lies inside it, links included."""
    path = broken_copy(saved, tmp_path)
    outside = tmp_path / f"outside-{what}"
    (path / what).rename(outside)
    (path / what).symlink_to(outside)
    with pytest.raises(LanmtError, match=f"{what} lies outside the bundle .*{outside}"):
        load_bundle(path)
    with pytest.raises(LanmtError, match=f"{what} lies outside the bundle"):
        read_config(path)


def test_a_teacher_that_is_not_a_transformer_is_refused(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    shutil.rmtree(path / "teacher")
    (path / "teacher").mkdir()
    for name in ("model.safetensors", "spm.model"):
        shutil.copy(path / name, path / "teacher" / name)
    meta = json.loads((path / "config.json").read_text())
    (path / "teacher" / "config.json").write_text(json.dumps({**meta, "teacher": None}))
    with pytest.raises(LanmtError, match="teacher is a lanmt model, not a Transformer"):
        load_bundle(path).teacher()


def test_a_link_inside_the_bundle_is_followed(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    (path / "teacher").rename(path / "teacher-1")
    (path / "teacher").symlink_to("teacher-1")
    assert load_bundle(path).teacher().kind == "transformer"


def test_unknown_config_field(saved, tmp_path):
    path = broken_copy(saved, tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["wings"] = 2
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LanmtError, match="unknown lanmt config fields: wings"):
        load_bundle(path)


def test_no_pickle_anywhere(saved):
    path = saved[0]
    files = [p for p in path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".model"}
