"""Lower-precision copies of the NAT model for CPU inference: int8 and bfloat16.

int8: torch's dynamic quantization scales activations per tensor, so a sentence's output would
depend on what else is in its batch. Here every Linear layer keeps int8 weights with one
scale per output channel, and quantizes its input with one scale per row (token): integer
products are exact, so each token's result depends on that token alone.

bfloat16: every Linear layer keeps bfloat16 weights and multiplies bfloat16 inputs, returning
float32; everything else (norms, attention, softmax) stays float32. On CPUs with AVX512-BF16
or AMX the matrix products run about twice as fast as float32; elsewhere they are slower.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
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


class BF16Linear(nn.Module):
    """A Linear layer computing in bfloat16 (float32 in and out)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))  # (out, in)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


LOW_PRECISION = {"int8": Int8Linear, "bf16": BF16Linear}


def low_precision(model: nn.Module, kind: str) -> nn.Module:
    """A copy of `model` (eval mode) with every nn.Linear computing in `kind` (int8, bf16).

    int8 copies go to the CPU (torch._int_mm); bf16 copies stay on the model's device.
    """
    layer = LOW_PRECISION[kind]
    copied = copy.deepcopy(model).eval()
    if kind == "int8":
        copied = copied.cpu()
    for module in list(copied.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, layer(child))
    return copied
