"""int8 inference for the NAT model that stays batch-size invariant.

torch's dynamic quantization scales activations per tensor, so a sentence's output would
depend on what else is in its batch. Here every Linear layer keeps int8 weights with one
scale per output channel, and quantizes its input with one scale per row (token): integer
products are exact, so each token's result depends on that token alone.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class Int8Linear(nn.Module):
    """A Linear layer computing in int8: per-channel weight scales, per-row input scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(1).clamp(min=1e-12) / 127.0  # (out,)
        q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_t", q.t().contiguous())  # (in, out)
        self.register_buffer("scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()  # (N, in)
        x_scale = rows.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0  # (N, 1)
        xq = (rows / x_scale).round().clamp(-127, 127).to(torch.int8)
        y = torch._int_mm(xq, self.weight_t).float() * x_scale * self.scale  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (on the CPU, eval mode) with every nn.Linear made an Int8Linear."""
    copied = copy.deepcopy(model).cpu().eval()
    for module in list(copied.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return copied
