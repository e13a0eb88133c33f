"""The decoders on the tiny trained model: what each algorithm promises, the registry, options."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lanmt_cli import registry
from lanmt_cli.decoders.refine import Refine
from lanmt_cli.decoding import (
    Decoder,
    Option,
    OptionError,
    content_seed,
    decode_latent,
    pad_tokens,
    refine,
)
from lanmt_cli.errors import LanmtError
from lanmt_cli.postprocess import clean_ids
from lanmt_cli.quantize import native_bf16
from lanmt_cli.search import beam_search, greedy_search
from lanmt_cli.translator import Translator
from tests.tiny import pad

DECODERS = ["one-shot", "refine1", "refine3", "latent-search", "teacher-rescore", "beam"]
# loud, unrefined samples: the tiny model's output then depends on each sentence's draw
NOISY = {"samples": 4, "noise": 4.0, "steps": 0}
SMALL = {"latent-search": NOISY, "teacher-rescore": NOISY}


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from lanmt_cli.bundle import load_bundle

    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def sources(tiny_task):
    return [s for s, _ in tiny_task]


def accuracy(translator: Translator, tiny_task) -> float:
    results = translator.translate([s for s, _ in tiny_task])
    hits = sum(r.translation == ref for r, (_, ref) in zip(results, tiny_task, strict=True))
    return hits / len(tiny_task)


def encode(bundle, sentences):
    ids = bundle.tokenizer.encode_src(sentences)
    return pad(ids), [content_seed(0, i) for i in ids]


# --- the algorithms ----------------------------------------------------------------------


def test_refinement_is_at_least_as_accurate_as_one_shot(bundle, tiny_task):
    one_shot = accuracy(Translator(bundle, "one-shot"), tiny_task)
    refined = accuracy(Translator(bundle, "refine1"), tiny_task)
    assert refined >= one_shot
    assert refined >= 0.6


def first_pass(m, src):
    """(source, tokens, scores): the encoded source and the one-shot decode of the prior mean."""
    with torch.no_grad():
        source = m.encode_source(src)
        return (source, *decode_latent(m, source, m.prior(source).mean))


def test_refine_stops_once_the_output_is_stable(bundle, sources):
    m = bundle.model
    src, _ = encode(bundle, sources[:16])
    source, first, scores = first_pass(m, src)
    with torch.no_grad():
        fixed, _, passes = refine(m, source, first, scores, steps=50)
        again, _, more = refine(m, source, fixed, scores, steps=50)
    assert passes < 50  # stopped early: every sentence reached a fixed point
    assert again == fixed and more == 1  # one pass confirms a fixed point and stops
    # refine with steps=0 is one-shot
    zero = Refine(m, steps=0).decode(src)
    one_shot = registry.resolve("one-shot")[1](m).decode(src)
    assert [o.tokens for o in zero] == [o.tokens for o in one_shot]


def test_latent_search_keeps_its_best_scoring_candidate(bundle, sources):
    src, seeds = encode(bundle, sources[:6])
    cls = registry.resolve("latent-search")[1]
    options = {"samples": 10, "noise": 4, "steps": 0, "nbest": 10}  # several distinct outputs
    outs = cls(bundle.model, **options).decode(src, seeds)
    assert any(len(out.candidates) > 1 for out in outs)
    for out in outs:
        assert out.candidates and out.candidates[0] == (out.tokens, out.score)
        assert out.score == max(s for _, s in out.candidates)
        assert len({tuple(t) for t, _ in out.candidates}) == len(out.candidates)  # distinct
    # the random seeds decide the samples: the same seeds give the same result
    again = cls(bundle.model, **options).decode(src, seeds)
    assert [o.candidates for o in again] == [o.candidates for o in outs]


def test_teacher_rescore_picks_what_the_teacher_scores_highest(bundle, sources):
    teacher = bundle.teacher().model
    src, seeds = encode(bundle, sources[:8])
    cls = registry.resolve("teacher-rescore")[1]
    # loud noise and no refinement: the tiny model then offers several distinct candidates
    options = dict(samples=12, noise=4, steps=0, nbest=100, lengths=1, normalize=False)
    outs = cls(bundle.model, teacher, compute_type="float32", **options).decode(src, seeds)
    several = 0
    for i, out in enumerate(outs):
        cands = [t for t, _ in out.candidates]
        several += len(cands) > 1
        # an independent teacher forward pass over every candidate of this sentence
        rows = src[i : i + 1].expand(len(cands), -1)
        independent = teacher.score(rows, pad(cands)).tolist()
        best = max(range(len(cands)), key=lambda k: independent[k])
        assert out.tokens == cands[best]
        assert independent == pytest.approx([s for _, s in out.candidates], abs=1e-3)
    assert several  # the test means something: some sentences had a choice to make


@pytest.mark.parametrize("backend", ["torch", "ctranslate2"])
@pytest.mark.parametrize(
    ("beam", "length_penalty"), [(1, 1.0), (4, 1.0), (4, 0.0), (4, 0.6), (4, 2.0)]
)
def test_beam_decoder_is_the_teachers_beam_search(bundle, sources, backend, beam, length_penalty):
    """On either runtime and with any length penalty: PyTorch's search token for token, with
    its scores."""
    teacher = bundle.teacher().model
    src, _ = encode(bundle, sources)
    cls = registry.resolve("beam")[1]
    opts = {"beam": beam, "length_penalty": length_penalty, "nbest": beam}
    outs = cls(teacher, backend=backend, **opts).decode(src)
    hyps = beam_search(teacher, src, **opts)
    assert [o.tokens for o in outs] == [h[0].tokens for h in hyps]
    assert [o.score for o in outs] == pytest.approx([h[0].score for h in hyps], abs=1e-4)
    if beam == 1:  # greedy: the very same search, so every step agrees
        assert [o.tokens for o in outs] == greedy_search(teacher, src)
    # every hypothesis reported carries the teacher's own (teacher-forced) log-probability
    for i, out in enumerate(outs):
        cands = [t for t, _ in out.candidates]
        forced = teacher.score(src[i : i + 1].expand(len(cands), -1), pad(cands)).tolist()
        assert forced == pytest.approx([s for _, s in out.candidates], abs=1e-4)


@pytest.mark.parametrize("name", DECODERS)
def test_each_sentence_decodes_the_same_in_any_batch(bundle, sources, name):
    """Batch-size invariance: alone, in a batch, in another order: the same output."""
    options = SMALL.get(name, {})
    tr = Translator(bundle, name, options, batch_tokens=100_000)
    ids = tr.encode(sources[:12])
    together = tr.decode_batch(ids)
    alone = [tr.decode_batch([i])[0] for i in ids]
    reordered = tr.decode_batch(ids[::-1])[::-1]
    for a, b, c in zip(together, alone, reordered, strict=True):
        assert a.tokens == b.tokens == c.tokens
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert [t for t, _ in a.candidates] == [t for t, _ in b.candidates]


# --- registry and options ----------------------------------------------------------------


def test_builtin_decoders_come_from_the_entry_point_group():
    regs = registry.registrations()
    for name in ("one-shot", "refine", "latent-search", "teacher-rescore", "beam"):
        (entry,) = regs[name]
        assert entry.package == "lanmt"
        assert issubclass(entry.load(), Decoder)


@pytest.mark.parametrize(
    ("spec", "options", "name", "expected"),
    [
        ("refine1", {}, "refine", {"steps": 1}),
        ("refine3", {}, "refine", {"steps": 3}),
        ("refine-3", {"steps": "3"}, "refine", {"steps": 3}),
        ("refine", {"steps": "4"}, "refine", {"steps": 4}),
        ("beam5", {"length_penalty": "0.6"}, "beam", {"beam": 5, "length_penalty": 0.6}),
        ("latent-search", {"noise": 1}, "latent-search", {"samples": 50, "noise": 1.0}),
        ("latent-search:samples=20, noise=0.3", {}, "latent-search", {"samples": 20, "noise": 0.3}),
        ("latent-search:samples=20", {"noise": 1}, "latent-search", {"samples": 20, "noise": 1.0}),
        ("refine3:steps=3", {}, "refine", {"steps": 3}),
    ],
)
def test_names_and_options_resolve(spec, options, name, expected):
    got_name, _, opts = registry.resolve(spec, options)
    assert got_name == name
    assert expected.items() <= opts.items()


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("refin", {}, "did you mean refine?"),
        ("nonsense", {}, "installed decoders: beam, latent-search, one-shot, refine"),
        ("one-shot2", {}, "takes no number"),
        ("refine", {"stepz": "2"}, "did you mean steps?"),
        ("refine", {"stepz": "2"}, "its options: steps (int, default 1"),
        ("refine", {"steps": "two"}, "takes int, got 'two'"),
        ("refine", {"steps": -1}, "must be at least 0"),
        ("refine", {"steps": 1.5}, "takes int"),
        ("latent-search", {"noise": "high"}, "takes float"),
        ("refine2", {"steps": "3"}, "sets steps=2"),
        ("refine2:steps=3", {}, "sets steps=2"),
        ("refine:steps=2", {"steps": 2}, "decoder option steps is given twice"),
        ("latent-search:", {}, "no options after ':'"),
        (":samples=2", {}, "no name"),
    ],
)
def test_bad_names_and_options_say_what_exists(spec, options, message):
    with pytest.raises(LanmtError) as err:
        registry.resolve(spec, options)
    assert message in str(err.value)


def test_option_parsing_from_strings():
    flag = Option("flag", bool, False, "a flag")
    assert flag.parse("yes") is True and flag.parse("0") is False
    with pytest.raises(OptionError):
        flag.parse("maybe")
    assert registry.parse_options(["steps=2", "length-penalty = 0.6"]) == {
        "steps": "2",
        "length_penalty": "0.6",
    }
    with pytest.raises(OptionError, match="key=value"):
        registry.parse_options(["steps"])
    # the original interface still takes Python values and refuses unknown options
    with pytest.raises(ValueError, match="no option"):
        Refine(None, stepz=1)


def test_teacher_decoders_without_a_teacher_say_how_to_supply_one(tiny_bundle_copy):
    config = tiny_bundle_copy / "config.json"
    meta = json.loads(config.read_text())
    meta["teacher"] = None
    config.write_text(json.dumps(meta))
    shutil.move(tiny_bundle_copy / "teacher", tiny_bundle_copy.parent / "teacher")
    for name in ("teacher-rescore", "beam"):
        with pytest.raises(LanmtError, match="--teacher") as err:
            Translator(tiny_bundle_copy, name)
        assert "has none" in str(err.value) and "refine" in str(err.value)
    # ... and --teacher supplies one
    tr = Translator(tiny_bundle_copy, "beam", teacher=tiny_bundle_copy.parent / "teacher")
    assert tr.translate(["red dog"])[0].translation == "hund rot"
    # a Transformer bundle decodes with beam by default and refuses LaNMT decoders
    teacher_dir = tiny_bundle_copy.parent / "teacher"
    assert Translator(teacher_dir).name == "beam"
    with pytest.raises(LanmtError, match="use --decoder beam"):
        Translator(teacher_dir, "refine1")


def test_postprocessing_drops_specials_and_collapses_repeats():
    assert clean_ids([5, 5, 0, 6, 3, 6, 7, 7, 7, 2]) == [5, 6, 7]
    assert clean_ids([5, 5, 6], collapse_repeats=False) == [5, 5, 6]
    assert clean_ids([0, 1, 2, 3]) == []


# --- length beam ---------------------------------------------------------------------------

LENGTH_BEAM = [
    ("one-shot", {"lengths": 3}),
    ("refine", {"lengths": 3, "steps": 2}),
    ("latent-search", {**NOISY, "lengths": 2, "steps": 1}),
    ("teacher-rescore", {**NOISY, "lengths": 3, "normalize": True}),
]


@pytest.mark.parametrize(("name", "options"), LENGTH_BEAM)
def test_length_beam_is_batch_size_invariant(bundle, sources, name, options):
    tr = Translator(bundle, name, options, batch_tokens=100_000)
    ids = tr.encode(sources[:12])
    together = tr.decode_batch(ids)
    alone = [tr.decode_batch([i])[0] for i in ids]
    for a, b in zip(together, alone, strict=True):
        assert a.tokens == b.tokens
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert [t for t, _ in a.candidates] == [t for t, _ in b.candidates]


def test_one_shot_length_beam_keeps_the_best_joint_score(bundle, sources):
    """Each of the N most likely lengths decoded; log p(length) + token log-probs picks."""
    m = bundle.model
    src, _ = encode(bundle, sources[:10])
    n = 4
    exact = {"runtime": "torch", "compute_type": "float32"}  # as the model's own computation
    outs = registry.resolve("one-shot")[1](m, lengths=n, **exact).decode(src)
    plain = registry.resolve("one-shot")[1](m, **exact).decode(src)
    with torch.no_grad():
        source = m.encode_source(src)
        z = m.prior(source).mean
        length_logp = m.length_logits(source, z).log_softmax(-1)  # (B, 2W)
        top = length_logp.topk(n, dim=-1)
    for i, out in enumerate(outs):
        lengths = [int(source.lengths[i]) + int(d) - m.config.length_window for d in top.indices[i]]
        lengths = [min(max(n, 1), m.config.max_len) for n in lengths]  # as the decoder clamps
        assert sorted(len(t) for t, _ in out.candidates) == sorted(lengths)
        expected = []
        for length, lp in zip(lengths, top.values[i].tolist(), strict=True):
            with torch.no_grad():
                logp = m.log_probs(source.select(torch.tensor([i])), z[i : i + 1],
                                   torch.tensor([length]))  # fmt: skip
            best, tokens = logp[0].max(-1)
            expected.append((tokens.tolist(), float(best.sum()) + lp))
        winner = max(expected, key=lambda c: c[1])
        assert out.tokens == winner[0] and out.score == pytest.approx(winner[1], abs=1e-4)
        # the most likely length is among them: the plain output is a candidate
        assert plain[i].tokens in [t for t, _ in out.candidates]


def test_refine_length_beam_candidate_zero_is_plain_refinement(bundle, sources):
    m = bundle.model
    src, _ = encode(bundle, sources[:10])
    plain = Refine(m, steps=2).decode(src)
    beam = Refine(m, steps=2, lengths=3).decode(src)
    for p, b in zip(plain, beam, strict=True):
        assert p.tokens in [t for t, _ in b.candidates]
        assert b.score == max(s for _, s in b.candidates)


def test_teacher_rescore_normalized_picks_the_best_per_token_score(bundle, sources):
    teacher = bundle.teacher().model
    src, seeds = encode(bundle, sources[:8])
    cls = registry.resolve("teacher-rescore")[1]
    options = {"samples": 2, "noise": 0.0, "steps": 0, "nbest": 100, "lengths": 4}
    options["compute_type"] = "float32"  # the teacher's exact scores (auto may be int8)
    for backend in ("onnx", "ctranslate2", "torch"):
        outs = cls(bundle.model, teacher, normalize=True, backend=backend, **options).decode(
            src, seeds
        )
        choices = 0
        for i, out in enumerate(outs):
            cands = [t for t, _ in out.candidates]
            choices += len({len(c) for c in cands}) > 1  # candidates of different lengths
            rows = src[i : i + 1].expand(len(cands), -1)
            per_token = [
                s / (len(c) + 1)
                for s, c in zip(teacher.score(rows, pad(cands)).tolist(), cands, strict=True)
            ]
            assert out.tokens == cands[max(range(len(cands)), key=lambda k: per_token[k])]
            assert per_token == pytest.approx([s for _, s in out.candidates], abs=1e-3)
        assert choices  # the length beam gave some sentences a choice of lengths


def test_refinement_computes_duplicate_candidates_once(bundle, sources, monkeypatch):
    """Latent-search candidates that coincide are refined once, with the same result."""
    m = bundle.model
    src, _ = encode(bundle, sources[:4])
    source, first, scores = first_pass(m, src)
    with torch.no_grad():
        expected, expected_scores, _ = refine(m, source, first, scores, steps=1)
        rows = torch.arange(4).repeat_interleave(3)  # every sentence three times
        sizes = []
        posterior = m.posterior
        monkeypatch.setattr(m, "posterior", lambda s, y: sizes.append(len(y)) or posterior(s, y))
        tokens, got_scores, _ = refine(
            m, source.select(rows), [first[i] for i in rows], [scores[i] for i in rows],
            steps=1, groups=rows.tolist(),
        )  # fmt: skip
    assert sizes == [4]
    assert tokens == [expected[i] for i in rows]
    assert got_scores == pytest.approx([expected_scores[i] for i in rows])


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("refine101", {}, "steps of decoder refine must be at most 100"),
        ("latent-search", {"steps": 101}, "must be at most 100"),
        ("one-shot", {"lengths": 21}, "lengths of decoder one-shot must be at most 20"),
        ("one-shot", {"lengths": 0}, "must be at least 1"),
        ("teacher-rescore", {"normalize": "maybe"}, "takes bool"),
        ("latent-search", {"samples": 1_000_000}, "samples of decoder latent-search must be at"),
        ("teacher-rescore1001", {}, "samples of decoder teacher-rescore must be at most 1000"),
        ("latent-search", {"samples": 100, "lengths": 20}, "samples x lengths .* at most 1000"),
        ("latent-search", {"nbest": 1001}, "nbest of decoder latent-search must be at most 1000"),
        ("beam", {"beam": 100_000}, "option beam of decoder beam must be at most 100, got"),
        ("beam", {"nbest": 101}, "option nbest of decoder beam must be at most 100, got 101"),
    ],
)
def test_length_beam_and_step_limits(spec, options, message):
    with pytest.raises(LanmtError, match=message):
        registry.resolve(spec, options)


def test_lanmt_decoders_json_lists_the_new_options():
    from typer.testing import CliRunner

    from lanmt_cli.app import app

    result = CliRunner().invoke(app, ["decoders", "--json"])
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("one-shot", "refine", "latent-search", "teacher-rescore"):
        assert "lengths" in [o["name"] for o in rows[name]["options"]]
    assert {"normalize", "backend", "compute_type"} <= {
        o["name"] for o in rows["teacher-rescore"]["options"]
    }
    assert {"backend", "compute_type"} <= {o["name"] for o in rows["beam"]["options"]}


def test_lanmt_decoders_shows_every_bound():
    """Options that cost time or memory have an upper bound, and `lanmt decoders` says it."""
    from typer.testing import CliRunner

    from lanmt_cli.app import app

    rows = {
        r["name"]: r for r in json.loads(CliRunner().invoke(app, ["decoders", "--json"]).stdout)
    }
    bounds = {(name, o["name"]): o["maximum"] for name, row in rows.items() for o in row["options"]}
    for name in ("latent-search", "teacher-rescore"):
        assert bounds[name, "samples"] == bounds[name, "nbest"] == 1000
        assert bounds[name, "steps"] == 100 and bounds[name, "lengths"] == 20
    assert bounds["refine", "steps"] == 100 and bounds["one-shot", "lengths"] == 20
    assert bounds["beam", "beam"] == bounds["beam", "nbest"] == 100
    text = CliRunner().invoke(app, ["decoders"]).stdout
    assert "--opt samples=INT  (default 50, >= 1, <= 1000)" in text
    assert "--opt beam=INT  (default 3, >= 1, <= 100)" in text


# --- refinement that cycles ------------------------------------------------------------------


def _orbits(m, source, steps: int) -> list[list[tuple[int, ...]]]:
    """The outputs of `steps` plain delta-posterior steps from one-shot, per sentence."""

    y, _ = decode_latent(m, source, m.prior(source).mean)
    orbits = [[tuple(t)] for t in y]
    for _ in range(steps):
        y, _ = decode_latent(m, source, m.posterior(source, pad_tokens(y, "cpu")).mean)
        for orbit, t in zip(orbits, y, strict=True):
            orbit.append(tuple(t))
    return orbits


@pytest.mark.slow
def test_refinement_stops_on_a_cycle_of_the_shipped_model():
    """Sentences whose refinement alternates (A, B, A, ...) stop once an output repeats,
    and the result no longer depends on whether N is odd or even (issue 14)."""
    import gzip
    from pathlib import Path

    from lanmt_cli import hub
    from lanmt_cli.bundle import load_bundle

    bundle = load_bundle(hub.DEFAULT_MODEL_DIR)
    m = bundle.model
    val = Path(__file__).parent / "data" / "multi30k" / "val.en.gz"
    with gzip.open(val, "rt", encoding="utf-8") as f:
        lines = ["A dog runs."] + [line.strip() for line in f]  # 3 of them cycle
    ids = bundle.tokenizer.encode_src(lines)
    with torch.no_grad():
        orbits = _orbits(m, m.encode_source(pad(ids)), 8)
    cycling = [i for i, o in enumerate(orbits) if o[-1] != o[-2] and o[-1] in o[:-1]]
    assert cycling, "the shipped model has sentences whose refinement cycles"
    src = pad([ids[i] for i in cycling])
    source, first, scores = first_pass(m, src)
    with torch.no_grad():
        _, _, passes = refine(m, source, first, scores, steps=100)
    assert passes <= 8
    even = Refine(m, steps=40, runtime="torch", compute_type="float32").decode(src)
    odd = Refine(m, steps=41, runtime="torch", compute_type="float32").decode(src)
    assert [o.tokens for o in even] == [o.tokens for o in odd]
    for out, i in zip(even, cycling, strict=True):
        assert tuple(out.tokens) in orbits[i]


def test_refine_beyond_the_step_limit_is_one_clear_line(tiny_bundle):
    from typer.testing import CliRunner

    from lanmt_cli.app import app

    result = CliRunner().invoke(
        app, ["translate", "-m", str(tiny_bundle), "-d", "refine101"], input="red dog\n"
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error:")
    ]
    assert "at most 100" in result.stderr
    ok = CliRunner().invoke(
        app, ["translate", "-m", str(tiny_bundle), "-d", "refine100"], input="red dog\n"
    )
    assert ok.exit_code == 0 and ok.stdout.strip() == "hund rot"


# --- runtimes: engines and compute types of the NAT model -----------------------------------

NEEDS_BF16 = pytest.mark.skipif(
    not native_bf16(),
    reason="bf16 decoding needs a CPU that multiplies bfloat16 (AVX512-BF16 or AMX)",
)


@pytest.mark.parametrize(
    ("runtime", "kind", "layer"),
    [("torch", "float32", "PackedLinear"), ("torch", "int8", "Int8Linear"),
     pytest.param("torch", "bfloat16", "PackedLinear", marks=NEEDS_BF16),
     ("onnx", "float32", None), ("onnx", "int8", None)],
)  # fmt: skip
def test_every_runtime_keeps_accuracy(bundle, tiny_task, runtime, kind, layer):
    exact = accuracy(Translator(bundle, "one-shot", {"runtime": "torch"}), tiny_task)
    for name in ("one-shot", "refine1"):
        low = Translator(bundle, name, {"runtime": runtime, "compute_type": kind})
        assert (low.decoder.engine, low.decoder.compute_type) == (runtime, kind)
        if runtime == "torch":
            project = low.decoder.model.project
            assert type(project).__name__ == layer
            if kind != "int8":
                assert project.dtype == (torch.bfloat16 if kind == "bfloat16" else torch.float32)
        else:
            assert type(low.decoder.model).__name__ == "OnnxLaNMT"
        assert bundle.model.project.__class__ is torch.nn.Linear  # the loaded model untouched
        assert accuracy(low, tiny_task) >= exact - 0.04
    expected = "compute_type of decoder refine takes one of auto, default, float32, int8"
    with pytest.raises(LanmtError, match=expected):
        registry.resolve("refine", {"compute_type": "int4"})
    with pytest.raises(LanmtError, match="runtime of decoder refine takes one of auto, onnx"):
        registry.resolve("refine", {"runtime": "tvm"})


@pytest.mark.parametrize("name", ["one-shot", "refine1"])
def test_onnx_float32_gives_the_tokens_of_pytorch(bundle, sources, name):
    ids = Translator(bundle, name).encode(sources[:40])
    torch_out = Translator(bundle, name, {"runtime": "torch", "compute_type": "float32"})
    onnx_out = Translator(bundle, name, {"runtime": "onnx", "compute_type": "float32"})
    assert onnx_out.decoder.engine == "onnx"
    for a, b in zip(torch_out.decode_batch(ids), onnx_out.decode_batch(ids), strict=True):
        assert a.tokens == b.tokens
        assert a.score == pytest.approx(b.score, abs=1e-3)


def test_one_loaded_model_builds_each_runtime_once(bundle):
    a = Translator(bundle, "one-shot", {"compute_type": "int8"})
    b = Translator(bundle, "refine3", {"compute_type": "int8"})
    c = Translator(bundle, "refine1", {"compute_type": "float32"})
    assert a.decoder.runtime is b.decoder.runtime is not c.decoder.runtime


def test_the_onnx_export_is_cached_and_a_damaged_file_is_exported_again(bundle, sources):
    from lanmt_cli import onnx_nat

    folder = onnx_nat.model_dir(bundle.model, "float32")
    stamp = (folder / "tokens.float32.onnx").stat().st_mtime_ns
    assert onnx_nat.model_dir(bundle.model, "float32") == folder  # found, not exported again
    assert (folder / "tokens.float32.onnx").stat().st_mtime_ns == stamp
    with open(folder / "tokens.float32.onnx", "r+b") as f:  # 4 KB of 0xff into the graph
        f.seek(2048)
        f.write(b"\xff" * 4096)
    onnx = onnx_nat.OnnxLaNMT(bundle.model, "float32", 1)  # checksums differ: exported again
    ids = Translator(bundle, "one-shot").encode(sources[:8])
    tr = Translator(bundle, "one-shot", {"runtime": "torch", "compute_type": "float32"})
    src = pad(ids)
    with torch.no_grad():
        source = onnx.encode_source(src)
        tokens, _ = onnx.best_tokens(source, onnx.prior(source).mean, onnx.predict_length(
            source, onnx.prior(source).mean))  # fmt: skip
    expected = [o.tokens for o in tr.decode_batch(ids)]
    assert [row[: len(e)] for row, e in zip(tokens.tolist(), expected, strict=True)] == expected


def test_onnx_sessions_share_the_process_thread_pool_and_memory_arena(bundle, sources):
    """Every session of both runtimes (the NAT model's graphs, the teacher's scorer) takes
    the process' one thread pool and one arena, and refine1 through them still gives
    PyTorch's tokens."""
    from lanmt_cli import onnx_nat

    tr = Translator(bundle, "refine1", {"compute_type": "float32"})
    assert tr.decode_batch(tr.encode(sources[:4]))  # both passes' sessions made
    onnx = tr.decoder.runtime.model
    sessions = [s for s, _ in onnx.sessions.values()]
    assert len(sessions) >= 2
    for options in [onnx.options, onnx_nat.session_options(1)]:
        assert options.get_session_config_entry("session.use_env_allocators") == "1"
        assert not options.use_per_session_threads
    torch_tr = Translator(bundle, "refine1", {"runtime": "torch", "compute_type": "float32"})
    ids = tr.encode(sources)
    assert [o.tokens for o in tr.decode_batch(ids)] == [o.tokens for o in
                                                        torch_tr.decode_batch(ids)]  # fmt: skip


