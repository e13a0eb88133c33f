"""Training checkpoints: a model bundle plus the training state, without pickle.

    DIR/config.json, model.safetensors, spm.model, [teacher/]   the model bundle
    DIR/trainer_state.safetensors   optimizer moments and steps, random generator states,
                                    [the optimizer's weights when the bundle holds their average]
    DIR/trainer_state.json          position, counters, optimizer hyperparameters, scaler

A checkpoint is written into a temporary folder and renamed into place, so a crash
never leaves half of one; `lanmt translate --model DIR` reads it as any bundle.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lanmt_cli.errors import LanmtError

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
STATE_VERSION = 1
WEIGHTS_PREFIX = "weights."  # state tensors: the optimizer's weights (with --ema)


@dataclass
class Position:
    """Where training stands; JSON."""

    step: int = 0  # updates applied
    epoch: int = 0  # epoch of the next batch
    batch: int = 0  # batches of that epoch already used, summed over workers
    tokens: int = 0  # target tokens trained on, all workers
    skipped: int = 0  # updates skipped (non-finite loss or gradients)
    elapsed: float = 0.0  # seconds of training, summed over resumed runs
    best_score: float | None = None  # best validation score (BLEU, or -loss without BLEU)
    best_step: int = 0
    stale: int = 0  # validations since the best one (patience)
    world_size: int = 1
    ema_updates: int = 0  # updates folded into the weights' moving average (--ema)


@dataclass
class TrainingState:
    """What a checkpoint holds besides the weights."""

    position: Position
    optimizer: dict  # torch optimizer state_dict
    scaler: dict | None = None  # torch.amp.GradScaler state_dict (fp16 only)
    rng: list[dict] = field(default_factory=list)  # per worker rank: {"cpu": t, "cuda": t}
    config: dict = field(default_factory=dict)  # the TrainConfig it was trained with
    # the optimizer's weights where the bundle holds their average (--ema); None: the same
    weights: dict | None = None


def _flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """Optimizer state_dict -> (tensors for safetensors, the rest as JSON)."""
    tensors, plain = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if hasattr(value, "detach"):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "values": plain}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    for name, value in meta["values"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def copy_bundle(src: Path, dest: Path) -> Path:
    """Copy only a bundle's own files (no training state) to `dest`, atomically; a teacher
    sharing its outer bundle's tokenizer (`../spm.model`) gets a copy of its own."""
    from lanmt_cli.bundle import CONFIG_FILE, WEIGHTS_FILE, read_config, standalone_config
    from lanmt_cli.textio import atomic_dir

    meta, tokenizer = standalone_config(src)
    with atomic_dir(Path(dest)) as tmp:
        shutil.copyfile(Path(src) / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        for name, file in tokenizer.items():
            shutil.copyfile(file, tmp / name)
        if meta["tokenizer"] == read_config(src)["tokenizer"]:
            shutil.copyfile(Path(src) / CONFIG_FILE, tmp / CONFIG_FILE)
        else:
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if meta.get("teacher"):
            copy_bundle(Path(src) / meta["teacher"], tmp / meta["teacher"])
    return Path(dest)


def save_checkpoint(
    dest: Path,
    model,
    tokenizer,
    state: TrainingState | None,
    *,
    teacher: str | None = None,
    languages: dict | None = None,
    info: dict | None = None,
) -> Path:
    """Write the bundle and, unless `state` is None, the training state; rename into place."""
    from safetensors.torch import save_file

    from lanmt_cli.bundle import save_bundle
    from lanmt_cli.textio import atomic_dir

    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        save_bundle(tmp, model, tokenizer, teacher=teacher, languages=languages, info=info)
        if state is not None:
            tensors, optim_meta = _flatten_optimizer(state.optimizer)
            for rank, gens in enumerate(state.rng):
                for device, tensor in gens.items():
                    tensors[f"rng.{rank}.{device}"] = tensor.cpu().contiguous()
            for name, tensor in (state.weights or {}).items():
                tensors[WEIGHTS_PREFIX + name] = tensor.detach().cpu().contiguous()
            save_file(tensors, str(tmp / STATE_TENSORS))
            meta = {
                "version": STATE_VERSION,
                "position": asdict(state.position),
                "optimizer": optim_meta,
                "scaler": state.scaler,
                "config": state.config,
            }
            (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        for path in (tmp, *tmp.rglob("*")):  # temporary folders and files start private
            path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def has_state(path: Path) -> bool:
    return (Path(path) / STATE_JSON).is_file() and (Path(path) / STATE_TENSORS).is_file()


def read_position(path: Path) -> Position:
    """Only the position of a checkpoint (cheap: no tensors)."""
    return Position(**_read_json(Path(path) / STATE_JSON)["position"])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LanmtError(f"{path}: unreadable training state ({err})") from None
    if meta.get("version") != STATE_VERSION:
        raise LanmtError(f"{path}: unknown training state version {meta.get('version')!r}")
    return meta


def load_state(path: Path) -> TrainingState:
    """Read the training state of checkpoint `path` (tensors on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not has_state(path):
        raise LanmtError(f"{path}: not a training checkpoint (no {STATE_JSON})")
    meta = _read_json(path / STATE_JSON)
    try:
        tensors = load_file(str(path / STATE_TENSORS))
    except (SafetensorError, OSError) as err:
        raise LanmtError(f"{path / STATE_TENSORS}: unreadable ({err})") from None
    rng: dict[int, dict] = {}
    weights = {}
    for name, tensor in tensors.items():
        if name.startswith("rng."):
            _, rank, device = name.split(".", 2)
            rng.setdefault(int(rank), {})[device] = tensor
        elif name.startswith(WEIGHTS_PREFIX):
            weights[name.removeprefix(WEIGHTS_PREFIX)] = tensor
    return TrainingState(
        position=Position(**meta["position"]),
        optimizer=_unflatten_optimizer(tensors, meta["optimizer"]),
        scaler=meta["scaler"],
        rng=[rng[r] for r in sorted(rng)],
        config=meta["config"],
        weights=weights or None,
    )
