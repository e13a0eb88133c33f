"""The teacher's scoring on ONNX Runtime: PyTorch's scores, exported once, teacher-rescore's
default."""

from __future__ import annotations

import pytest
import torch

from lanmt_cli import ct2, onnx_teacher, registry, runtime
from lanmt_cli.decoding import teacher_scores
from lanmt_cli.errors import LanmtError
from lanmt_cli.translator import Translator
from tests.tiny import pad

NOISY = {"samples": 6, "noise": 4.0, "steps": 0, "nbest": 100}  # several distinct candidates


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from lanmt_cli.bundle import load_bundle

    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def teacher(bundle):
    return bundle.teacher().model


@pytest.fixture(scope="module")
def candidates(bundle, tiny_task) -> tuple[torch.Tensor, list[int], list[list[int]]]:
    """src (B, Lx) of 16 sentences, and the distinct candidates the tiny NAT model offers for
    them (several a sentence, of different lengths): the row of each and its tokens."""
    tr = Translator(bundle, "teacher-rescore", {**NOISY, "lengths": 2, "backend": "torch"})
    ids = tr.encode([s for s, _ in tiny_task[:16]])
    outs = tr.decode_batch(ids)
    rows = [i for i, out in enumerate(outs) for _ in out.candidates]
    ys = [tokens for out in outs for tokens, _ in out.candidates]
    assert len(ys) > 2 * len(outs) and len({len(y) for y in ys}) > 3
    return pad(ids), rows, ys


def test_float32_scores_are_pytorchs(teacher, candidates):
    src, rows, ys = candidates
    exact = teacher_scores(teacher, src, rows, ys, "torch")
    assert teacher_scores(teacher, src, rows, ys, "onnx") == pytest.approx(exact, abs=1e-3)
    assert teacher_scores(teacher, src, rows, ys, "onnx", "float32") == pytest.approx(
        exact, abs=1e-3
    )


def test_the_graph_scores_each_token_and_eos_as_ctranslate2_does(teacher, candidates):
    src, rows, ys = candidates
    sources = [row[: int(n)] for row, n in zip(src.tolist(), (src != 0).sum(1), strict=True)]
    per_token = ct2.engine_for(teacher).score([sources[r] for r in rows], ys)
    session = onnx_teacher.scorer_for(teacher).session
    (logp,) = session.run(None, {"src": src[rows].numpy(), "tgt": pad(ys).numpy()})  # (N, Ly+1)
    assert logp.shape == (len(ys), max(map(len, ys)) + 1)
    for got, expected in zip(logp.tolist(), per_token, strict=True):
        assert got[: len(expected)] == pytest.approx(expected, abs=1e-4)  # EOS last
        assert not any(got[len(expected) :])  # 0 beyond


def test_int8_scores_are_close_and_each_candidates_own(teacher, candidates):
    src, rows, ys = candidates
    exact = teacher_scores(teacher, src, rows, ys, "torch")
    int8 = teacher_scores(teacher, src, rows, ys, "onnx", "int8")
    assert teacher_scores(teacher, src, rows, ys, "onnx", "int8_float32") == int8
    per_token = [abs(a - b) / (len(y) + 1) for a, b, y in zip(int8, exact, ys, strict=True)]
    assert sum(per_token) / len(per_token) < 0.1
    assert int8 != pytest.approx(exact, abs=1e-6)  # int8 did run
    # fixed input scales: a candidate scores the same alone and in any batch
    alone = [
        teacher_scores(teacher, src, [r], [y], "onnx", "int8")[0]
        for r, y in zip(rows, ys, strict=True)
    ]
    backwards = teacher_scores(teacher, src, rows[::-1], ys[::-1], "onnx", "int8")[::-1]
    assert alone == pytest.approx(int8, abs=1e-3)
    assert backwards == pytest.approx(int8, abs=1e-3)