@pytest.mark.parametrize(("capability", "kind"), [("AVX2", "int8"), ("AVX512", "int8"),
                                                   ("DEFAULT", "float32")])  # fmt: skip
def test_compute_type_auto_is_onnx_int8_where_the_cpu_has_integer_kernels(
    bundle, monkeypatch, capability, kind
):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    decoder = Translator(bundle, "refine1").decoder
    assert decoder.options["compute_type"] == "auto"
    assert (decoder.engine, decoder.compute_type) == ("onnx", kind)
    assert Translator(bundle, "refine1", {"runtime": "torch"}).decoder.compute_type == "float32"


def test_int8_graphs_quantize_with_fixed_scales_and_keep_the_latent_in_float32(bundle):
    import onnx

    from lanmt_cli import onnx_nat

    folder = onnx_nat.model_dir(bundle.model, "int8")
    for name in ("prior_pass", "posterior_pass"):
        graph = onnx.load(str(folder / f"{name}.int8.onnx")).graph
        consts = {t.name: t for t in graph.initializer}
        ops = [node.op_type for node in graph.node]
        assert ops.count("MatMulIntegerToFloat") > ops.count("QuantizeLinear") > 0
        assert "Round" not in ops and "Abs" not in ops  # no scale is computed while decoding
        for node in graph.node:
            if node.op_type == "QuantizeLinear":
                scale = onnx.numpy_helper.to_array(consts[node.input[1]])
                assert scale.shape == () and 0 < scale < 1  # one calibrated scale per input
        depths = [consts[n.input[1]].dims[0] for n in graph.node
                  if n.op_type == "MatMul" and n.input[1] in consts]  # fmt: skip
        assert bundle.model.config.latent_dim in depths  # z's product stays float32


