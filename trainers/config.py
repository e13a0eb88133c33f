"""The training configuration: one typed dataclass, saved as JSON beside the checkpoints.

Values come, in rising priority, from the dataclass defaults, the stage's defaults
(`STAGE_DEFAULTS`), the saved configuration of the run being resumed, and the
options given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanmt_cli.errors import LanmtError

TRAIN_STAGES = ("teacher", "lanmt", "finetune")  # the stages that train a model
STAGES = ("teacher", "distill", "lanmt", "finetune")  # the whole recipe, in order
MAX_SEED = 2**63 - 1  # seeds offset by rank and step stay within torch's 64 bits
MODEL_KIND = {"teacher": "transformer", "lanmt": "lanmt", "finetune": "lanmt"}
AMP_MODES = ("auto", "bf16", "fp16", "off")
CONFIG_FILE = "train_config.json"


@dataclass
class TrainConfig:
    """Everything one training stage needs; plain JSON values only."""

    stage: str  # teacher | lanmt | finetune
    data: str  # prepared data directory (absolute)
    out: str  # the stage's directory: checkpoints, log (absolute)
    # model: architecture overrides of the config defaults, e.g. {"hidden": 512, "layers": 6}
    model: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # bundle whose weights start training (finetune: the LaNMT model)
    teacher: str | None = None  # LaNMT: the teacher bundle copied into every checkpoint
    # LaNMT: start parts from the teacher's weights (trainers/warm_start.py): none | encoder | all
    teacher_init: str = "none"
    train_split: str = "train"
    valid_split: str = "valid"
    # batches and updates
    max_tokens: int = 4096  # padded tokens per batch per worker
    accum: int = 1  # batches per update per worker (gradient accumulation)
    lr: float = 7e-4  # peak learning rate
    schedule: str = "inverse-sqrt"  # or "constant"
    warmup: int = 4000  # updates of linear warm-up
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-4
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # gradient norm clipping; 0 = off
    # weight averaging: decay of the weights' moving average, e.g. 0.999 (0 = off);
    # validation and the checkpoints use the average (trainers/averaging.py)
    ema: float = 0.0
    # how long: the first budget reached ends training
    max_steps: int | None = None  # updates
    epochs: float | None = None  # passes over the training data
    max_time: float | None = None  # seconds of training, summed over resumed runs
    # KL budget (LaNMT): `kl_budget` nats per source token, annealed to `kl_floor` over the
    # second half
    kl_budget: float = 1.0
    kl_anneal: bool = True
    kl_floor: float = 0.0
    # validation
    valid_per_epoch: int = 4
    valid_every: int | None = None  # updates; overrides valid_per_epoch
    bleu: bool = True  # validation BLEU (LaNMT: several decoders; the teacher: greedy or beam)
    select: str = "refine1"  # LaNMT: the decoder whose validation BLEU picks `best`
    valid_beam: int = 1  # teacher validation: 1 = greedy
    bleu_sents: int = 0  # decode only the first N validation sentences; 0 = all
    patience: int = 0  # stop after N validations without a better score; 0 = never
    # running
    seed: int = 1
    amp: str = "auto"  # auto (bf16 or fp16 on GPU, off on CPU) | bf16 | fp16 | off
    device: str = "auto"  # in-process runs: auto | cpu | cuda | cuda:N
    threads: int = 0  # torch threads per worker; 0 = torch's default
    max_bad_updates: int = 10  # stop after this many non-finite losses in a row
    log_every: int = 50  # updates between training log records (also every 10 s)
    resume: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list
        if isinstance(self.teacher_init, bool):  # saved before parts could be chosen
            self.teacher_init = "all" if self.teacher_init else "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A TrainConfig from JSON values; a wrong name or type raises a LanmtError naming it."""
        from lanmt_cli.config import check_types

        if not isinstance(data, dict):
            raise LanmtError("the training options must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise LanmtError(f"unknown training options: {', '.join(unknown)}")
        try:
            check_types(cls, data)
        except ValueError as err:
            raise LanmtError(f"training options: {err}") from None
        return cls(**data)

    def check(self) -> TrainConfig:
        """Raise a LanmtError naming the first option that makes no sense."""
        from lanmt_cli.trainers.schedule import LR_SCHEDULES

        if self.stage not in TRAIN_STAGES:
            raise LanmtError(f"unknown training stage {self.stage!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise LanmtError(f"{f.name.replace('_', '-')} must be a finite number, got {value}")
        betas = self.betas
        if len(betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in betas):
            got = ", ".join(str(b) for b in betas)
            raise LanmtError(f"adam-betas must be two numbers in [0, 1), got {got}")
        if not 0 <= self.seed <= MAX_SEED:
            raise LanmtError(f"seed must be in [0, 2**63 - 1], got {self.seed}")
        positive = {"max_tokens": self.max_tokens, "accum": self.accum, "lr": self.lr}
        positive["adam_eps"] = self.adam_eps
        positive |= {"valid_per_epoch": self.valid_per_epoch, "log_every": self.log_every}
        positive |= {"max_bad_updates": self.max_bad_updates, "valid_beam": self.valid_beam}
        for name in ("max_steps", "epochs", "max_time", "valid_every"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if value <= 0:
                raise LanmtError(f"{name.replace('_', '-')} must be positive, got {value}")
        for name in ("warmup", "clip_norm", "kl_budget", "kl_floor", "weight_decay", "patience"):
            if getattr(self, name) < 0:
                raise LanmtError(f"{name.replace('_', '-')} must not be negative")
        if not 0 <= self.ema < 1:
            raise LanmtError(f"--ema is a decay in [0, 1) (0 = off), got {self.ema}")
        if self.schedule not in LR_SCHEDULES:
            raise LanmtError(f"unknown schedule {self.schedule!r} ({', '.join(LR_SCHEDULES)})")
        if self.kl_floor > self.kl_budget:
            raise LanmtError(f"kl-floor {self.kl_floor} is above kl-budget {self.kl_budget}")
        from lanmt_cli.trainers.warm_start import TEACHER_INIT_PARTS

        if self.teacher_init not in TEACHER_INIT_PARTS:
            choices = ", ".join(TEACHER_INIT_PARTS)
            raise LanmtError(f"unknown --teacher-init {self.teacher_init!r} ({choices})")
        if self.stage != "teacher" and self.bleu:
            from lanmt_cli.registry import resolve

            try:
                decoder = resolve(self.select)[1]
            except LanmtError as err:
                raise LanmtError(f"--select {self.select}: {err}") from None
            if decoder.needs_teacher or decoder.model_kind != "lanmt":
                raise LanmtError(
                    f"--select {self.select}: validation decodes with the LaNMT model alone "
                    "(one-shot, refine, latent-search)"
                )
        if self.amp not in AMP_MODES:
            raise LanmtError(f"unknown --amp {self.amp!r} ({', '.join(AMP_MODES)})")
        return self


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What each stage does unless told otherwise. Finetune follows the reference
# implementation: a fresh Adam at a constant 1e-4, one epoch, budget 0, validation
# 20 times, the checkpoint with the best validation BLEU kept.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "teacher": {"train_split": "train"},
    # The floor keeps the latent in use (recipes/README.md: the runs that chose it).
    "lanmt": {"train_split": "distill", "kl_budget": 1.0, "kl_anneal": True, "kl_floor": 0.5},
    "finetune": {
        "train_split": "distill",
        "kl_budget": 0.0,
        "kl_anneal": False,
        "kl_floor": 0.0,
        "epochs": 1.0,
        "lr": 1e-4,
        "schedule": "constant",
        "warmup": 0,
        "valid_per_epoch": 20,
    },
}

# Budget used when neither --max-steps nor --epochs is given (the reference's 100k updates).
DEFAULT_MAX_STEPS = 100_000

# Command-line names of architecture options and the config fields they set.
MODEL_FIELDS = {
    "transformer": {"layers": ("encoder_layers", "decoder_layers")},
    "lanmt": {"layers": ("prior_layers", "decoder_layers")},
}


def model_config(kind: str, src_vocab: int, tgt_vocab: int, overrides: dict[str, Any]):
    """A model config of `kind` for the vocabularies, with architecture overrides applied."""
    from lanmt_cli.config import config_from_dict

    return apply_model_overrides(
        config_from_dict({"kind": kind, "src_vocab": src_vocab, "tgt_vocab": tgt_vocab}),
        overrides,
    )


def apply_model_overrides(config, overrides: dict[str, Any]):
    """Set fields of a model config; `layers` sets the main stacks; unknown names fail."""
    values = {}
    aliases = MODEL_FIELDS[config.kind]
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in overrides.items():
        if value is None:
            continue
        targets = aliases.get(key, (key,))
        for target in targets:
            if target not in names:
                raise LanmtError(f"the {config.kind} model has no option {key!r}")
            values[target] = value
    return dataclasses.replace(config, **values)


def save_config(config: TrainConfig) -> None:
    from lanmt_cli.textio import atomic_file, writing

    path = Path(config.out) / CONFIG_FILE
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def saved_config(stage_dir: Path) -> dict[str, Any]:
    """The options a stage directory was last trained with ({} when none)."""
    path = Path(stage_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    from lanmt_cli.config import check_types

    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LanmtError(f"{path}: unreadable ({err})") from None
    try:
        return check_types(TrainConfig, saved)
    except ValueError as err:
        raise LanmtError(f"{path}: {err}") from None
