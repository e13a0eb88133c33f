"""Choosing the torch device (one rule for translation, benchmarking and training) and the
CPU threads of a batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lanmt_cli.errors import LanmtError


def pick_device(device: str) -> str:
    """`auto` -> cuda if available, else cpu; `cuda` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise LanmtError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise LanmtError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return device


# Padded source tokens below which a batch runs on one CPU thread. A single sentence is a
# few hundred small matrix products; handing each to a second OpenMP thread that sleeps when
# idle costs more than it saves (one-shot at batch 1 on 2 cores: 10.5 ms on 1 thread, 13.7
# on 2), and one thread holds up on a busy machine. Measured crossover: 50-150 tokens.
SMALL_BATCH_TOKENS = 64


def batch_threads(tokens: int, threads: int) -> int:
    """CPU threads for a batch of `tokens` padded source tokens: 1 if small, else `threads`."""
    return 1 if tokens < SMALL_BATCH_TOKENS else threads


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on `n` torch CPU threads, then restore the previous setting."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)