def test_bf16_on_a_cpu_without_it_is_one_clear_error(bundle, monkeypatch):
    from lanmt_cli import quantize

    monkeypatch.setattr(quantize, "native_bf16", lambda: False)
    with pytest.raises(LanmtError, match="compute_type=bfloat16 needs a CPU that multiplies"):
        Translator(bundle, "one-shot", {"compute_type": "bfloat16"})


def test_the_cpu_probe_agrees_with_the_kernel():
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(cpuinfo.read_text().split())
    assert native_bf16() == bool({"avx512_bf16", "amx_tile"} & flags)


@pytest.mark.parametrize(
    ("runtime", "kind"),
    [pytest.param("torch", "bfloat16", marks=NEEDS_BF16), ("onnx", "int8"), ("torch", "int8")],
)
@pytest.mark.parametrize("name", ["one-shot", "refine1"])
def test_low_precision_decodes_each_sentence_the_same_in_any_batch(
    bundle, sources, name, runtime, kind
):
    tr = Translator(bundle, name, {"runtime": runtime, "compute_type": kind}, batch_tokens=100_000)
    ids = tr.encode(sources[:24])
    together = tr.decode_batch(ids)
    alone = [tr.decode_batch([i])[0] for i in ids]
    assert [a.tokens for a in together] == [b.tokens for b in alone]
    assert [a.score for a in together] == pytest.approx([b.score for b in alone], abs=0.05)


