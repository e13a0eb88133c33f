"""Ray Train: 2 CPU workers (gloo) on tiny data; a worker crash survived from the checkpoint.

Slow by nature (a 2-worker fit takes 15-30 s on 2 cores, a restart about 40 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lanmt_cli.trainers.stages import Launch, train_stage
from tests.test_train_loop import FAST, prepare_tiny_data, records

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),  # ray.data's own settings
]

# validation and checkpoints at 4, 8, 12; log every update
OPTIONS = {**FAST, "max_steps": 12, "valid_every": 4, "log_every": 1, "bleu_sents": 10}
TWO_WORKERS = Launch(workers=2, show=False, max_failures=2)


@pytest.fixture(scope="module")
def ray_session():
    """A private 2-CPU Ray cluster without Ray's OOM killer: it kills workers when the whole
    machine's memory is above 95% in use, whoever uses it, and a test that counts restarts
    must not depend on what else the machine runs (the kernel still guards its memory)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_memory_monitor_refresh_ms", "0")  # read by the raylet ray.init starts
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
        )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("ray") / "data")


@pytest.fixture(scope="module")
def two_worker_run(ray_session, data_dir, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("ray-run")
    return run, train_stage(run, "teacher", data_dir, OPTIONS, TWO_WORKERS)


def weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(stage_dir / "last" / "model.safetensors"))


def test_two_cpu_workers_train_identical_replicas(two_worker_run):
    run, result = two_worker_run
    assert result["world_size"] == 2 and result["step"] == 12
    assert result["replicas_identical"]  # SHA-256 of each worker's parameters, gathered
    train = records(run / "teacher", "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    assert [r["step"] for r in records(run / "teacher", "checkpoint")] == [4, 8, 12]
    # Ray keeps its own copy of the latest checkpoint under the stage directory
    assert list((run / "teacher" / "ray").glob("lanmt-teacher/step-*/trainer_state.json"))


def test_replicas_that_drift_apart_are_reported(ray_session, data_dir, tmp_path):
    """The digest check can fail: worker 1 changes one weight after the last update."""

    def drift(trainer) -> None:
        if trainer.rank == 1 and trainer.pos.step == 2:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] += 1e-3

    options = {**OPTIONS, "max_steps": 2, "valid_every": 2}
    result = train_stage(tmp_path, "teacher", data_dir, options, TWO_WORKERS, on_update=drift)
    assert result["world_size"] == 2 and result["step"] == 2
    assert result["replicas_identical"] is False


def test_a_worker_crash_is_survived_from_the_last_checkpoint(two_worker_run, data_dir, tmp_path):
    marker = tmp_path / "crashed"

    def crash_once(trainer) -> None:
        """Worker 1 dies hard after update 10 (checkpoint at 8), the first time only."""
        if trainer.rank == 1 and trainer.pos.step == 10 and not marker.exists():
            marker.touch()
            os._exit(1)

    result = train_stage(tmp_path, "teacher", data_dir, OPTIONS, TWO_WORKERS, on_update=crash_once)
    assert marker.exists() and result["step"] == 12 and result["replicas_identical"]
    starts = records(tmp_path / "teacher", "start")
    assert [s["step"] for s in starts] == [0, 8]
    # restored weights, Adam moments, data position and each worker's random state:
    # the result equals the run that never crashed
    run, _ = two_worker_run
    a, b = weights(run / "teacher"), weights(tmp_path / "teacher")
    assert all(torch.equal(a[k], b[k]) for k in a)
