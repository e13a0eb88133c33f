"""Choosing the torch device: one rule for translation, benchmarking and training."""

from __future__ import annotations

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