def test_packed_float32_linear_computes_what_linear_does():
    from lanmt_cli.quantize import PackedLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 40)
    packed = PackedLinear(linear)
    x = torch.randn(5, 3, 16)
    torch.testing.assert_close(packed(x), linear(x), atol=1e-5, rtol=1e-5)
    for i in range(5):  # a row's result does not depend on the other rows
        torch.testing.assert_close(packed(x[i : i + 1]), packed(x)[i : i + 1], atol=1e-6, rtol=0)


def test_fused_attention_projections_compute_what_separate_ones_do():
    import copy

    from lanmt_cli.layers import Layer, causal_mask, key_mask

    torch.manual_seed(0)
    layer = Layer(16, 2, 32, 0.0, cross=True).eval()
    fused = copy.deepcopy(layer)
    fused.self_attn.fuse(self_attention=True)
    fused.cross_attn.fuse(self_attention=False)
    assert fused.self_attn.k is None and fused.cross_attn.v is None  # one product each
    x, memory = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    valid = torch.rand(3, 7) > 0.3
    valid[:, 0] = True
    masks = (causal_mask(torch.ones(3, 5, dtype=torch.bool)), memory, key_mask(valid))
    with torch.no_grad():
        torch.testing.assert_close(fused(x, *masks), layer(x, *masks), atol=1e-5, rtol=1e-5)
        fused_cache, cache = {}, {}  # incremental decoding projects k, v from the fused weights
        for t in range(2):
            step = (x[:, t : t + 1], None, memory, key_mask(valid))
            torch.testing.assert_close(
                fused(*step, cache=fused_cache), layer(*step, cache=cache), atol=1e-5, rtol=1e-5
            )


