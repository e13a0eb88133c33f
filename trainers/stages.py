"""The recipe as plain functions: teacher, distillation, LaNMT, finetune.

A run directory holds one folder per stage::

    RUN/teacher/    best/ last/ train.jsonl train_config.json result.json [ray/]
    RUN/distill/    chunks/ train.src train.distill.tgt result.json
    RUN/lanmt/      best/ last/ teacher/ ...       (LaNMT with the KL budget annealed)
    RUN/finetune/   best/ last/ ...                (budget 0; best/ is the final model)

`best/` and `last/` are model bundles (`lanmt translate --model RUN/finetune/best`);
`last/` also holds the training state that --resume continues from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanmt_cli.errors import LanmtError
from lanmt_cli.trainers.config import (
    MODEL_FIELDS,
    MODEL_KIND,
    STAGE_DEFAULTS,
    STAGES,
    TrainConfig,
    save_config,
    saved_config,
)

RESULT_FILE = "result.json"


@dataclass
class Launch:
    """Where training runs: in this process, or on Ray Train workers."""

    gpus: int | None = None  # GPU workers; None: one GPU in-process if there is one
    workers: int = 0  # CPU workers (Ray) when there are no GPUs to use
    ray_address: str | None = None  # join this Ray cluster ("auto", "HOST:6379")
    use_ray: bool = False  # Ray even for one worker (failure handling)
    max_failures: int = 3  # worker-group restarts Ray may make
    show: bool = True  # the console display

    @property
    def ray(self) -> bool:
        many = (self.gpus or 0) > 1 or self.workers > 1
        return many or self.use_ray or self.ray_address is not None

    @property
    def num_workers(self) -> int:
        return max(self.gpus or self.workers, 1)

    def check(self) -> Launch:
        """Refuse what cannot run, before anything starts: negative counts, GPUs that are
        not there (on this machine; a cluster is checked when joined)."""
        if self.gpus is not None and self.gpus < 0:
            raise LanmtError(f"--gpus must be 0 or more, got {self.gpus}")
        if self.workers < 0:
            raise LanmtError(f"--workers must be 0 or more, got {self.workers}")
        if self.max_failures < 0:
            raise LanmtError(f"--max-failures must be 0 or more, got {self.max_failures}")
        if self.gpus and self.workers:
            raise LanmtError("--gpus N runs N GPU workers, --workers N CPU workers: give one")
        if self.ray:
            require_ray()
        if self.gpus and self.ray_address is None:
            import torch

            have = torch.cuda.device_count()
            if have < self.gpus:
                gpus = f"{have or 'no'} GPU{'' if have == 1 else 's'}"
                raise LanmtError(
                    f"--gpus {self.gpus}: this machine has {gpus}; to train on the CPU, "
                    "leave --gpus out (or give --gpus 0), or use --workers N for CPU workers"
                )
        return self


RAY_MISSING = (
    'training on Ray workers needs Ray: pip install "lanmt[train]" (or train in this '
    "process: leave out --workers, --ray and --ray-address, and give --gpus 1 at most)"
)


def require_ray() -> None:
    """Ray Train is an extra (`lanmt[train]`): without it, one line saying how to get it."""
    try:
        import ray.train.torch  # noqa: F401
    except ImportError:
        raise LanmtError(RAY_MISSING) from None


def _command(stage: str, run: Path, data: Path) -> str:
    return f"lanmt train --stage {stage} --data {data} --out {run}"


def stage_done(run: Path, stage: str) -> bool:
    return (Path(run) / stage / RESULT_FILE).is_file()


def _splits(data: Path) -> dict[str, Any]:
    from lanmt_cli.data import read_meta

    return read_meta(data)["splits"]


def _lock(run: Path, stage: str):
    """The lock of one stage of a run: one `lanmt train` writes it at a time."""
    from lanmt_cli.locks import hold

    return hold(Path(run) / f".{stage}.lock", f"{Path(run) / stage} is being trained")


def _check_model(cfg: TrainConfig, meta: dict[str, Any]) -> None:
    """Build the model config the stage will train, so that bad sizes fail now."""
    from lanmt_cli.bundle import read_config
    from lanmt_cli.config import config_from_dict
    from lanmt_cli.trainers.config import apply_model_overrides, model_config

    try:
        if cfg.init:
            base = config_from_dict(read_config(cfg.init)["model"])
            apply_model_overrides(base, cfg.model)
        else:
            vocab = (meta["src_vocab_size"], meta["tgt_vocab_size"])
            model_config(MODEL_KIND[cfg.stage], *vocab, cfg.model)
    except (ValueError, TypeError) as err:
        raise LanmtError(f"model options: {err}") from None


def check_options(data: Path, options: dict[str, Any]) -> None:
    """Check the options of every training stage of the recipe before the first starts."""
    from lanmt_cli.data import read_meta

    meta = read_meta(Path(data))
    for stage in ("teacher", "lanmt", "finetune"):
        defaults = TrainConfig(stage=stage, data="", out="").to_dict()
        values = {**defaults, **STAGE_DEFAULTS[stage], **stage_options(stage, options)}
        if stage == "finetune":
            values["init"] = None  # made by the LaNMT stage
        _check_model(TrainConfig.from_dict(values).check(), meta)


def _guard(sdir: Path, stage: str, resume: bool, force: bool) -> None:
    """An existing run of a stage is continued only with --resume, replaced with --force."""
    started = sdir.is_dir() and any(
        (sdir / name).exists() for name in ("last", "train.jsonl", "ray", "chunks")
    )
    if force and sdir.exists():
        shutil.rmtree(sdir)
    elif started and not resume:
        raise LanmtError(
            f"{sdir} already holds a {stage} run; add --resume to continue it "
            "or --force to start again"
        )


def train_config(
    run: Path,
    stage: str,
    data: Path,
    options: dict[str, Any],
    *,
    resume: bool = False,
    force: bool = False,
) -> TrainConfig:
    """The checked TrainConfig of a training stage; says which command makes a missing input.

    Writes nothing: every option error comes before anything starts.
    """
    run, data = Path(run).resolve(), Path(data).resolve()
    sdir = run / stage
    saved = saved_config(sdir) if resume and not force else {}
    defaults = TrainConfig(stage=stage, data="", out="").to_dict()
    values = {**defaults, **STAGE_DEFAULTS[stage], **saved, **options}
    values["model"] = {**saved.get("model", {}), **options.get("model", {})}
    values.update(stage=stage, data=str(data), out=str(sdir), resume=resume)
    splits = _splits(data)

    if stage == "lanmt":
        teacher = Path(values.get("teacher") or run / "teacher" / "best")
        if not (teacher / "config.json").is_file():
            raise LanmtError(
                f"no teacher model at {teacher}; train it first with: "
                + _command("teacher", run, data)
            )
        values["teacher"] = str(teacher.resolve())
    if stage == "finetune":
        init = Path(values.get("init") or run / "lanmt" / "last")
        if not (init / "config.json").is_file():
            raise LanmtError(
                f"no LaNMT model at {init}; train it first with: " + _command("lanmt", run, data)
            )
        values["init"] = str(init.resolve())
        before = saved_config(init.parent)  # the LaNMT stage's data and teacher
        if "train_split" not in options and "train_split" in before:
            values["train_split"] = before["train_split"]
        if not values.get("teacher") and (init.parent / "teacher" / "config.json").is_file():
            values["teacher"] = str(init.parent / "teacher")
    for key in ("train_split", "valid_split"):
        split = values[key]
        if split not in splits:
            if split == "distill":
                raise LanmtError(
                    f"{data} has no distilled training data (split 'distill'); make it with: "
                    + _command("distill", run, data)
                )
            raise LanmtError(f"{data} has no split {split!r} (has: {', '.join(splits)})")
    cfg = TrainConfig.from_dict(values).check()
    if stage == "lanmt" and cfg.kl_anneal and cfg.max_time and not (cfg.max_steps or cfg.epochs):
        raise LanmtError(
            "the KL budget anneals over the update budget: give --max-steps or --epochs "
            "as well as --max-time"
        )
    from lanmt_cli.data import read_meta

    _check_model(cfg, read_meta(data))
    return cfg


def _clean_leftovers(sdir: Path) -> None:
    """Temporary folders of checkpoints a killed worker was writing (we hold the lock)."""
    if sdir.is_dir():
        for pattern in (".*.tmp-*", ".*.old-*"):
            for path in sdir.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _claim(cfg: TrainConfig, resume: bool, force: bool) -> None:
    """Under the stage's lock: clear an earlier run (--force), copy the teacher in."""
    sdir = Path(cfg.out)
    _guard(sdir, cfg.stage, resume, force)  # only once every input is there
    _clean_leftovers(sdir)
    if cfg.stage == "lanmt" and Path(cfg.teacher) != sdir / "teacher":
        from lanmt_cli.trainers.checkpoint import copy_bundle

        copy_bundle(Path(cfg.teacher), sdir / "teacher")  # a clean copy for every checkpoint
        cfg.teacher = str(sdir / "teacher")


