"""CTranslate2 as the teacher's runtime: the converter is exact, converted once, found again."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from lanmt_cli import archive, ct2, registry
from lanmt_cli.bundle import load_bundle
from lanmt_cli.errors import LanmtError
from lanmt_cli.search import beam_search, greedy_search, max_lengths
from tests.tiny import pad

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def teacher(tiny_bundle):
    return load_bundle(tiny_bundle / "teacher")


@pytest.fixture(scope="module")
def sources(teacher, tiny_task):
    return teacher.tokenizer.encode_src([s for s, _ in tiny_task])


def test_greedy_on_ctranslate2_is_the_torch_teachers_token_for_token(teacher, sources):
    m = teacher.model
    src = pad(sources)
    engine = ct2.engine_for(m)
    for a, b in ((1.5, 10), (0.0, 2), (0.5, 0)):  # also where the length limit cuts
        limits = max_lengths(src, m, a, b).tolist()
        got = engine.search(sources, limits, beam=1)
        assert [h[0].tokens for h in got] == greedy_search(m, src, a, b)
    # its scores are the teacher's log-probabilities (EOS included)
    got = engine.search(sources, max_lengths(src, m, 1.5, 10).tolist(), beam=1)
    torch_scores = m.score(src, pad([h[0].tokens for h in got])).tolist()
    assert [h[0].score for h in got] == pytest.approx(torch_scores, abs=1e-4)
    hyps = beam_search(m, src, beam=1)
    assert [h[0].score for h in got] == pytest.approx([h[0].score for h in hyps], abs=1e-4)


def test_scoring_on_ctranslate2_equals_teacher_forcing(teacher, sources, tiny_task):
    targets = teacher.tokenizer.encode_tgt([t for _, t in tiny_task])
    per_token = ct2.engine_for(teacher.model).score(sources, targets)
    assert [len(p) for p in per_token] == [len(t) + 1 for t in targets]  # EOS scored
    expected = teacher.model.score(pad(sources), pad(targets)).tolist()
    assert [sum(p) for p in per_token] == pytest.approx(expected, abs=1e-4)


def test_int8_runs_and_mostly_agrees(teacher, sources):
    exact = registry.resolve("beam")[1](teacher.model).decode(pad(sources))
    int8 = registry.resolve("beam", {"compute_type": "int8"})[1]
    quick = int8(teacher.model, compute_type="int8").decode(pad(sources))
    same = sum(a.tokens == b.tokens for a, b in zip(exact, quick, strict=True))
    assert same >= 0.8 * len(sources)


def test_converted_once_keyed_by_the_weights(teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("LANMT_CACHE", str(tmp_path / "cache"))
    m = teacher.model
    first = ct2.model_dir(m)
    assert first.parent == tmp_path / "cache" / "ctranslate2"
    assert json.loads((first / ct2.KEY_FILE).read_text())["key"] == ct2.weights_key(m)
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert ct2.model_dir(m) == first and (first / "model.bin").stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # other weights, another conversion
    other = load_bundle(teacher.path).model
    with torch.no_grad():
        other.project.weight.add_(0.01)
    assert ct2.model_dir(other) != first
    # a broken cached copy is rebuilt
    (first / ct2.KEY_FILE).write_text("{")
    assert ct2.model_dir(m) == first and json.loads((first / ct2.KEY_FILE).read_text())


def test_a_bundle_carries_its_conversion(tiny_bundle_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("LANMT_CACHE", str(tmp_path / "cache"))
    assert ct2.teacher_folder(tiny_bundle_copy) == tiny_bundle_copy / "teacher"
    stored = ct2.store_in_bundle(tiny_bundle_copy / "teacher")
    assert stored == tiny_bundle_copy / "teacher" / ct2.FOLDER
    bundle = load_bundle(tiny_bundle_copy)
    assert ct2.model_dir(bundle.teacher().model, bundle.teacher().path) == stored
    assert not (tmp_path / "cache").exists()  # nothing converted again
    # `lanmt pack` puts it into the archive
    from typer.testing import CliRunner

    from lanmt_cli.app import app

    shutil.rmtree(stored)
    result = CliRunner().invoke(app, ["pack", str(tiny_bundle_copy), "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    import tarfile

    with tarfile.open(next((tmp_path / "a").glob("*.tar.gz"))) as tar:
        names = tar.getnames()
    assert "model/teacher/ctranslate2/model.bin" in names
    # a conversion that no longer fits the weights is not used
    with torch.no_grad():
        changed = load_bundle(tiny_bundle_copy / "teacher").model
        changed.project.weight.mul_(1.01)
    assert ct2.model_dir(changed, tiny_bundle_copy / "teacher") != stored


def _damage(folder: Path, how: str) -> None:
    """Damage a converted model as a disk error or a stray edit would."""
    if how == "model.bin":  # 4 KiB of 0xff in the middle
        with open(folder / "model.bin", "r+b") as f:
            f.seek(f.seek(0, 2) // 2)
            f.write(b"\xff" * 4096)
        return
    vocab = next(folder.glob("*vocabulary*"))
    names = json.loads(vocab.read_text())
    if how == "vocabulary swapped":  # two tokens trade places: silently wrong output
        names[5], names[6] = names[6], names[5]
    else:  # another model's vocabulary, of words
        names = names[:4] + [f"word{i}" for i in range(4, len(names))]
    vocab.write_text(json.dumps(names))


def _greedy(folder: Path, model, sources) -> list[list[int]]:
    limits = max_lengths(pad(sources), model, 1.5, 10).tolist()
    return [h[0].tokens for h in ct2.Engine(folder).search(sources, limits, beam=1)]


@pytest.mark.parametrize("how", ["model.bin", "vocabulary swapped", "vocabulary of words"])
def test_a_damaged_conversion_is_converted_again(teacher, sources, tmp_path, monkeypatch, how):
    """Every file of a conversion is checked against the sha256 recorded when it was made."""
    monkeypatch.setenv("LANMT_CACHE", str(tmp_path / "cache"))
    m = teacher.model
    folder = ct2.model_dir(m)
    expected = _greedy(folder, m, sources)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    _damage(folder, how)
    assert ct2.model_dir(m) == folder
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert _greedy(folder, m, sources) == expected


def test_a_damaged_conversion_in_a_bundle_is_not_used(tiny_bundle_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("LANMT_CACHE", str(tmp_path / "cache"))
    teacher_dir = tiny_bundle_copy / "teacher"
    stored = ct2.store_in_bundle(teacher_dir)
    _damage(stored, "model.bin")
    model = load_bundle(teacher_dir).model
    assert ct2.model_dir(model, teacher_dir).parent == tmp_path / "cache" / ct2.FOLDER
    assert ct2.store_in_bundle(teacher_dir) == stored  # `lanmt pack` converts it again
    assert ct2.model_dir(model, teacher_dir) == stored


def test_a_conversion_that_cannot_be_loaded_says_how_to_clear_it(teacher, tmp_path, monkeypatch):
    """Files that match their record but that CTranslate2 cannot read (another version of
    it, say) name the folder to delete."""
    monkeypatch.setenv("LANMT_CACHE", str(tmp_path / "cache"))
    folder = ct2.model_dir(teacher.model)
    (folder / "config.json").write_text("{")
    record = json.loads((folder / ct2.KEY_FILE).read_text())
    record["files"]["config.json"] = archive.sha256_file(folder / "config.json")
    (folder / ct2.KEY_FILE).write_text(json.dumps(record))
    assert ct2.model_dir(teacher.model) == folder  # as recorded: not converted again
    with pytest.raises(LanmtError, match=f"delete {folder} to have it converted again"):
        ct2.Engine(folder)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("beam", {"backend": "onnx"}, "backend takes one of ctranslate2, torch, got 'onnx'$"),
        ("teacher-rescore", {"backend": "tvm"},
         "backend takes one of auto, onnx, ctranslate2, torch, got 'tvm'$"),
        *((name, {"compute_type": "int3"},
           r"compute_type (of decoder \S+ )?takes one of (auto, )?default")
          for name in ("beam", "teacher-rescore")),
        ("teacher-rescore", {"backend": "onnx", "compute_type": "bfloat16"},
         "backend=onnx scores the teacher in float32 or int8 .*, not bfloat16$"),
    ],
)  # fmt: skip
def test_bad_backend_options_are_refused_before_loading(name, options, message):
    with pytest.raises(LanmtError, match=message) as err:
        registry.resolve(name, options)
    assert "\n" not in str(err.value)  # one line


def test_distillation_on_either_backend_gives_the_same_targets(tiny_bundle, tmp_path):
    from lanmt_cli.data import prepare_corpus
    from lanmt_cli.trainers.distill import distill
    from tests.tiny import make_task

    text = tmp_path / "text"
    text.mkdir()
    pairs = make_task(120, seed=7)
    (text / "train.en").write_text("".join(s + "\n" for s, _ in pairs))
    (text / "train.de").write_text("".join(t + "\n" for _, t in pairs))
    data = tmp_path / "data"
    prepare_corpus(
        data, (text / "train.en", text / "train.de"), tokenizer_from=tiny_bundle / "teacher"
    )
    out = {}
    for backend in ("ctranslate2", "torch"):
        result = distill(
            data, tiny_bundle / "teacher", tmp_path / backend, beam=2, show=False, backend=backend
        )
        assert result["backend"] == backend
        out[backend] = (tmp_path / backend / "train.distill.tgt").read_text()
    assert out["ctranslate2"] == out["torch"]


def _lines(path: Path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


@pytest.mark.slow
def test_beam3_bleu_of_the_shipped_teacher_is_the_same_on_ctranslate2(multi30k):
    """100 sentences of test_2016_flickr: beam 3 on both runtimes, the same BLEU."""
    import sacrebleu

    from lanmt_cli.translator import Translator

    model = ROOT / "lanmt_cli" / "models" / "default"
    src = _lines(multi30k / "test_2016_flickr.en.gz", 100)
    ref = _lines(multi30k / "test_2016_flickr.de.gz", 100)
    bleu = {}
    for backend in ("ctranslate2", "torch"):
        tr = Translator(model, "beam", {"backend": backend})
        out = [r.translation for r in tr.translate(src)]
        bleu[backend] = sacrebleu.corpus_bleu(out, [ref]).score
    assert bleu["ctranslate2"] == pytest.approx(bleu["torch"], abs=0.05)
    assert bleu["torch"] > 25
