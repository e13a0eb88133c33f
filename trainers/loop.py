"""The training loop: one function that runs in-process and on every Ray Train worker.

`train_loop(cfg, worker)` runs on a `Worker`: this process (`run_in_process`), or a Ray
Train worker (`lanmt_cli.trainers.ray_runner` subclasses `Worker`; this module does not
know Ray). Each worker takes its own share of the token-count batches, accumulates `accum`
of them per update, and (with several workers) averages gradients through DDP. Rank 0
alone validates, writes the log and the checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lanmt_cli import metrics as metric
from lanmt_cli.bundle import WEIGHTS_FILE, build_model, load_bundle, load_weights, read_config
from lanmt_cli.config import config_from_dict
from lanmt_cli.data import Corpus, read_meta, token_batches
from lanmt_cli.devices import pick_device
from lanmt_cli.errors import LanmtError
from lanmt_cli.model import count_parameters
from lanmt_cli.tokenizer import Tokenizer
from lanmt_cli.trainers.averaging import WeightAverage, averaged_tensors, load_tensors
from lanmt_cli.trainers.checkpoint import (
    Position,
    TrainingState,
    has_state,
    load_state,
    read_position,
    save_checkpoint,
)
from lanmt_cli.trainers.config import (
    DEFAULT_MAX_STEPS,
    MODEL_KIND,
    TrainConfig,
    apply_model_overrides,
    model_config,
)
from lanmt_cli.trainers.schedule import kl_budget, learning_rate
from lanmt_cli.trainers.validate import (
    MetricSums,
    bleu_score,
    lanmt_bleus,
    split_text,
    translate_ids,
    valid_metrics,
)
from lanmt_cli.trainers.warm_start import init_from_teacher

LOG_FILE = "train.jsonl"
LOG_SECONDS = 10.0  # a training record at least this often
# Called with the Trainer after each update (skipped ones too): tests, instrumentation.
OnUpdate = Callable[["Trainer"], None]


class TrainingStopped(Exception):
    """Training cannot go on (e.g. the loss keeps being NaN); the message says why."""


class Worker:
    """Where the loop runs: one process, no Ray. Subclassed for Ray Train workers."""

    rank = 0
    world_size = 1

    def __init__(self, device: str = "auto"):
        self.device = torch.device(pick_device(device))

    def restart_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        """The checkpoint a restarted worker group continues from (Ray only)."""
        return contextlib.nullcontext(None)

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        """Tell the runner about a new checkpoint (a barrier for Ray workers)."""


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for --amp: bf16 where the GPU has it, else fp16; none on the CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16" and device.type != "cuda":
        raise LanmtError("--amp fp16 needs a GPU (use --amp bf16 or off on the CPU)")
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def param_digest(model: torch.nn.Module) -> bytes:
    """SHA-256 of all parameters: equal digests mean identical replicas."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.digest()


