"""`lanmt train`: the whole recipe, or one stage of it, in-process or on Ray Train."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path

import typer


class Stage(str, Enum):
    all = "all"
    teacher = "teacher"
    distill = "distill"
    lanmt = "lanmt"
    finetune = "finetune"


STAGE_CHOICES = tuple(s.value for s in Stage)

HELP = """Train LaNMT: teacher, distillation, LaNMT with the KL budget annealed, finetune.

Every stage keeps its checkpoints in OUT/STAGE/last and OUT/STAGE/best; best/ is a model bundle
for `lanmt translate --model`, OUT/finetune/best the final model. Without --gpus or
--workers, training runs in this process on one device; --gpus N runs N Ray Train
workers, one per GPU (--workers N: CPU workers); --ray-address joins a cluster. Ray workers
need Ray Train: pip install "lanmt[train]".
"""


def train(
    data: Path = typer.Option(
        ..., "--data", metavar="DIR", help="Prepared data directory (lanmt prepare)."
    ),
    out: Path = typer.Option(
        ..., "--out", metavar="DIR", help="Run directory: one folder per stage."
    ),
    stage: Stage = typer.Option(Stage.all, help="The whole recipe, or one stage of it."),
    resume: bool = typer.Option(False, "--resume", help="Continue where the stage stopped."),
    force: bool = typer.Option(False, "--force", help="Discard an earlier run of the stage."),
    # where it runs
    gpus: int = typer.Option(None, min=0, help="GPU workers (Ray when more than 1); 0: CPU only."),
    workers: int = typer.Option(
        0, min=0, help="CPU workers on Ray (gloo), for machines without GPUs."
    ),
    ray_address: str = typer.Option(
        None, metavar="auto|HOST:PORT", help="Join this Ray cluster: auto or HOST:PORT."
    ),
    ray: bool = typer.Option(False, "--ray", help="Use Ray even for one worker."),
    max_failures: int = typer.Option(
        3, min=0, help="Ray: worker-group restarts from the checkpoint."
    ),
    threads: int = typer.Option(None, min=0, help="torch threads per worker (CPU) [torch's]."),
    device: str = typer.Option(
        None, metavar="auto|cpu|cuda|cuda:N", help="In-process device [auto]."
    ),
    amp: str = typer.Option(
        None, metavar="auto|bf16|fp16|off", help="Mixed precision: auto, bf16, fp16 or off."
    ),
    # how long
    max_steps: int = typer.Option(None, help="Updates to train (default 100000)."),
    epochs: float = typer.Option(None, help="Passes over the training data."),
    max_time: str = typer.Option(
        None, metavar="DURATION", help="Training time, e.g. 3600, 90m, 1.5h."
    ),
    # batches and optimizer
    max_tokens: int = typer.Option(None, help="Padded tokens per batch per worker [4096]."),
    accum: int = typer.Option(None, help="Batches per update per worker [1]."),
    lr: float = typer.Option(None, help="Peak learning rate [7e-4; finetune 1e-4]."),
    warmup: int = typer.Option(None, help="Warm-up updates [4000; finetune 0]."),
    schedule: str = typer.Option(
        None, metavar="inverse-sqrt|constant", help="Learning-rate schedule [inverse-sqrt]."
    ),
    adam_betas: str = typer.Option(None, metavar="B1,B2", help="Adam betas [0.9,0.98]."),
    adam_eps: float = typer.Option(None, help="Adam epsilon [1e-4]."),
    weight_decay: float = typer.Option(None, help="Adam weight decay [0]."),
    clip_norm: float = typer.Option(None, help="Gradient norm clipping, 0 = off [1.0]."),
    ema: float = typer.Option(
        None,
        metavar="DECAY",
        help="Average the weights (exponential moving average, e.g. 0.999): validation and "
        "checkpoints use the average; 0 = off [0].",
    ),
    seed: int = typer.Option(None, help="Random seed [1]."),
    # model
    hidden: int = typer.Option(None, help="Model width [256]."),
    layers: int = typer.Option(None, help="Layers of the main stacks [3]."),
    encoder_layers: int = typer.Option(None, help="Teacher: encoder layers [--layers]."),
    decoder_layers: int = typer.Option(None, help="Decoder layers [--layers]."),
    heads: int = typer.Option(None, help="Attention heads [4]."),
    ffn: int = typer.Option(None, help="Feed-forward width [1024]."),
    latent_dim: int = typer.Option(None, help="LaNMT latent dimensions per token [8]."),
    dropout: float = typer.Option(None, help="Dropout [0.1]."),
    label_smoothing: float = typer.Option(None, help="Label smoothing [0.1]."),
    # KL budget
    kl_budget: float = typer.Option(None, help="KL budget per source token [1; finetune 0]."),
    kl_anneal: bool = typer.Option(
        None, "--kl-anneal/--no-kl-anneal", help="Anneal to --kl-floor over the second half."
    ),
    kl_floor: float = typer.Option(None, help="Where the KL budget anneals to [0.5; finetune 0]."),
    # data and models
    train_split: str = typer.Option(
        None, metavar="SPLIT", help="Training split [teacher: train; LaNMT: distill]."
    ),
    valid_split: str = typer.Option(None, metavar="SPLIT", help="Validation split [valid]."),
    teacher: Path = typer.Option(None, metavar="DIR", help="Teacher bundle [OUT/teacher/best]."),
    init: Path = typer.Option(
        None, metavar="DIR", help="Bundle to start from [finetune: OUT/lanmt/last]."
    ),
    teacher_init: str = typer.Option(
        None,
        metavar="none|encoder|all",
        help="LaNMT: start from the teacher's weights: encoder (embeddings, encoder, output "
        "layer) or all (also the decoder) [none].",
    ),
    # validation
    valid_per_epoch: int = typer.Option(None, help="Validations per epoch [4; finetune 20]."),
    valid_every: int = typer.Option(None, help="Validate every N updates instead."),
    bleu: bool = typer.Option(None, "--bleu/--no-bleu", help="Validation BLEU [on]."),
    bleu_sents: int = typer.Option(None, help="Validation BLEU on the first N sentences."),
    valid_beam: int = typer.Option(None, help="Teacher validation beam, 1 = greedy [1]."),
    patience: int = typer.Option(None, help="Stop after N validations without gain."),
    select: str = typer.Option(
        None,
        metavar="NAME[:KEY=VALUE,...]",
        help="LaNMT: the decoder whose validation BLEU picks best/, with options as in "
        "`lanmt bench -d` (e.g. refine:steps=2) [refine1].",
    ),
    log_every: int = typer.Option(None, help="Updates between log records [50]."),
    # distillation
    beam: int = typer.Option(4, help="Distillation beam size."),
    length_penalty: float = typer.Option(1.0, help="Distillation length penalty."),
    distill_tokens: int = typer.Option(4096, help="Distillation batch: source tokens."),
) -> None:
    """Train LaNMT: teacher, distillation, LaNMT with the KL budget annealed, finetune."""
    from lanmt_cli.errors import LanmtError
    from lanmt_cli.trainers.schedule import parse_duration

    stage = Stage(stage).value
    if not math.isfinite(length_penalty):
        raise LanmtError(f"length-penalty must be a finite number, got {length_penalty}")
    if not data.is_dir():
        raise LanmtError(f"{data}: no such data directory (make one with lanmt prepare)")
    betas = None
    if adam_betas is not None:
        try:
            betas = tuple(float(b) for b in adam_betas.split(","))
            assert len(betas) == 2
        except (ValueError, AssertionError):
            raise LanmtError(
                f"--adam-betas {adam_betas!r}: give two numbers, like 0.9,0.98"
            ) from None
    given = {
        "max_steps": max_steps, "epochs": epochs,
        "max_time": parse_duration(max_time) if max_time is not None else None,
        "max_tokens": max_tokens, "accum": accum, "lr": lr, "warmup": warmup,
        "schedule": schedule, "betas": betas, "adam_eps": adam_eps,
        "weight_decay": weight_decay, "clip_norm": clip_norm, "ema": ema, "seed": seed,
        "kl_budget": kl_budget, "kl_anneal": kl_anneal, "kl_floor": kl_floor,
        "select": select, "train_split": train_split,
        "valid_split": valid_split, "valid_per_epoch": valid_per_epoch,
        "valid_every": valid_every, "bleu": bleu, "bleu_sents": bleu_sents,
        "valid_beam": valid_beam, "patience": patience, "log_every": log_every,
        "amp": amp, "device": device, "threads": threads,
        "teacher": str(teacher.resolve()) if teacher else None,
        "init": str(init.resolve()) if init else None, "teacher_init": teacher_init,
    }  # fmt: skip
    options = {k: v for k, v in given.items() if v is not None}
    model = {
        "hidden": hidden, "layers": layers, "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers, "heads": heads, "ffn": ffn,
        "latent_dim": latent_dim, "dropout": dropout, "label_smoothing": label_smoothing,
    }  # fmt: skip
    options["model"] = {k: v for k, v in model.items() if v is not None}

    from lanmt_cli.trainers.stages import Launch, distill_stage, run_recipe, train_stage

    launch = Launch(
        gpus=gpus, workers=workers, ray_address=ray_address, use_ray=ray,
        max_failures=max_failures,
    ).check()  # fmt: skip
    distill_options = {
        "teacher": teacher, "beam": beam, "length_penalty": length_penalty,
        "max_tokens": distill_tokens, "threads": threads or 0,
        "device": "cpu" if gpus == 0 else (device or "auto"),
    }  # fmt: skip
    if stage == "all":
        result = run_recipe(
            out, data, options, launch, distill_options, resume=resume, force=force,
            say=lambda msg: typer.echo(msg, err=True),
        )  # fmt: skip
        typer.echo(f"model: {out / 'finetune' / 'best'}")
    elif stage == "distill":
        result = distill_stage(out, data, resume=resume, force=force, **distill_options)
        typer.echo(
            f"distilled {result['kept']:,} of {result['pairs']:,} pairs into split "
            f"{result['target_split']!r} of {data}"
        )
    else:
        result = train_stage(out, stage, data, options, launch, resume=resume, force=force)
        typer.echo(f"model: {result['model']}")


def register(app: typer.Typer, wrap) -> None:
    app.command("train", help=HELP)(wrap(train))
