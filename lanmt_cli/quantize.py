"""PyTorch CPU inference copies of the NAT model: float32 with pre-packed weights, int8,
bfloat16 (`runtime=torch`; `lanmt_cli.runtime` chooses between these and ONNX Runtime).

float32: every Linear layer hands its weight to oneDNN once, laid out for
its matrix kernels, instead of having it packed again at every call; the products are the
same float32 products (one-shot on 2 CPU threads: batch 1 1.2x, batched 1.2-1.4x faster, the
same 1,000 translations of test_2016_flickr).

int8: torch's dynamic quantization scales activations per tensor, so a sentence's output would
depend on what else is in its batch. Here every Linear layer keeps int8 weights with one
scale per output channel, and quantizes its input with one scale per row (token): integer
products are exact, so each token's result depends on that token alone.

bfloat16: every Linear layer keeps pre-packed bfloat16 weights and multiplies bfloat16 inputs,
returning float32; everything else (norms, attention, softmax) stays float32. On CPUs with
AVX512-BF16 or AMX the matrix products run about twice as fast as float32, and the weights
take half the cache; elsewhere oneDNN cannot pack them, and `lanmt_cli.runtime` refuses
bfloat16 there. On an AVX2 CPU the int8 layers are many times slower than float32: there
ONNX Runtime's int8 (`lanmt_cli.onnx_nat`) is the one to use.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lanmt_cli.layers import fuse_attention


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


# Rows the packed layout is chosen for; any number of rows works.
PACK_ROWS = 64


def _packing() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """A Linear layer in `dtype` (float32 or bfloat16) whose weight oneDNN packs once.

    Float in, float out; without oneDNN it falls back to F.linear on the plain weight.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float32):
        super().__init__()
        w = linear.weight.detach().to(dtype)  # (out, in)
        self.packed = _packing()
        if self.packed:
            w = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS)
        self.register_buffer("weight", w)
        bias = linear.bias.detach().to(dtype) if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.dtype = dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(self.dtype)
        if self.packed:
            y = torch.ops.mkldnn._linear_pointwise(h, self.weight, self.bias, "none", [], "")
        else:
            y = F.linear(h, self.weight, self.bias)
        return y.to(x.dtype)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def dtype_name(model: nn.Module) -> str:
    """The dtype of a model's parameters: float32, float16, bfloat16."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


LAYERS = {
    "float32": PackedLinear,
    "int8": Int8Linear,
    "bfloat16": lambda linear: PackedLinear(linear, torch.bfloat16),
}


def cpu_inference_copy(model: nn.Module, kind: str = "float32") -> nn.Module:
    """A copy of `model` on the CPU, in eval mode, with the attention projections fused
    (`Attention.fuse`) and every nn.Linear made a `kind` layer: float32 (packed), int8 or
    bfloat16 (where the CPU multiplies it: `lanmt_cli.runtime` checks)."""
    layer = LAYERS[kind]
    copied = fuse_attention(copy.deepcopy(model).cpu().eval())
    for module in list(copied.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, layer(child))
    return copied