class Trainer:
    """State and steps of one training run on one worker."""

    def __init__(self, cfg: TrainConfig, worker: Worker, on_update: OnUpdate | None = None):
        self.cfg, self.worker, self.on_update = cfg, worker, on_update
        self.rank, self.world = worker.rank, worker.world_size
        self.device = worker.device
        self.out = Path(cfg.out)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dtype = amp_dtype(cfg.amp, self.device)
        self.meta = read_meta(Path(cfg.data))
        self.tokenizer = Tokenizer.from_dir(Path(cfg.data))
        self.train = Corpus.open(Path(cfg.data), cfg.train_split)
        self.valid = None
        if self.rank == 0:
            self.valid = Corpus.open(Path(cfg.data), cfg.valid_split)
            self.references = split_text(Path(cfg.data), cfg.valid_split, "tgt", self.tokenizer)
        self._plan()

        with worker.restart_checkpoint() as restart:
            start = self._newest(restart, self.out / "last" if cfg.resume else None)
            torch.manual_seed(cfg.seed)  # the same initial weights on every worker
            self.model = self._build_model(start or cfg.init).to(self.device)
            self.optimizer = torch.optim.Adam(
                self.model.parameters(),
                lr=cfg.lr,
                betas=cfg.betas,
                eps=cfg.adam_eps,
                weight_decay=cfg.weight_decay,
            )
            fp16 = self.dtype == torch.float16
            self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
            self.pos = Position(world_size=self.world)
            torch.manual_seed(cfg.seed + 1000 * self.rank)  # dropout differs per worker
            resumed_average = None
            if start is not None:
                resumed_average = self._restore(load_state(start))
        self.resumed_from = str(start) if start is not None else None
        self.average = None  # rank 0: the weights' moving average (--ema)
        if cfg.ema and self.rank == 0:
            if resumed_average is None:  # a new average starts from the current weights
                self.pos.ema_updates = 0
            self.average = WeightAverage(self.model, cfg.ema, self.pos.ema_updates)
            if resumed_average is not None:
                self.average.load_average(resumed_average)

        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.bad_in_a_row = 0
        self.stop_requested = False  # rank 0: patience ran out
        self.sums = MetricSums()  # training metrics since the last record
        self.log_tokens = 0
        self.grad_norm = 0.0
        self.log_time = time.monotonic()
        self.run_start = time.monotonic()
        self.elapsed_before = self.pos.elapsed

    # -- set-up ----------------------------------------------------------------
    def _plan(self) -> None:
        """Batches per epoch, the update budget and the validation interval."""
        cfg = self.cfg
        self.batches_per_epoch = len(self._epoch_batches(0))
        if self.batches_per_epoch == 0:
            raise LanmtError(
                f"split {cfg.train_split!r} has too few batches for {self.world} workers"
            )
        updates_per_epoch = math.ceil(self.batches_per_epoch / cfg.accum)
        budgets = {}  # the smallest one ends training
        if cfg.max_steps:
            budgets["max_steps"] = cfg.max_steps
        if cfg.epochs:
            budgets["epochs"] = math.ceil(cfg.epochs * self.batches_per_epoch / cfg.accum)
        budgets = budgets or {"max_steps": DEFAULT_MAX_STEPS}
        self.budget_name = min(budgets, key=budgets.get)
        self.total_steps = budgets[self.budget_name]
        self.updates_per_epoch = updates_per_epoch
        self.valid_every = cfg.valid_every or max(1, updates_per_epoch // cfg.valid_per_epoch)

    def _newest(self, restart: Path | None, last: Path | None) -> Path | None:
        """The newer of Ray's checkpoint and our own `last/`, if every worker can read it.

        Rank 0 writes `last/` before reporting it to Ray, which collects reports every
        few seconds: a worker that dies right after a report can take it along.
        """
        step = read_position(last).step if last is not None and has_state(last) else -1
        ray_step = read_position(restart).step if restart is not None else -1
        if self.world > 1:  # `last/` counts only where all workers see the same one
            t = torch.tensor([step, -step], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            low, high = t[0].item(), -t[1].item()
            if low != high:
                step = -1
        if step > ray_step:
            return last
        return restart

    def _build_model(self, source: str | Path | None):
        """A fresh model, or one with the weights of the bundle/checkpoint `source`."""
        kind = MODEL_KIND[self.cfg.stage]
        if source is None:
            config = model_config(
                kind, self.meta["src_vocab_size"], self.meta["tgt_vocab_size"], self.cfg.model
            )
        else:
            config = config_from_dict(read_config(source)["model"])
            if config.kind != kind:
                raise LanmtError(f"{source} holds a {config.kind} model, not a {kind} model")
            config = apply_model_overrides(config, self.cfg.model)
        vocab = (self.meta["src_vocab_size"], self.meta["tgt_vocab_size"])
        if (config.src_vocab, config.tgt_vocab) != vocab:
            raise LanmtError(
                f"model vocabularies {(config.src_vocab, config.tgt_vocab)} differ from "
                f"those of {self.cfg.data} {vocab}"
            )
        model = build_model(config)
        if source is not None:
            load_weights(model, Path(source) / WEIGHTS_FILE)
        elif self.cfg.stage == "lanmt" and self.cfg.teacher_init != "none":
            init_from_teacher(model, load_bundle(self.cfg.teacher).model, self.cfg.teacher_init)
        return model

    def _restore(self, state: TrainingState) -> dict[str, torch.Tensor] | None:
        """Continue from a checkpoint; returns the average its bundle holds (--ema), if any."""
        average = None
        if state.weights is not None:  # the bundle holds the average: train the own weights
            live = averaged_tensors(self.model)
            average = {k: t.detach().clone() for k, t in live.items()}
            load_tensors(live, state.weights)
        self.optimizer.load_state_dict(state.optimizer)
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)
        self.pos = state.position
        if len(state.rng) == self.world:  # same workers: continue their random streams
            gens = state.rng[self.rank]
            torch.set_rng_state(gens["cpu"])
            if "cuda" in gens and self.device.type == "cuda":
                torch.cuda.set_rng_state(gens["cuda"], self.device)
        else:
            torch.manual_seed(self.cfg.seed + 1000 * self.rank + self.pos.step)
        self.pos.world_size = self.world
        return average

    # -- data ------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list:
        return token_batches(
            self.train.src_lengths,
            self.train.tgt_lengths,
            self.cfg.max_tokens,
            seed=self.cfg.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world,
        )

    def _batches(self) -> Iterator[tuple[int, int, Any]]:
        """(epoch, batches of the epoch used after this one, indices), epoch after epoch."""
        epoch, start = self.pos.epoch, self.pos.batch // self.world
        while True:
            batches = self._epoch_batches(epoch)
            for i in range(start, len(batches)):
                yield epoch, i + 1, batches[i]
            epoch, start = epoch + 1, 0

    # -- helpers ---------------------------------------------------------------
    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def forward_args(self, step: int) -> dict[str, float]:
        """Keyword arguments of the model's forward at update `step` (1-based): LaNMT takes
        its KL budget, the teacher nothing."""
        if self.model.config.kind != "lanmt":
            return {}
        cfg = self.cfg
        budget = kl_budget(step, self.total_steps, cfg.kl_budget, cfg.kl_anneal, cfg.kl_floor)
        return {"kl_budget": budget}

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.run_start

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def log(self, event: str, **fields: Any) -> None:
        """Append one record to the JSONL log (rank 0 only)."""
        if self.rank != 0:
            return
        record = {"event": event, "stage": self.cfg.stage, "time": round(time.time(), 3)}
        record.update(fields)
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- one update ------------------------------------------------------------
    def update(self, group: list) -> bool:
        """Forward and backward over `group` batches, then one optimizer step.

        Returns True when every worker agrees to stop (time is up, or patience ran out).
        """
        cfg, model = self.cfg, self.ddp or self.model
        forward_args = self.forward_args(self.pos.step + 1)
        tokens, bad = 0.0, 0.0
        for j, (_, _, idx) in enumerate(group):
            src, tgt = (t.to(self.device, non_blocking=True) for t in self.train.collate(idx))
            syncs = self.ddp is None or j == len(group) - 1
            with contextlib.nullcontext() if syncs else self.ddp.no_sync():
                with self.autocast():
                    loss, metrics = model(src, tgt, **forward_args)
                # sum over tokens (scaled to stay near 1), divided by all tokens below
                scaled = loss * (metrics[metric.NTOKENS] / cfg.max_tokens)
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()  # even when not finite, so that DDP stays in step
            if torch.isfinite(loss.detach()):
                self.sums.add(metrics, src, tgt)
            else:
                bad = 1.0
            tokens += float(metrics[metric.NTOKENS])
        time_up = cfg.max_time is not None and self.elapsed() >= cfg.max_time
        all_tokens, any_bad, stop = self.all_sum(
            [tokens, bad, float(time_up or self.stop_requested)]
        )
        self.pos.epoch, self.pos.batch = group[-1][0], group[-1][1] * self.world

        params = list(self.model.parameters())
        norm = math.nan
        if not any_bad:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            factor = self.world * cfg.max_tokens / max(all_tokens, 1.0)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(factor)
            limit = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
            norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        if math.isfinite(norm):
            lr = learning_rate(self.pos.step + 1, cfg.lr, cfg.warmup, cfg.schedule)
            for group_ in self.optimizer.param_groups:
                group_["lr"] = lr
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.pos.step += 1
            if self.average is not None:
                self.average.update()
                self.pos.ema_updates = self.average.updates
            self.pos.tokens += int(all_tokens)
            self.log_tokens += all_tokens
            self.grad_norm = norm
            self.bad_in_a_row = 0
        else:
            self._skip(loss_bad=bool(any_bad))
        self.optimizer.zero_grad(set_to_none=True)
        return bool(stop)

    def _skip(self, loss_bad: bool) -> None:
        """A non-finite loss or gradient: no update. fp16 overflows only lower the scale."""
        self.pos.skipped += 1
        overflow = self.scaler is not None and not loss_bad
        if overflow:
            self.scaler.update()  # lowers the loss scale
            return
        self.bad_in_a_row += 1
        what = "loss" if loss_bad else "gradient"
        message = (
            f"non-finite {what} after update {self.pos.step}: update skipped "
            f"({self.bad_in_a_row} in a row, {self.pos.skipped} in all)"
        )
        self.log("warning", step=self.pos.step, message=message)
        if self.bad_in_a_row >= self.cfg.max_bad_updates:
            raise TrainingStopped(
                f"training stopped: the {what} was NaN or infinite in {self.bad_in_a_row} "
                f"updates in a row (after update {self.pos.step}); resume from the last "
                "checkpoint with a lower --lr, a longer --warmup or --amp off"
            )

    # -- logging, validation, checkpoints --------------------------------------
    def log_training(self) -> None:
        now = time.monotonic()
        seconds = max(now - self.log_time, 1e-9)
        record = self.sums.averages()
        self.log(
            "train",
            step=self.pos.step,
            total_steps=self.total_steps,
            epoch=round(self.pos.epoch + self.pos.batch / self.world / self.batches_per_epoch, 4),
            lr=learning_rate(self.pos.step, self.cfg.lr, self.cfg.warmup, self.cfg.schedule),
            grad_norm=round(self.grad_norm, 4),
            tokens_per_s=round(self.log_tokens / seconds, 1),
            tokens=self.pos.tokens,
            skipped=self.pos.skipped,
            elapsed=round(self.elapsed(), 1),
            **({"loss_scale": self.scaler.get_scale()} if self.scaler is not None else {}),
            **record,
        )
        self.sums, self.log_tokens, self.log_time = MetricSums(), 0, now

    def validate(self) -> tuple[dict[str, float], bool]:
        """Rank 0: validation metrics and BLEU; whether this is the best score so far."""
        cfg = self.cfg
        metrics = valid_metrics(
            self.model,
            self.valid,
            cfg.max_tokens,
            self.device,
            self.autocast,
            self.forward_args(max(self.pos.step, 1)),
        )
        metrics.pop(metric.NTOKENS, None)
        count = min(cfg.bleu_sents or len(self.valid), len(self.valid))
        decoding = (self.model, self.valid, count, cfg.max_tokens, self.device, self.autocast)
        if cfg.bleu and self.model.config.kind == "lanmt":
            metrics |= lanmt_bleus(*decoding, self.tokenizer, self.references, cfg.select)
        elif cfg.bleu:
            hyps = translate_ids(*decoding, beam=cfg.valid_beam)
            metrics[metric.BLEU] = bleu_score(self.model, self.tokenizer, hyps, self.references)
        score = metrics[metric.BLEU] if cfg.bleu else -metrics[metric.LOSS]
        pos = self.pos
        best = pos.best_score is None or score > pos.best_score
        if best:
            pos.best_score, pos.best_step, pos.stale = score, pos.step, 0
        else:
            pos.stale += 1
        if cfg.patience and pos.stale >= cfg.patience:
            self.stop_requested = True
        return metrics, best

    def gather_rng(self) -> list[dict[str, torch.Tensor]]:
        """Every worker's random generator states, gathered on all (a collective)."""
        local = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            local["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world == 1:
            return [local]
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.world)]
        for key, t in local.items():
            parts = [torch.empty_like(t, device=self.device) for _ in range(self.world)]
            dist.all_gather(parts, t.to(self.device))
            for rank, part in enumerate(parts):
                out[rank][key] = part.cpu()
        return out

    def averaged(self) -> contextlib.AbstractContextManager[dict[str, torch.Tensor] | None]:
        """Rank 0: the model holds the averaged weights inside the block (--ema); yields the
        optimizer's own weights then, None without an average."""
        if self.average is None:
            return contextlib.nullcontext(None)
        return self.average.swapped_in()

    def checkpoint(self, final: bool) -> None:
        """Validate and write `last` (and `best`) on rank 0; every worker reports.

        With --ema, validation scores and both bundles hold the averaged weights; `last`
        keeps the optimizer's own in its training state."""
        with self.averaged() as own:
            self._checkpoint(final, own)

    def _checkpoint(self, final: bool, own: dict[str, torch.Tensor] | None) -> None:
        metrics, best = {}, False
        if self.rank == 0:
            start = time.monotonic()
            metrics, best = self.validate()
            self.log(
                "valid",
                step=self.pos.step,
                total_steps=self.total_steps,
                best=best,
                best_score=self.pos.best_score,
                best_step=self.pos.best_step,
                seconds=round(time.monotonic() - start, 1),
                **metrics,
            )
        rng = self.gather_rng()
        last = None
        if self.rank == 0:
            self.pos.elapsed = self.elapsed()
            state = TrainingState(
                self.pos,
                self.optimizer.state_dict(),
                self.scaler.state_dict() if self.scaler is not None else None,
                rng,
                self.cfg.to_dict(),
                own,
            )
            info = {
                "stage": self.cfg.stage,
                "step": self.pos.step,
                "data": self.cfg.data,
                "train_split": self.cfg.train_split,
                **{f"valid_{k}": round(v, 4) for k, v in metrics.items()},
            }
            langs = {k: self.meta.get(f"{k}_lang") for k in ("src", "tgt")}
            langs = {k: v for k, v in langs.items() if v}
            save = dict(teacher=self.cfg.teacher, languages=langs, info=info)
            last = save_checkpoint(self.out / "last", self.model, self.tokenizer, state, **save)
            if best:
                save_checkpoint(self.out / "best", self.model, self.tokenizer, None, **save)
            self.log("checkpoint", step=self.pos.step, path=str(last), best=best, final=final)
        report = {"step": self.pos.step, **metrics}
        self.worker.report(report if self.rank == 0 else {}, last)

    # -- the run ---------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        cfg = self.cfg
        self.log(
            "start",
            step=self.pos.step,
            total_steps=self.total_steps,
            world_size=self.world,
            device=str(self.device),
            amp=str(self.dtype).replace("torch.", "") if self.dtype else "off",
            parameters=count_parameters(self.model),
            batches_per_epoch=self.batches_per_epoch,
            updates_per_epoch=self.updates_per_epoch,
            valid_every=self.valid_every,
            resumed_from=self.resumed_from,
            max_time=cfg.max_time,
            elapsed=round(self.pos.elapsed, 1),
            ema=cfg.ema or None,
        )
        reason = self.budget_name if self.pos.step >= self.total_steps else None
        stream = self._batches()
        self.model.train()
        try:
            while reason is None:
                stop = self.update([next(stream) for _ in range(cfg.accum)])
                done = self.pos.step >= self.total_steps
                if done:
                    reason = self.budget_name
                elif stop:
                    reason = "patience" if self.stop_requested else "max_time"
                if (
                    self.pos.step % cfg.log_every == 0
                    or reason
                    or (time.monotonic() - self.log_time >= LOG_SECONDS)
                ):
                    self.log_training()
                if reason or (self.pos.step > 0 and self.pos.step % self.valid_every == 0):
                    self.checkpoint(final=reason is not None)
                if self.on_update is not None:
                    self.on_update(self)
        except TrainingStopped as err:
            self.log("error", step=self.pos.step, message=str(err))
            return {"error": str(err)}
        digests = self.gather_digests()
        same = len(set(digests)) == 1
        summary = {
            "stage": cfg.stage,
            "reason": reason,
            "step": self.pos.step,
            "total_steps": self.total_steps,
            "tokens": self.pos.tokens,
            "skipped": self.pos.skipped,
            "elapsed": round(self.elapsed(), 1),
            "best_score": self.pos.best_score,
            "best_step": self.pos.best_step,
            "world_size": self.world,
            "replicas_identical": same,
            "out": str(self.out),
        }
        self.log("end", **summary)
        return summary if self.rank == 0 else None

    def gather_digests(self) -> list[str]:
        """Parameter digests of all workers, gathered on all (a collective)."""
        mine = torch.frombuffer(bytearray(param_digest(self.model)), dtype=torch.uint8)
        if self.world == 1:
            return [mine.numpy().tobytes().hex()]
        parts = [torch.empty_like(mine, device=self.device) for _ in range(self.world)]
        dist.all_gather(parts, mine.to(self.device))
        return [p.cpu().numpy().tobytes().hex() for p in parts]


def train_loop(
    cfg: TrainConfig, worker: Worker, on_update: OnUpdate | None = None
) -> dict[str, Any] | None:
    """One worker's training run on `worker` (this process, or a Ray Train worker).

    Returns the run's summary on rank 0 ({"error": ...} when training had to stop).
    """
    return Trainer(cfg, worker, on_update).run()


def run_in_process(cfg: TrainConfig, on_update: OnUpdate | None = None) -> dict[str, Any]:
    """Train on one device in this process, without Ray."""
    return train_loop(cfg, Worker(cfg.device), on_update)


__all__ = ["Trainer", "Worker", "train_loop", "run_in_process", "LOG_FILE"]
