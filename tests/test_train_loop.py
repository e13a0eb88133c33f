"""In-process training: stages, checkpoints, resume, KL schedule, NaN handling, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lanmt_cli.app import app
from lanmt_cli.bundle import load_bundle
from lanmt_cli.data import Corpus
from lanmt_cli.errors import LanmtError
from lanmt_cli.postprocess import clean_ids, detokenize
from lanmt_cli.trainers.checkpoint import STATE_JSON, STATE_TENSORS, load_state, read_position
from lanmt_cli.trainers.config import TrainConfig
from lanmt_cli.trainers.loop import LOG_FILE, run_in_process
from lanmt_cli.trainers.schedule import kl_budget, learning_rate, parse_duration
from lanmt_cli.trainers.stages import Launch, distill_stage, train_stage
from lanmt_cli.trainers.validate import decode_corpus, decoder_fn, no_autocast
from tests.tiny import make_task

TINY = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64}
FAST = {"model": TINY, "max_tokens": 512, "warmup": 10, "lr": 3e-3, "bleu_sents": 20}
QUIET = Launch(show=False)


def prepare_tiny_data(dest: Path) -> Path:
    """A prepared data directory of the synthetic task (600 training pairs, 40 valid)."""
    from lanmt_cli.data import prepare_corpus

    text = dest.parent / f"{dest.name}-text"
    text.mkdir(parents=True)
    for split, n, seed in (("train", 600, 0), ("valid", 40, 1)):
        pairs = make_task(n, seed)
        (text / f"{split}.en").write_text("".join(s + "\n" for s, _ in pairs))
        (text / f"{split}.de").write_text("".join(t + "\n" for _, t in pairs))
    prepare_corpus(
        dest,
        (text / "train.en", text / "train.de"),
        valid=(text / "valid.en", text / "valid.de"),
        vocab_size=55,
    )
    return dest


def records(stage_dir: Path, event: str) -> list[dict]:
    lines = (stage_dir / LOG_FILE).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("train") / "data")


@pytest.fixture(scope="module")
def teacher_run(data_dir, tmp_path_factory) -> Path:
    """A run directory whose teacher stage trained for 40 updates."""
    run = tmp_path_factory.mktemp("run")
    opts = {**FAST, "max_steps": 40, "valid_every": 20, "log_every": 5}
    train_stage(run, "teacher", data_dir, opts, QUIET)
    return run


def test_teacher_learns_and_writes_bundles_without_pickle(teacher_run):
    sdir = teacher_run / "teacher"
    train = records(sdir, "train")
    assert train[-1]["step"] == 40
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    valid = records(sdir, "valid")
    assert [r["step"] for r in valid] == [20, 40]
    assert {"loss", "nll", "word_acc", "bleu"} <= set(valid[-1])
    result = json.loads((sdir / "result.json").read_text())
    assert result["step"] == 40 and result["world_size"] == 1  # replicas: test_train_ray
    for name in ("last", "best"):
        bundle = load_bundle(sdir / name)
        assert bundle.kind == "transformer" and bundle.meta["info"]["stage"] == "teacher"
    # the training state is safetensors and JSON only
    files = {p.name for p in (sdir / "last").iterdir()}
    assert files == {"config.json", "model.safetensors", "spm.model", STATE_JSON, STATE_TENSORS}
    state = load_state(sdir / "last")
    assert state.position.step == 40 and state.optimizer["state"]
    assert not (sdir / "best" / STATE_JSON).exists()


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(data_dir, tmp_path):
    """Exact equality: weights, Adam moments, data position and random state are restored."""
    base = {**FAST, "stage": "teacher", "data": str(data_dir), "max_steps": 14, "accum": 2}
    base |= {"valid_every": 4, "log_every": 1}  # dropout 0.1 stays on: RNG state matters

    class Interrupt(Exception):
        pass

    def interrupt(trainer) -> None:
        if trainer.pos.step == 10:  # two updates after the checkpoint at 8: they are done again
            raise Interrupt

    whole = run_in_process(TrainConfig(out=str(tmp_path / "a"), **base))
    with pytest.raises(Interrupt):
        run_in_process(TrainConfig(out=str(tmp_path / "b"), **base), on_update=interrupt)
    resumed = run_in_process(TrainConfig(out=str(tmp_path / "b"), resume=True, **base))
    assert whole["step"] == resumed["step"] == 14
    starts = records(tmp_path / "b", "start")
    assert [s["step"] for s in starts] == [0, 8]
    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kl_budget_follows_the_schedule_and_finetune_uses_zero(data_dir, teacher_run):
    lanmt = {**FAST, "train_split": "train", "max_steps": 12, "valid_every": 6, "log_every": 1}
    lanmt["kl_floor"] = 0.25
    train_stage(teacher_run, "lanmt", data_dir, lanmt, QUIET)
    sdir = teacher_run / "lanmt"
    train = records(sdir, "train")
    assert [r["step"] for r in train] == list(range(1, 13))
    for r in train:
        assert r["KL_budget"] == pytest.approx(kl_budget(r["step"], 12, 1.0, True, 0.25))
    assert train[0]["KL_budget"] == 1.0 and train[-1]["KL_budget"] == 0.25
    valid = records(sdir, "valid")
    assert {"len_loss", "len_acc", "loss", "word_acc", "KL_budget", "kl", "tok_kl", "nll"} <= set(
        valid[0]
    )
    # is the latent alive? and best/ is chosen by refine1 (the --select default)
    latent = {"acc_post", "acc_prior", "latent_gain", "prior_sigma", "post_sigma"}
    latent |= {"repeat_rate", "repeat_rate_refine1", "word_repeat_rate", "word_repeat_rate_refine1"}
    latent |= {"bleu_one_shot", "bleu_refine1", "bleu_oracle"}
    assert latent <= set(valid[0])
    for r in valid:
        assert r["bleu"] == r["bleu_refine1"]
        assert r["latent_gain"] == pytest.approx(r["acc_post"] - r["acc_prior"])
    # the repeat rates are those of the last checkpoint's refine1 outputs, counted here
    last = load_bundle(sdir / "last")
    corpus = Corpus.open(data_dir, "valid")
    hyps = decode_corpus(
        last.model,
        corpus,
        20,
        512,
        torch.device("cpu"),
        no_autocast,
        decoder_fn(last.model, "refine1"),
    )
    raw = [clean_ids(h, collapse_repeats=False) for h in hyps]
    pairs = [(a, b) for h in raw for a, b in zip(h, h[1:], strict=False)]
    assert valid[-1]["repeat_rate_refine1"] == sum(a == b for a, b in pairs) / sum(map(len, raw))
    words = [t.casefold().split() for t in detokenize(last.tokenizer, hyps)]
    doubled = sum(a == b for w in words for a, b in zip(w, w[1:], strict=False))
    assert valid[-1]["word_repeat_rate_refine1"] == doubled / sum(map(len, words))
    assert load_bundle(sdir / "last").teacher().kind == "transformer"

    finetune = {"max_tokens": 2048, "valid_per_epoch": 2, "bleu_sents": 20, "log_every": 1}
    result = train_stage(teacher_run, "finetune", data_dir, finetune, QUIET)
    fdir = teacher_run / "finetune"
    start = records(fdir, "start")[0]
    assert result["reason"] == "epochs" and result["step"] == start["updates_per_epoch"]
    assert all(r["KL_budget"] == 0.0 for r in records(fdir, "train") + records(fdir, "valid"))
    assert all(r["lr"] == 1e-4 for r in records(fdir, "train"))
    best = load_bundle(fdir / "best")
    assert best.kind == "lanmt" and best.teacher() is not None


def test_distillation_is_resumable_and_adds_a_split(data_dir, teacher_run, tmp_path):
    from lanmt_cli.data import Corpus, read_meta

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    run = tmp_path / "run"
    shutil.copytree(teacher_run / "teacher", run / "teacher")
    first = distill_stage(run, data, beam=2, show=False)
    assert "distill" in read_meta(data)["splits"]
    assert first["pairs"] == len(Corpus.open(data, "train"))
    lines = (run / "distill" / "train.distill.tgt").read_text().splitlines()
    # interrupted: the chunk is missing; --resume redoes only it, with the same output
    (run / "distill" / "chunks" / "00000.json").unlink()
    (run / "distill" / "result.json").unlink()
    with pytest.raises(LanmtError, match="--resume"):
        distill_stage(run, data, beam=2, show=False)
    again = distill_stage(run, data, beam=2, show=False, resume=True)
    assert (run / "distill" / "train.distill.tgt").read_text().splitlines() == lines
    assert again["kept"] == first["kept"]
    with pytest.raises(LanmtError, match="other settings"):
        distill_stage(run, data, beam=3, show=False, resume=True)


def test_missing_inputs_name_the_command_that_makes_them(data_dir, teacher_run, tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(LanmtError, match="lanmt train --stage teacher"):
        distill_stage(empty, data_dir, show=False)
    with pytest.raises(LanmtError, match="lanmt train --stage teacher"):
        train_stage(empty, "lanmt", data_dir, FAST, QUIET)
    with pytest.raises(LanmtError, match="lanmt train --stage distill"):
        train_stage(teacher_run, "lanmt", data_dir, FAST, QUIET, force=True)
    with pytest.raises(LanmtError, match="lanmt train --stage lanmt"):
        train_stage(empty, "finetune", data_dir, FAST, QUIET)


def test_non_finite_loss_skips_the_update_then_stops_training(data_dir, tmp_path):
    base = {**FAST, "stage": "teacher", "data": str(data_dir), "max_steps": 8, "bleu": False}
    base |= {"valid_every": 100, "max_bad_updates": 3, "log_every": 1}
    seen: list[int] = []

    def poison(repair: bool):
        """After update 3, a NaN weight; with `repair`, put back after one skipped update."""

        def hook(trainer) -> None:
            weight = next(trainer.model.parameters())
            seen.append(trainer.pos.step)
            if seen.count(3) == 1 and trainer.pos.step == 3:
                hook.saved = weight.detach().clone()
                weight.data.fill_(float("nan"))
            elif seen.count(3) == 2 and repair:
                weight.data.copy_(hook.saved)

        return hook

    result = run_in_process(TrainConfig(out=str(tmp_path / "once"), **base), poison(True))
    assert result["step"] == 8 and result["skipped"] == 1
    warnings = records(tmp_path / "once", "warning")
    assert len(warnings) == 1 and "non-finite loss" in warnings[0]["message"]

    seen.clear()
    result = run_in_process(TrainConfig(out=str(tmp_path / "always"), **base), poison(False))
    assert "NaN or infinite in 3 updates in a row" in result["error"]
    assert len(records(tmp_path / "always", "warning")) == 3
    assert records(tmp_path / "always", "error")


def test_cli_trains_refuses_to_overwrite_and_resumes(data_dir, tmp_path):
    runner = CliRunner()
    args = ["train", "--stage", "teacher", "--data", str(data_dir), "--out", str(tmp_path)]
    args += ["--hidden", "16", "--layers", "1", "--heads", "2", "--ffn", "32"]
    args += ["--max-tokens", "512", "--valid-every", "2", "--bleu-sents", "10", "--gpus", "0"]
    first = runner.invoke(app, [*args, "--max-steps", "2"])
    assert first.exit_code == 0, first.output
    assert f"model: {tmp_path / 'teacher' / 'best'}" in first.output
    again = runner.invoke(app, [*args, "--max-steps", "4"])
    assert again.exit_code == 1
    assert again.output.strip().endswith("add --resume to continue it or --force to start again")
    resumed = runner.invoke(app, [*args[:7], "--resume", "--max-steps", "4"])
    assert resumed.exit_code == 0, resumed.output
    starts = records(tmp_path / "teacher", "start")
    assert [(s["step"], s["total_steps"]) for s in starts] == [(0, 2), (2, 4)]
    saved = json.loads((tmp_path / "teacher" / "train_config.json").read_text())
    assert saved["model"]["hidden"] == 16 and saved["max_steps"] == 4  # kept, and overridden
    bad = runner.invoke(app, [*args[:7], "--resume", "--max-time", "soon"])
    assert bad.exit_code == 1 and "cannot read duration" in bad.output


def test_cli_runs_the_whole_recipe_and_skips_finished_stages(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)  # distillation adds a split
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--gpus", "0", "--max-steps", "4"]
    args += ["--hidden", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--latent-dim", "4"]
    args += ["--max-tokens", "1024", "--bleu-sents", "10", "--beam", "2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert f"model: {run / 'finetune' / 'best'}" in first.output
    model = load_bundle(run / "finetune" / "best")
    assert model.kind == "lanmt" and model.config.latent_dim == 4
    assert model.teacher().config.hidden == 16  # the teacher trained in the first stage
    lanmt = json.loads((run / "lanmt" / "train_config.json").read_text())
    assert lanmt["train_split"] == "distill" and lanmt["max_steps"] == 4
    finetune = json.loads((run / "finetune" / "train_config.json").read_text())
    assert finetune["max_steps"] is None and finetune["epochs"] == 1.0  # its own budget
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert again.output.count("done already") == 4


def test_schedules():
    assert learning_rate(5, 1e-3, 10) == pytest.approx(5e-4)
    assert learning_rate(10, 1e-3, 10) == pytest.approx(1e-3)
    assert learning_rate(40, 1e-3, 10) == pytest.approx(5e-4)  # sqrt(10 / 40)
    assert learning_rate(40, 1e-4, 0, "constant") == 1e-4
    assert [parse_duration(t) for t in ("90", "2m", "1.5h")] == [90, 120, 5400]


def test_teacher_init_starts_lanmt_from_the_teachers_weights(data_dir, teacher_run, tmp_path):
    teacher_dir = teacher_run / "teacher" / "best"
    opts = {**FAST, "train_split": "train", "max_steps": 1, "lr": 1e-9, "warmup": 0}
    opts |= {"teacher": str(teacher_dir), "teacher_init": "all", "bleu": False}
    train_stage(tmp_path / "run", "lanmt", data_dir, opts, QUIET)
    teacher = load_file(str(teacher_dir / "model.safetensors"))
    lanmt = load_file(str(tmp_path / "run" / "lanmt" / "last" / "model.safetensors"))
    pairs = {
        "src_embed.tokens.weight": "x_embed.tokens.weight",
        "encoder.layers.0.self_attn.q.weight": "prior_encoder.layers.0.self_attn.q.weight",
        "decoder.layers.0.cross_attn.v.weight": "decoder.layers.0.cross_attn.v.weight",
        "decoder.norm.weight": "decoder.norm.weight",
    }
    for mine, theirs in pairs.items():  # one update at lr 1e-9 leaves them (nearly) equal
        torch.testing.assert_close(lanmt[theirs], teacher[mine], atol=1e-6, rtol=0)
    # "encoder": embeddings, encoder and output, but a fresh decoder that must read z
    opts["teacher_init"] = "encoder"
    train_stage(tmp_path / "enc", "lanmt", data_dir, opts, QUIET)
    enc = load_file(str(tmp_path / "enc" / "lanmt" / "last" / "model.safetensors"))
    for mine, theirs in list(pairs.items())[:2]:
        torch.testing.assert_close(enc[theirs], teacher[mine], atol=1e-6, rtol=0)
    name = "decoder.layers.0.cross_attn.v.weight"
    assert not torch.allclose(enc[name], teacher[name], atol=1e-3)
    # without it the weights are fresh
    opts["teacher_init"] = "none"
    train_stage(tmp_path / "fresh", "lanmt", data_dir, opts, QUIET)
    fresh = load_file(str(tmp_path / "fresh" / "lanmt" / "last" / "model.safetensors"))
    assert not torch.allclose(fresh["x_embed.tokens.weight"], teacher["src_embed.tokens.weight"])
    # a teacher of another size cannot start the model
    wide = {**opts, "teacher_init": "all", "model": {**TINY, "hidden": 48}}
    with pytest.raises(LanmtError, match="same sizes"):
        train_stage(tmp_path / "wide", "lanmt", data_dir, wide, QUIET)


def test_best_is_the_best_validation_and_patience_stops_training(data_dir, tmp_path):
    """From update 12 on, every update spoils the weights: validation gets worse, best/ stays
    the weights of the best validation, and patience 2 ends training before its budget."""
    base = {**FAST, "stage": "teacher", "data": str(data_dir), "max_steps": 60, "bleu": False}
    base |= {"valid_every": 6, "patience": 2, "log_every": 1}
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def spoil_after_12(trainer) -> None:
        model = trainer.model
        if trainer.pos.step % 6 == 0:  # the weights each validation saw
            saved[trainer.pos.step] = {k: v.clone() for k, v in model.state_dict().items()}
        if trainer.pos.step >= 12:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.3)

    result = run_in_process(TrainConfig(out=str(tmp_path), **base), on_update=spoil_after_12)
    valid = records(tmp_path, "valid")
    # patience ran out at the validation of update 24; the next update stops training
    assert [r["step"] for r in valid] == [6, 12, 18, 24, 25]
    assert (result["reason"], result["step"]) == ("patience", 25)
    losses = [r["loss"] for r in valid]
    best = valid[losses.index(min(losses))]["step"]  # the score without BLEU: -loss
    assert best <= 12 < valid[-1]["step"]  # the best is not simply the last
    assert result["best_step"] == best
    assert load_bundle(tmp_path / "best").meta["info"]["step"] == best
    weights = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert all(torch.equal(weights[k], saved[best][k]) for k in weights)
    assert [r["best"] for r in valid] == [r["step"] <= best for r in valid]


def test_max_time_counts_the_training_time_of_earlier_runs(data_dir, tmp_path):
    """A run resumed with --max-time no longer than the time already spent stops after one
    update; counted from its own start, it would go on for as long again."""
    base = {**FAST, "stage": "teacher", "data": str(data_dir), "bleu": False}
    base |= {"valid_every": 8, "log_every": 1}
    run_in_process(TrainConfig(out=str(tmp_path), max_steps=8, **base))
    spent = read_position(tmp_path / "last").elapsed
    assert spent > 0
    again = TrainConfig(out=str(tmp_path), resume=True, max_steps=1000, max_time=spent, **base)
    result = run_in_process(again)
    assert (result["reason"], result["step"]) == ("max_time", 9)
    starts = records(tmp_path, "start")
    assert [s["step"] for s in starts] == [0, 8] and starts[1]["elapsed"] == round(spent, 1)
    assert result["elapsed"] >= spent


def test_select_picks_best_by_the_decoder_it_names(tiny_bundle, tmp_path):
    """--select with a decoder spec: its BLEU is the score of every validation. Started from
    the tiny trained model, where loud unrefined samples and refine1 score differently."""
    from lanmt_cli.data import prepare_corpus

    text = tmp_path / "text"
    text.mkdir()
    for split, n, seed in (("train", 200, 3), ("valid", 40, 4)):
        pairs = make_task(n, seed)
        (text / f"{split}.en").write_text("".join(s + "\n" for s, _ in pairs))
        (text / f"{split}.de").write_text("".join(t + "\n" for _, t in pairs))
    data = tmp_path / "data"
    prepare_corpus(
        data,
        (text / "train.en", text / "train.de"),
        valid=(text / "valid.en", text / "valid.de"),
        tokenizer_from=tiny_bundle,
    )
    select = "latent-search:samples=4,noise=4,steps=0"
    opts = {"init": str(tiny_bundle), "teacher": str(tiny_bundle / "teacher"), "lr": 1e-9}
    opts |= {"train_split": "train", "max_steps": 1, "warmup": 0, "select": select}
    train_stage(tmp_path / "run", "lanmt", data, opts, QUIET)
    (valid,) = records(tmp_path / "run" / "lanmt", "valid")
    assert valid["bleu"] == valid[f"bleu_{select}"] != valid["bleu_refine1"]
    assert load_bundle(tmp_path / "run" / "lanmt" / "best").meta["info"]["valid_bleu"] == round(
        valid["bleu"], 4
    )