def train_stage(
    run: Path,
    stage: str,
    data: Path,
    options: dict[str, Any],
    launch: Launch | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    on_update=None,
) -> dict[str, Any]:
    """Train one stage to its end; return the run's summary (also in RUN/STAGE/result.json)."""
    from lanmt_cli.textio import atomic_file, writing
    from lanmt_cli.trainers.display import follow
    from lanmt_cli.trainers.loop import LOG_FILE, run_in_process

    launch = (launch or Launch()).check()
    cfg = train_config(run, stage, data, options, resume=resume, force=force)
    if not launch.ray and cfg.device == "auto" and launch.gpus is not None:
        cfg.device = "cuda" if launch.gpus else "cpu"
    sdir = Path(cfg.out)
    with _lock(Path(cfg.out).parent, stage), writing(sdir):  # a failed write: one line
        _claim(cfg, resume, force)
        save_config(cfg)
        (sdir / RESULT_FILE).unlink(missing_ok=True)
        with follow(sdir / LOG_FILE, show=launch.show):
            if launch.ray:
                from lanmt_cli.trainers.ray_runner import run_with_ray

                result = run_with_ray(cfg, launch, on_update=on_update)
            else:
                result = run_in_process(cfg, on_update=on_update)
        if result.get("error"):
            raise LanmtError(result["error"])
        result["model"] = str(sdir / "best")
        with atomic_file(sdir / RESULT_FILE) as tmp:  # marks the stage done: whole or not at all
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def distill_stage(
    run: Path,
    data: Path,
    *,
    teacher: Path | None = None,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_tokens: int = 4096,
    device: str = "auto",
    threads: int = 0,
    resume: bool = False,
    force: bool = False,
    show: bool = True,
) -> dict[str, Any]:
    """The teacher translates the training sources; the result becomes split `distill`."""
    from lanmt_cli.trainers.distill import distill

    run, data = Path(run).resolve(), Path(data).resolve()
    teacher = Path(teacher or run / "teacher" / "best")
    if not (teacher / "config.json").is_file():
        raise LanmtError(
            f"no teacher model at {teacher}; train it first with: " + _command("teacher", run, data)
        )
    sdir = run / "distill"

    from lanmt_cli.textio import writing

    with _lock(run, "distill"), writing(sdir):
        _guard(sdir, "distill", resume, force)
        (sdir / RESULT_FILE).unlink(missing_ok=True)
        return distill(
            data, teacher, sdir, beam=beam, length_penalty=length_penalty,
            max_tokens=max_tokens, device=device, threads=threads,
            show=show,
        )  # fmt: skip