def test_a_new_decoder_sees_a_model_that_has_changed_since_the_last(bundle, sources):
    """Validation during training makes a decoder per check: no stale inference copy."""
    from lanmt_cli.decoders.one_shot import OneShot
    from lanmt_cli.model import LaNMT

    model = LaNMT(bundle.model.config)
    model.load_state_dict(bundle.model.state_dict())
    src, _ = encode(bundle, sources[:8])
    before = OneShot(model).decode(src)
    with torch.no_grad():
        model.project.bias.add_(torch.randn_like(model.project.bias) * 100)
    after = OneShot(model).decode(src)
    assert [o.tokens for o in after] != [o.tokens for o in before]


def test_int8_linear_rows_do_not_depend_on_each_other():
    """Per-row input scales and exact integer products: a row's result is its own."""
    from lanmt_cli.quantize import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    q = Int8Linear(linear)
    x = torch.randn(5, 3, 16)
    x[4] *= 100  # a loud neighbour would change a per-tensor scale
    together = q(x)
    for i in range(5):
        assert torch.equal(q(x[i : i + 1]), together[i : i + 1])
    assert torch.allclose(together, linear(x), atol=0.05 * x.abs().max().item())


# --- CPU threads per batch -----------------------------------------------------------------


def test_small_batches_run_on_one_thread_and_large_ones_on_all(bundle, sources):
    from lanmt_cli.devices import SMALL_BATCH_TOKENS

    suite_threads = torch.get_num_threads()
    try:
        tr = Translator(bundle, "one-shot", threads=2)
        seen: list[int] = []
        decode = tr.decoder.decode

        def spy(src, seeds=None):
            seen.append(torch.get_num_threads())
            return decode(src, seeds)

        tr.decoder.decode = spy
        ids = tr.encode(sources)
        alone = tr.decode_batch(ids[:1])
        many = ids * (SMALL_BATCH_TOKENS // len(ids) + 1)
        together = tr.decode_batch(many)
        assert seen == [1, 2]
        assert torch.get_num_threads() == 2  # restored after each batch
        assert together[0].tokens == alone[0].tokens
    finally:
        torch.set_num_threads(suite_threads)  # what the other tests run with
