"""Training schedules: the learning rate and LaNMT's KL budget of each update; and the
duration of the time budget (`--max-time 1.5h`). Durations on the console: lanmt_cli.progress."""

from __future__ import annotations

import math
import re

from lanmt_cli.errors import LanmtError

LR_SCHEDULES = ("inverse-sqrt", "constant")


def learning_rate(step: int, peak: float, warmup: int, schedule: str = "inverse-sqrt") -> float:
    """Learning rate of update number `step` (1-based).

    Both schedules rise linearly to `peak` over `warmup` updates; then "inverse-sqrt"
    decays as peak * sqrt(warmup / step) and "constant" stays at `peak`.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    step = max(step, 1)
    if warmup > 0 and step < warmup:
        return peak * step / warmup
    if schedule == "constant" or warmup <= 0:
        return peak
    return peak * math.sqrt(warmup / step)


def kl_budget(
    step: int, total_steps: int, budget: float = 1.0, anneal: bool = True, floor: float = 0.0
) -> float:
    """Free-bits budget: `budget` for the first half of training, then linearly to `floor`."""
    if not anneal or total_steps <= 0:
        return budget
    half = total_steps / 2
    if step <= half:
        return budget
    return floor + (budget - floor) * max(0.0, 1.0 - (step - half) / half)


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in '3600', '90s', '45m', '1.5h' or '2d'; a LanmtError for anything else."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise LanmtError(f"cannot read duration {text!r} (examples: 3600, 90m, 1.5h)")
    return float(match.group(1)) * _SECONDS[match.group(2)]
