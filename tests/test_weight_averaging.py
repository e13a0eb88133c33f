"""Weight averaging in training (--ema): the average, what validation and checkpoints hold,
and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lanmt_cli.app import app
from lanmt_cli.bundle import load_bundle
from lanmt_cli.trainers.averaging import averaged_tensors, decay_at
from lanmt_cli.trainers.checkpoint import load_state
from lanmt_cli.trainers.config import TrainConfig
from lanmt_cli.trainers.loop import Trainer, Worker, run_in_process
from lanmt_cli.trainers.validate import valid_metrics
from tests.test_train_loop import FAST, prepare_tiny_data, records

DECAY = 0.8  # low, so that six updates move the average well away from the weights


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("ema") / "data")


def config(data_dir: Path, out: Path, **extra) -> TrainConfig:
    base = {**FAST, "stage": "teacher", "data": str(data_dir), "out": str(out), "ema": DECAY}
    return TrainConfig(**(base | {"max_steps": 6, "valid_every": 3, "log_every": 1} | extra))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: t.detach().clone() for k, t in averaged_tensors(model).items()}


def test_the_average_is_the_ema_of_the_trained_weights_and_the_bundles_hold_it(data_dir, tmp_path):
    trainer = Trainer(config(data_dir, tmp_path / "run"), Worker("cpu"))
    weights = [snapshot(trainer.model)]  # before the first update, then after each one
    trainer.on_update = lambda t: weights.append(snapshot(t.model))
    result = trainer.run()
    assert result["step"] == 6 and len(weights) == 7

    expected = [weights[0]]  # the average after 0, 1, ... updates, computed here
    for n, w in enumerate(weights[1:]):
        d = decay_at(DECAY, n)
        expected.append({k: d * expected[-1][k] + (1 - d) * w[k] for k in w})
    assert decay_at(DECAY, 0) == pytest.approx(0.1) and decay_at(DECAY, 40) == DECAY

    last = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    for name, tensor in expected[6].items():
        torch.testing.assert_close(last[name], tensor, rtol=1e-5, atol=1e-6)
    gap = max(float((t - weights[6][k]).abs().max()) for k, t in expected[6].items())
    assert gap > 1e-3  # the average is not the weights
    state = load_state(tmp_path / "run" / "last")  # the optimizer's own weights, for --resume
    assert state.weights.keys() == weights[6].keys()
    assert all(torch.equal(state.weights[k], weights[6][k]) for k in state.weights)
    assert state.position.ema_updates == 6

    # best/ holds the average at its step, and validation scored that average
    step = result["best_step"]
    best = load_bundle(tmp_path / "run" / "best")
    for name, tensor in averaged_tensors(best.model).items():
        torch.testing.assert_close(tensor, expected[step][name], rtol=1e-5, atol=1e-6)
    logged = next(r for r in records(tmp_path / "run", "valid") if r["step"] == step)
    scored = valid_metrics(best.model, trainer.valid, 512, torch.device("cpu"), no_cast, {})
    assert scored["loss"] == pytest.approx(logged["loss"], rel=1e-4)
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["info"]["step"]


def no_cast():
    import contextlib

    return contextlib.nullcontext()


def test_a_resumed_run_continues_the_average_exactly(data_dir, tmp_path):
    class Interrupt(Exception):
        pass

    def interrupt(trainer) -> None:
        if trainer.pos.step == 5:  # after the checkpoint at 3: updates 4 and 5 are done again
            raise Interrupt

    run_in_process(config(data_dir, tmp_path / "a"))
    with pytest.raises(Interrupt):
        run_in_process(config(data_dir, tmp_path / "b"), on_update=interrupt)
    resumed = run_in_process(config(data_dir, tmp_path / "b", resume=True))
    assert resumed["step"] == 6
    assert [s["step"] for s in records(tmp_path / "b", "start")] == [0, 3]
    a, b = (load_state(tmp_path / x / "last") for x in "ab")
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    averages = [load_file(str(tmp_path / x / "last" / "model.safetensors")) for x in "ab"]
    assert all(torch.equal(averages[0][k], averages[1][k]) for k in averages[0])

    # the average switched off on resume: training continues from the optimizer's weights
    off = run_in_process(config(data_dir, tmp_path / "b", resume=True, ema=0.0, max_steps=7))
    assert off["step"] == 7
    assert load_state(tmp_path / "b" / "last").weights is None


def test_the_cli_takes_ema_and_refuses_a_decay_outside_0_1(data_dir, tmp_path):
    runner = CliRunner()
    args = ["train", "--stage", "teacher", "--data", str(data_dir), "--out", str(tmp_path)]
    tiny = ["--hidden", "32", "--layers", "1", "--heads", "2", "--ffn", "64"]
    bad = runner.invoke(app, [*args, *tiny, "--ema", "1"])
    assert bad.exit_code != 0
    assert "--ema is a decay in [0, 1)" in bad.output
    assert not (tmp_path / "teacher").exists()
    ok = runner.invoke(
        app,
        [*args, *tiny, "--encoder-layers", "2", "--decoder-layers", "1", "--ema", "0.9"]
        + ["--max-steps", "2", "--max-tokens", "512", "--bleu-sents", "5"],
    )
    assert ok.exit_code == 0, ok.output
    saved = json.loads((tmp_path / "teacher" / "train_config.json").read_text())
    assert saved["ema"] == 0.9
    model = json.loads((tmp_path / "teacher" / "best" / "config.json").read_text())["model"]
    assert (model["encoder_layers"], model["decoder_layers"]) == (2, 1)
