"""Packaging: the wheel claims only the name `lanmt_cli`, the sdist builds it, and the shipped
bundle stores its SentencePiece model once (the teacher names `../spm.model`)."""

from __future__ import annotations

import configparser
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lanmt_cli import __version__, archive, hub
from lanmt_cli.app import app
from lanmt_cli.bundle import load_bundle, read_config, save_bundle
from lanmt_cli.errors import LanmtError
from lanmt_cli.model import LaNMT
from lanmt_cli.teacher import Transformer
from tests.tiny import lanmt_config, make_task, pad, teacher_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = Path(hub.DEFAULT_MODEL_DIR)
SOURCES = {
    "lanmt_cli": "lanmt_cli",
    "decoders": "lanmt_cli/decoders",
    "trainers": "lanmt_cli/trainers",
}
# A PEP 517 build with the installed setuptools, offline (what `python -m build -n` does).
BUILD = "import sys; from setuptools import build_meta as b; print(getattr(b, sys.argv[1])('..'))"


def git_files(*paths: str) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the checkout that exist."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *paths],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(n for n in out.split("\0") if n and (ROOT / n).is_file())


def build(hook: str, source: Path) -> Path:
    """Run a setuptools build hook in `source`; the result lands in its parent folder."""
    run = subprocess.run(
        [sys.executable, "-c", BUILD, hook], cwd=source, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return source.parent / run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The sdist built from a copy of the checkout, and the wheel built from that sdist."""
    work = tmp_path_factory.mktemp("build")
    for name in git_files():
        (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, work / "src" / name)
    sdist = build("build_sdist", work / "src")
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked", filter="data")
    (source,) = (work / "unpacked").iterdir()
    (work / "wheel").mkdir()
    shutil.move(source, work / "wheel" / source.name)
    return sdist, build("build_wheel", work / "wheel" / source.name)


@pytest.mark.slow  # builds the sdist and the wheel (the 49 MB model twice): seconds
def test_wheel_installs_only_lanmt_cli_and_every_source_file(built):
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = f"lanmt-{__version__}.dist-info"
        top_level = whl.read(f"{info}/top_level.txt").decode().split()
        metadata = whl.read(f"{info}/METADATA").decode().splitlines()
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.read_string(whl.read(f"{info}/entry_points.txt").decode())
    assert {n.split("/")[0] for n in names} == {"lanmt_cli", info}
    assert top_level == ["lanmt_cli"]
    assert {f"Version: {__version__}", "License-Expression: MIT", "License-File: LICENSE"} <= set(
        metadata
    )
    assert f"{info}/licenses/LICENSE" in names
    # Ray only with the train and serve-ray extras: an install that translates stays small
    requires = [m.partition(": ")[2] for m in metadata if m.startswith("Requires-Dist: ")]
    ray = [r for r in requires if r.startswith("ray")]
    extras = ('extra == "train"', 'extra == "serve-ray"')
    assert ray and all(any(e in r for e in extras) for r in ray), requires
    for source, package in SOURCES.items():
        for file in git_files(f"{source}/*.py", f"{source}/**/*.py"):
            assert f"{package}/{Path(file).relative_to(source).as_posix()}" in names, file
    shipped = {n for n in names if n.startswith("lanmt_cli/models/default/")}
    assert set(git_files("lanmt_cli/models")) == shipped
    targets = [v for group in entry_points.sections() for v in entry_points[group].values()]
    assert targets and all(v.startswith("lanmt_cli.") for v in targets), targets
    for target in targets:  # every entry point names a module the wheel holds
        assert target.split(":")[0].replace(".", "/") + ".py" in names, target


@pytest.mark.slow
def test_sdist_holds_the_package_and_either_all_test_files_or_none(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= names
    assert set(git_files("lanmt_cli", "decoders", "trainers")) <= names
    tests = {n for n in names if n.startswith("tests/")}
    assert not tests or set(git_files("tests")) <= tests, sorted(tests)


def test_git_marks_weights_and_tokenizers_binary():
    git_files()  # skips outside a checkout
    files = ["lanmt_cli/models/default/model.safetensors", "lanmt_cli/models/default/spm.model"]
    out = subprocess.run(
        ["git", "check-attr", "binary", "--", *files], cwd=ROOT, capture_output=True, text=True
    ).stdout.splitlines()
    assert out == [f"{f}: binary: set" for f in files]


def test_shipped_bundle_stores_its_tokenizer_once():
    files = sorted(p.relative_to(DEFAULT).as_posix() for p in DEFAULT.rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".model")] == ["spm.model"]
    assert read_config(DEFAULT / "teacher")["tokenizer"] == {
        "src": "../spm.model",
        "tgt": "../spm.model",
    }
    bundle = load_bundle(DEFAULT)
    assert bundle.tokenizer.src_model == DEFAULT / "spm.model"
    assert bundle.teacher().tokenizer.src_model == DEFAULT / "spm.model"


def test_shipped_teacher_loads_and_translates_on_its_own():
    teacher = load_bundle(DEFAULT / "teacher")
    assert teacher.kind == "transformer" and teacher.tokenizer.src_vocab_size == 8000
    result = CliRunner().invoke(
        app,
        ["translate", "--model", str(DEFAULT / "teacher")],
        input="Two dogs play in the snow.\n",
    )
    assert result.exit_code == 0, result.output
    assert "Hunde" in result.stdout and "Schnee" in result.stdout, result.stdout


# The same layout on small random models with a real SentencePiece model.


def tokenizer_from(tmp: Path, seed: int):
    from lanmt_cli.tokenizer import Tokenizer, train_sentencepiece

    text = [s for pair in make_task(500, seed=seed) for s in pair]
    return Tokenizer.load(train_sentencepiece(text, tmp / "spm.model", vocab_size=55))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    tok = tokenizer_from(tmp_path_factory.mktemp("spm"), seed=3)
    teacher = Transformer(teacher_config(tok.tgt_vocab_size)).eval()
    lanmt = LaNMT(lanmt_config(tok.tgt_vocab_size)).eval()
    return tok, teacher, lanmt


@pytest.fixture
def shared(models, tmp_path) -> Path:
    """A LaNMT bundle whose teacher names `../spm.model`."""
    tok, teacher, lanmt = models
    tdir = save_bundle(tmp_path / "t", teacher, tok)
    return save_bundle(tmp_path / "shared", lanmt, tok, teacher=tdir, share_tokenizer=True)


def scores(teacher, tok) -> torch.Tensor:
    src = pad(tok.encode_src(["big red dog", "the old cat sits"]))
    tgt = pad(tok.encode_tgt(["hund rot groß", "sitzt katze alt"]))
    with torch.no_grad():
        return teacher.score(src, tgt)


def test_shared_tokenizer_is_stored_once_and_loads_with_and_without_the_outer_bundle(
    shared, models
):
    tok, teacher, _ = models
    assert not (shared / "teacher" / "spm.model").exists()
    assert read_config(shared / "teacher")["tokenizer"]["tgt"] == "../spm.model"
    for loaded in (load_bundle(shared).teacher(), load_bundle(shared / "teacher")):
        assert loaded.tokenizer.src_model == shared / "spm.model"
        torch.testing.assert_close(scores(loaded.model, tok), scores(teacher, tok), rtol=0, atol=0)


def test_only_an_embedded_teacher_may_name_a_file_outside_it(shared, tmp_path):
    alone = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(shared / "teacher", alone)
    shutil.copy(shared / "spm.model", alone.parent / "spm.model")  # beside it, in no bundle
    with pytest.raises(LanmtError, match=r"'\.\./spm\.model' lies outside the bundle"):
        load_bundle(alone)
    meta = json.loads((shared / "config.json").read_text())
    meta["tokenizer"]["src"] = "teacher/../../spm.model"  # a LaNMT bundle may not
    (shared / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LanmtError, match="lies outside the bundle"):
        read_config(shared)


@pytest.mark.parametrize("name", ["../../spm.model", "/etc/spm.model", "../teacher/../../x.model"])
def test_an_embedded_teacher_stays_inside_the_outer_bundle(shared, tmp_path, name):
    shutil.copy(shared / "spm.model", tmp_path / "spm.model")  # there, but outside the bundle
    config = shared / "teacher" / "config.json"
    meta = json.loads(config.read_text())
    meta["tokenizer"]["src"] = name
    config.write_text(json.dumps(meta))
    with pytest.raises(LanmtError, match="lies outside the"):
        load_bundle(shared / "teacher")
    with pytest.raises(LanmtError, match="lies outside the"):
        load_bundle(shared).teacher()


def test_missing_shared_tokenizer_is_named(shared):
    (shared / "spm.model").unlink()
    with pytest.raises(LanmtError, match=r"missing file \.\./spm\.model"):
        read_config(shared / "teacher")


def test_embedding_a_sharing_teacher_elsewhere_keeps_its_own_tokenizer(shared, models, tmp_path):
    """A teacher that shares `../spm.model`, put into a bundle with another tokenizer of the
    same size, brings its own file: it never takes up the new outer bundle's."""
    tok, teacher, _ = models
    other = tokenizer_from(tmp_path, seed=99)
    assert other.src_model.read_bytes() != tok.src_model.read_bytes()
    lanmt = LaNMT(lanmt_config(other.tgt_vocab_size)).eval()
    for share in (False, True):
        new = save_bundle(
            tmp_path / f"new-{share}",
            lanmt,
            other,
            teacher=shared / "teacher",
            share_tokenizer=share,
        )
        assert read_config(new / "teacher")["tokenizer"]["src"] == "spm.model"
        assert (new / "teacher" / "spm.model").read_bytes() == tok.src_model.read_bytes()
        loaded = load_bundle(new).teacher()
        torch.testing.assert_close(scores(loaded.model, tok), scores(teacher, tok), rtol=0, atol=0)
    again = save_bundle(tmp_path / "again", lanmt, tok, teacher=shared / "teacher")
    assert (again / "teacher" / "spm.model").is_file()  # sharing is asked for, never assumed


def test_pack_gives_a_sharing_teacher_packed_alone_its_own_tokenizer(shared, models, tmp_path):
    tok, teacher, _ = models
    for folder, name in ((shared, "whole"), (shared / "teacher", "alone")):
        entry = archive.pack(folder, tmp_path / "out", name=name)
        (tmp_path / name).mkdir()
        unpacked = archive.unpack(tmp_path / "out" / entry["file"], tmp_path / name)
        with tarfile.open(tmp_path / "out" / entry["file"]) as tar:
            models_in = sorted(n for n in tar.getnames() if n.endswith(".model"))
        assert models_in == [f"{name}/spm.model"]
        loaded = load_bundle(unpacked).teacher()
        torch.testing.assert_close(scores(loaded.model, tok), scores(teacher, tok), rtol=0, atol=0)
    assert read_config(tmp_path / "alone" / "alone")["tokenizer"]["src"] == "spm.model"


def test_ship_default_recipe_stores_the_tokenizer_once(shared, tmp_path):
    spec = importlib.util.spec_from_file_location("ship_default", ROOT / "recipes/ship_default.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    for teacher_dir in (None, shared / "teacher"):
        out = tmp_path / f"shipped-{teacher_dir is None}"
        recipe.ship(shared, out, teacher_dir)
        assert sorted(p.name for p in out.rglob("*.model")) == ["spm.model"]
        assert read_config(out / "teacher")["tokenizer"]["src"] == "../spm.model"
        assert read_config(out)["dtype"] == read_config(out / "teacher")["dtype"] == "float16"
        assert load_bundle(out / "teacher").kind == "transformer"


def test_training_copy_of_a_sharing_teacher_stands_alone(shared, tmp_path):
    from lanmt_cli.trainers.checkpoint import copy_bundle

    (tmp_path / "run").mkdir()
    copy_bundle(shared / "teacher", tmp_path / "run" / "teacher")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["teacher"]
    assert load_bundle(tmp_path / "run" / "teacher").kind == "transformer"