def test_the_export_is_cached_and_a_damaged_graph_is_exported_again(teacher, monkeypatch):
    folder = onnx_teacher.model_dir(teacher, "int8")
    assert folder.parent.name == onnx_teacher.FOLDER
    graph = folder / onnx_teacher.graph_file("int8")
    stamp = graph.stat().st_mtime_ns
    exports = []
    monkeypatch.setattr(onnx_teacher, "export", lambda *a: exports.append(a))
    assert onnx_teacher.model_dir(teacher, "int8") == folder  # found, not exported again
    assert onnx_teacher.model_dir(teacher, "float32") == folder
    assert not exports and graph.stat().st_mtime_ns == stamp
    assert onnx_teacher.scorer_for(teacher, "int8") is onnx_teacher.scorer_for(teacher, "int8")
    monkeypatch.undo()
    with open(graph, "r+b") as f:  # 4 KB of 0xff into the graph
        f.seek(2048)
        f.write(b"\xff" * 4096)
    assert onnx_teacher.model_dir(teacher, "int8") == folder  # checksums differ: exported again
    scorer = onnx_teacher.OnnxTeacher(teacher, "int8")
    src = pad([[5, 6, 7]])
    expected = teacher_scores(teacher, src, [0], [[8, 9]], "torch")
    assert scorer.score(src, [0], [[8, 9]]) == pytest.approx(expected, abs=0.5)


@pytest.mark.parametrize(
    ("options", "backend"),
    [({}, "onnx"), ({"compute_type": "int8"}, "onnx"), ({"backend": "ctranslate2"}, "ctranslate2"),
     ({"compute_type": "bfloat16"}, "ctranslate2")],
)  # fmt: skip
def test_teacher_rescore_scores_on_onnx_runtime_by_default(options, backend):
    assert registry.resolve("teacher-rescore", options)[2]["backend"] == backend


def test_without_onnx_runtime_the_default_is_ctranslate2(monkeypatch):
    monkeypatch.setattr(runtime, "onnx_available", lambda: False)
    assert registry.resolve("teacher-rescore")[2]["backend"] == "ctranslate2"
    with pytest.raises(LanmtError, match="^backend=onnx needs ONNX Runtime: pip install"):
        registry.resolve("teacher-rescore", {"backend": "onnx"})


def test_a_compute_type_onnx_does_not_run_is_one_clear_error(teacher):
    with pytest.raises(LanmtError, match="ONNX Runtime scores the teacher in .* not 'int16'$"):
        onnx_teacher.OnnxTeacher(teacher, "int16")
    with pytest.raises(LanmtError, match="backend=onnx scores the teacher in float32 or int8"):
        teacher_scores(teacher, pad([[5]]), [0], [[6]], "onnx", "int16")
    with pytest.raises(LanmtError, match="^option backend takes one of auto, onnx, .*'tvm'$"):
        teacher_scores(teacher, pad([[5]]), [0], [[6]], "tvm")


@pytest.mark.parametrize("options", [{}, {**NOISY, "lengths": 3}])
def test_teacher_rescore_on_onnx_picks_what_it_picks_on_pytorch(bundle, tiny_task, options):
    sentences = [s for s, _ in tiny_task[:24]]
    exact = {**options, "compute_type": "float32"}  # auto may score in int8 (a CPU with AVX2)
    on_torch = Translator(bundle, "teacher-rescore", {**exact, "backend": "torch"})
    on_onnx = Translator(bundle, "teacher-rescore", {**exact, "backend": "onnx"})
    assert on_onnx.options["backend"] == "onnx"
    ids = on_torch.encode(sentences)
    choices = 0
    for a, b in zip(on_torch.decode_batch(ids), on_onnx.decode_batch(ids), strict=True):
        assert a.tokens == b.tokens
        assert dict((tuple(t), s) for t, s in b.candidates) == pytest.approx(
            dict((tuple(t), s) for t, s in a.candidates), abs=1e-3
        )
        choices += len(a.candidates) > 1
    assert choices  # the teacher had candidates to choose between