# In the whole recipe, finetune keeps its own schedule and budget.
_FINETUNE_OWN = set(STAGE_DEFAULTS["finetune"]) | {"max_steps", "valid_every", "init"}


def stage_options(stage: str, options: dict[str, Any]) -> dict[str, Any]:
    """The shared options of `lanmt train` that apply to `stage` in the whole recipe."""
    from lanmt_cli.config import CONFIGS

    kind = MODEL_KIND[stage]
    known = {f for f in CONFIGS[kind].__dataclass_fields__} | set(MODEL_FIELDS[kind])
    out = {k: v for k, v in options.items() if not (stage == "finetune" and k in _FINETUNE_OWN)}
    out["model"] = {k: v for k, v in options.get("model", {}).items() if k in known}
    if stage == "teacher":
        out.pop("teacher", None)
    return out


def run_recipe(
    run: Path,
    data: Path,
    options: dict[str, Any],
    launch: Launch,
    distill_options: dict[str, Any],
    *,
    resume: bool = False,
    force: bool = False,
    say=print,
) -> dict[str, Any]:
    """All stages in order; finished stages are skipped. Returns the last stage's summary.

    Every option of every stage is checked before the first one starts.
    """
    launch.check()
    check_options(data, options)
    result: dict[str, Any] = {}
    for stage in STAGES:
        if stage_done(run, stage) and not force:
            say(f"{stage}: done already ({Path(run) / stage / RESULT_FILE}); skipping")
            continue
        say(f"{stage}: starting")
        if stage == "distill":
            result = distill_stage(
                run, data, resume=resume, force=force, show=launch.show, **distill_options
            )
        else:
            opts = stage_options(stage, options)
            result = train_stage(run, stage, data, opts, launch, resume=resume, force=force)
    return result


__all__ = [
    "Launch",
    "train_config",
    "train_stage",
    "distill_stage",
    "run_recipe",
    "stage_done",
    "stage_options",
    "check_options",
]
