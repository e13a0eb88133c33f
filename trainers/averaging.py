"""Weight averaging: an exponential moving average (EMA) of the weights during training.

With `--ema D` the trainer keeps, beside the weights the optimizer moves, their average
`avg <- d * avg + (1 - d) * w` after every update, where `d = min(D, (1 + n) / (10 + n))`
at the n-th averaged update (n from 0), so that the first updates are not drowned by the
weights training started from. Validation scores the averaged weights and both `last/` and
`best/` hold them as their model (what `lanmt translate --model` reads is what validation
scored); `last/` also keeps the optimizer's own weights in its training state, so that
`--resume` continues training them and the average as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def decay_at(decay: float, updates: int) -> float:
    """The decay of the average's update number `updates` (0-based): `decay`, lower at first."""
    return min(decay, (1 + updates) / (10 + updates))


def averaged_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point weights by name, tied weights once (they share storage)."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor
    return out


class WeightAverage:
    """The EMA of one model's floating-point weights (float32, on the model's device)."""

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.live = averaged_tensors(model)  # the model's own tensors (shared storage)
        self.average = {k: t.detach().float().clone() for k, t in self.live.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the average (after an optimizer step)."""
        weight = 1.0 - decay_at(self.decay, self.updates)
        averages = list(self.average.values())
        torch._foreach_lerp_(averages, [t.float() for t in self.live.values()], weight)
        self.updates += 1

    @torch.no_grad()
    def load_average(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the average (e.g. to the weights of the checkpoint being resumed)."""
        for name, avg in self.average.items():
            avg.copy_(tensors[name])

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[dict[str, torch.Tensor]]:
        """The model holds the averaged weights inside the block; yields (a copy of) the
        optimizer's own weights, which are put back after it."""
        own = {k: t.detach().clone() for k, t in self.live.items()}
        load_tensors(self.live, self.average)
        try:
            yield own
        finally:
            load_tensors(self.live, own)


@torch.no_grad()
def load_tensors(targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into `targets` (e.g. a model's `averaged_tensors`), name by name."""
    for name, t in targets.items():
        t.copy_(tensors[name])


__all__ = ["WeightAverage", "decay_at", "averaged_tensors", "load_tensors"]
