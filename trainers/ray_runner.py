"""Ray Train: the same training loop on N workers (one per GPU, or CPU workers with gloo).

Only the training path imports this module, and with it Ray. Each worker runs
`lanmt_cli.trainers.loop.train_loop` on a `RayWorker`; rank 0 reports every checkpoint it
writes to Ray, which keeps a copy under RUN/STAGE/ray/ and, when a worker dies or raises,
restarts the whole worker group from the latest one (up to `max_failures` times). Running
the same stage again with --resume continues the same Ray run (same storage path and name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from lanmt_cli.errors import LanmtError
from lanmt_cli.ray_cluster import ray_cluster
from lanmt_cli.trainers.config import TrainConfig
from lanmt_cli.trainers.loop import OnUpdate, Worker, train_loop


class RayWorker(Worker):
    """A Ray Train worker: rank and device from Ray, checkpoints reported to Ray."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if isinstance(self.device, list):  # several GPUs per worker: use the first
            self.device = self.device[0]

    @contextlib.contextmanager
    def restart_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as path:
            yield Path(path)

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        ckpt = Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None
        name = f"step-{int(metrics.get('step', 0)):09d}" if ckpt is not None else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)


def worker_loop(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """What TorchTrainer runs on each worker. `loop_config`: {"config": TrainConfig dict,
    "on_update": optional callable(trainer)}."""
    cfg = TrainConfig.from_dict(loop_config["config"])
    return train_loop(cfg, RayWorker(), loop_config.get("on_update"))


def _check_resources(num_workers: int, use_gpu: bool, cpus: int) -> None:
    """Fail now, instead of waiting forever for GPUs or CPUs the cluster lacks."""
    have = ray.cluster_resources()
    if use_gpu and have.get("GPU", 0) < num_workers:
        raise LanmtError(
            f"--gpus {num_workers}: the Ray cluster has {int(have.get('GPU', 0))} GPU(s)"
        )
    if have.get("CPU", 0) < num_workers * cpus:
        raise LanmtError(
            f"{num_workers} workers x {cpus} CPU(s) need {num_workers * cpus} CPUs; "
            f"the Ray cluster has {int(have.get('CPU', 0))}"
        )


_OOM = re.compile(r"running low on memory|NODE_OUT_OF_MEMORY")
_NODE_MEMORY = re.compile(r"was ([\d.]+ ?GB) used / ([\d.]+ ?GB)")


def _root_cause(err: BaseException) -> str:
    """One line for the innermost error: its last line; for a worker that Ray's OOM killer
    stopped, that, instead of Ray's paragraph of advice."""
    chain = [err]
    while True:
        inner = getattr(chain[-1], "worker_failures", None) or {}
        nxt = next(iter(inner.values()), None) if isinstance(inner, dict) else None
        nxt = nxt or chain[-1].__cause__
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
    texts = [str(e) for e in chain]
    if any(isinstance(e, ray.exceptions.OutOfMemoryError) for e in chain) or any(
        _OOM.search(t) for t in texts
    ):
        used = next(filter(None, map(_NODE_MEMORY.search, texts)), None)
        node = f" ({used[1]} of {used[2]} in use on the node)" if used else ""
        return (
            f"a worker ran out of memory: Ray's OOM killer stopped it{node}; lower "
            "--max-tokens or the number of workers, or free memory"
        )
    lines = texts[-1].strip().splitlines()
    return lines[-1] if lines else type(chain[-1]).__name__


def _fit(trainer: TorchTrainer):
    """`trainer.fit()` in a helper thread, so that Ray leaves SIGINT alone (it takes it over
    in the main thread and ends the process with status 1 and no word). Ctrl-C and SIGTERM
    then reach this thread as in in-process training; leaving `ray_cluster` stops the run.
    """
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # handed to the main thread, never printed here
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="lanmt-ray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # wakes up for signals
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_with_ray(cfg: TrainConfig, launch, on_update: OnUpdate | None = None) -> dict[str, Any]:
    """Run `cfg` on `launch.num_workers` Ray Train workers; the rank-0 summary comes back."""
    # Workers continue from the newest checkpoint, Ray's or RUN/STAGE/last: the stage
    # guard (lanmt_cli.trainers.stages) has made sure that a `last/` there belongs to this run.
    cfg = dataclasses.replace(cfg, resume=True)
    use_gpu = (launch.gpus or 0) > 0
    workers = launch.num_workers
    cpus = max(cfg.threads, 1)
    if use_gpu and not launch.ray_address and torch.cuda.device_count() < workers:
        raise LanmtError(f"--gpus {workers}: this machine has {torch.cuda.device_count()} GPU(s)")
    resources = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    local_cpus = None if launch.ray_address else max(os.cpu_count() or 1, workers * cpus)
    with ray_cluster(launch.ray_address, local_cpus):
        _check_resources(workers, use_gpu, cpus)
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"config": cfg.to_dict(), "on_update": on_update},
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=f"lanmt-{cfg.stage}",
                storage_path=str(Path(cfg.out) / "ray"),
                failure_config=FailureConfig(max_failures=launch.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
            ),
        )
        try:
            result = _fit(trainer)
        except Exception as err:  # Ray's WorkerGroupError, ControllerError, ...
            if isinstance(err, LanmtError):
                raise
            raise LanmtError(f"training failed on the Ray workers: {_root_cause(err)}") from None
    summary = result.return_value
    if not isinstance(summary, dict):
        raise LanmtError("the Ray run ended without a summary from rank 0")
    return summary
