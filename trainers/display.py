"""The console view of training: it follows the JSONL log that rank 0 writes.

One mechanism for every runner: in-process and Ray runs alike append records to
`train.jsonl`, and a thread in the driver reads them back to draw a rich progress
bar (steps, target tokens per second, time left) and print validation lines. Without
a terminal (a background run), every record becomes one plain line instead.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lanmt_cli import metrics as metric
from lanmt_cli.progress import bar, format_duration, stderr_console

# The validation metrics of the paper's public implementation, in its order; then BLEU.
VALID_KEYS = (
    metric.LEN_LOSS, metric.LEN_ACC, metric.LOSS, metric.WORD_ACC, metric.KL_BUDGET, metric.KL,
    metric.TOK_KL, metric.NLL,
)  # fmt: skip
# Is the latent alive? (LaNMT only; trainers/validate.py)
LATENT_KEYS = (
    metric.ACC_POST, metric.ACC_PRIOR, metric.LATENT_GAIN, metric.PRIOR_SIGMA, metric.POST_SIGMA,
    metric.REPEAT_RATE, metric.repeats_of("refine1"), metric.BLEU_ONE_SHOT, metric.BLEU_REFINE1,
    metric.BLEU_ORACLE,
)  # fmt: skip
TRAIN_KEYS = (metric.LOSS, metric.NLL, metric.WORD_ACC, metric.KL_BUDGET, metric.TOK_KL)


def _metrics(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    return " ".join(f"{k} {record[k]:.4g}" for k in keys if k in record)


class FollowLog(threading.Thread):
    """Call `handle(record)` for each record appended to `path` after the start."""

    def __init__(self, path: Path, handle: Callable[[dict], None]):
        super().__init__(daemon=True)
        self.path, self.handle = Path(path), handle
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.done = threading.Event()

    def run(self) -> None:
        buffer = ""
        while True:
            finished = self.done.is_set()  # read once more after the run ends
            if self.path.exists():
                with open(self.path, encoding="utf-8") as f:
                    f.seek(self.offset)
                    chunk = f.read()
                    self.offset = f.tell()
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    with contextlib.suppress(ValueError):
                        self.handle(json.loads(line))
            if finished:
                return
            self.done.wait(0.3)


class TrainDisplay:
    """Draws training records: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, console=None):
        self.console = console or stderr_console()
        self.live = self.console.is_terminal
        self.progress = None
        self.task = None
        self.first: tuple[float, int] | None = None  # (time, step) of the first record
        self.max_time: float | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        handler = getattr(self, f"on_{record.get('event')}", None)
        if handler is not None:
            handler(record)

    def print(self, text: str, style: str | None = None) -> None:
        console = self.progress.console if self.progress is not None else self.console
        console.print(text, style=style, markup=False)

    def time_left(self, record: dict[str, Any]) -> str:
        step, total = record["step"], record.get("total_steps") or 0
        if self.first is None or step <= self.first[1]:
            return "?"
        rate = (record["time"] - self.first[0]) / (step - self.first[1])
        left = rate * max(total - step, 0)
        if self.max_time is not None and "elapsed" in record:
            left = min(left, max(self.max_time - record["elapsed"], 0))
        return format_duration(left)

    def on_start(self, r: dict[str, Any]) -> None:
        self.first = (r["time"], r["step"])
        self.max_time = r.get("max_time")
        where = f"from {r['resumed_from']}" if r.get("resumed_from") else "from scratch"
        self.print(
            f"{r['stage']}: {r['parameters']:,} parameters, {r['world_size']} worker(s) on "
            f"{r['device']} (amp {r['amp']}), {r['updates_per_epoch']:,} updates per epoch, "
            f"{r['total_steps']:,} updates in all, validation every {r['valid_every']:,}; "
            f"starting at update {r['step']:,} {where}"
        )
        if self.live and self.progress is None:
            self.progress = bar(console=self.console, info=True, time_left=False)
            self.progress.start()
            self.task = self.progress.add_task(
                r["stage"], total=r["total_steps"], completed=r["step"], info=""
            )

    def on_train(self, r: dict[str, Any]) -> None:
        info = (
            f"{r['tokens_per_s']:,.0f} tok/s | {_metrics(r, TRAIN_KEYS)} | lr {r['lr']:.2e} | "
            f"{self.time_left(r)} left"
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=r["step"], info=info)
        else:
            self.print(
                f"{r['stage']} {r['step']:,}/{r['total_steps']:,} ep {r['epoch']:.2f} | {info}"
            )

    def on_valid(self, r: dict[str, Any]) -> None:
        bleu = f" | BLEU {r[metric.BLEU]:.2f}" if metric.BLEU in r else ""
        mark = " (best)" if r.get("best") else ""
        self.print(f"{r['stage']} valid {r['step']:,} | {_metrics(r, VALID_KEYS)}{bleu}{mark}")
        if any(k in r for k in LATENT_KEYS):
            self.print(f"  latent | {_metrics(r, LATENT_KEYS)}")

    def on_warning(self, r: dict[str, Any]) -> None:
        self.print(f"warning: {r['message']}", style="yellow")

    def on_error(self, r: dict[str, Any]) -> None:
        self.print(f"error: {r['message']}", style="red")

    def on_end(self, r: dict[str, Any]) -> None:
        self.close()
        best = r.get("best_score")
        if best is not None:
            best = f"; best validation score {best:.2f} at update {r['best_step']:,}"
        else:
            best = ""
        self.print(
            f"{r['stage']}: stopped at update {r['step']:,} ({r['reason']}) after "
            f"{format_duration(r['elapsed'])}{best}"
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@contextlib.contextmanager
def follow(log_path: Path, show: bool = True) -> Iterator[None]:
    """Show the records appended to `log_path` while the block runs."""
    if not show:
        yield
        return
    display = TrainDisplay()
    follower = FollowLog(log_path, display)
    follower.start()
    try:
        yield
    finally:
        follower.done.set()
        follower.join(timeout=5)
        display.close()
