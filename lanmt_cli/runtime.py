"""Runtimes of the non-autoregressive model: built once per loaded model, searched by decoders.

A runtime offers the LaNMT step methods the decoders are made of (`encode_source`, `prior`,
`posterior`, `length_logits`, `predict_length`, `best_tokens`, and the whole passes
`decode_z`, `decode_prior`, `decode_posterior`; see `lanmt_cli.model`). Which
engine runs them and in what precision is decided here, once, not by the decoders:

- `onnx`: ONNX Runtime (`lanmt_cli.onnx_nat`), float32 or int8; the CPU default.
- `torch`: PyTorch. On a CPU an inference copy with fused attention projections and Linear
  layers in float32 (pre-packed), int8 or bfloat16 (`lanmt_cli.quantize`); on a GPU the model
  itself.

One precision vocabulary for both engines and the teacher's CTranslate2, in CTranslate2's
names: `compute_type` is auto, default, float32, int8 (int8_float32 is the same) or bfloat16.
`auto` is the fastest type that keeps the model's BLEU on this CPU (`auto_compute_type`);
`default` is the model's own type (float32 on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lanmt_cli.errors import LanmtError

COMPUTE_TYPES = ("auto", "default", "float32", "int8", "int8_float32", "bfloat16")
RUNTIMES = ("auto", "onnx", "torch")
ALIASES = {"int8_float32": "int8"}

# What `auto` runs on a CPU: ONNX Runtime in int8 where the CPU has integer vector kernels
# (AVX2 or AVX-512), else in float32. int8 keeps the shipped model's BLEU (one-shot 30.02
# against 30.03 on test_2016_flickr, refine1 32.21 against 32.23, each sentence the same in
# any batch) and was faster than float32 on an AVX2 CPU without VNNI: 0.65-0.76x the time at
# batch 1 and 1.4-1.7x the sentences/s batched for one-shot, 0.67-0.75x and 1.1-1.2x for refine1
# (benchmarks/README.md). float32 gives PyTorch's tokens exactly; ask for it by name.
AUTO_INT8_CAPABILITIES = ("AVX2", "AVX512")


def auto_compute_type() -> str:
    """The NAT model's compute type for `auto` on this CPU (see AUTO_INT8_CAPABILITIES)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return "int8" if capability.startswith(AUTO_INT8_CAPABILITIES) else "float32"


@dataclass
class NATRuntime:
    """A built runtime: the object with the step methods, its engine and its precision."""

    model: Any  # LaNMT-like: encode_source, prior, posterior, length_logits, best_tokens, ...
    engine: str  # onnx or torch
    compute_type: str  # float32, int8, bfloat16, or a GPU model's own dtype

    @property
    def label(self) -> str:
        return f"{self.engine} {self.compute_type}"


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(model, runtime: str = "auto", compute_type: str = "auto") -> tuple[str, str]:
    """(engine, compute type) for `model` on its device; a clear error if it cannot run."""
    from lanmt_cli.quantize import dtype_name, native_bf16

    if runtime not in RUNTIMES:
        raise LanmtError(f"runtime takes one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if compute_type not in COMPUTE_TYPES:
        raise LanmtError(
            f"compute_type of the NAT model takes one of {', '.join(COMPUTE_TYPES)}, "
            f"got {compute_type!r}"
        )
    kind = ALIASES.get(compute_type, compute_type)
    if next(model.parameters()).device.type != "cpu":
        if runtime == "onnx" or kind not in ("auto", "default"):
            raise LanmtError(
                f"runtime={runtime}, compute_type={compute_type}: on a GPU the NAT model runs in "
                "PyTorch in its own type; use runtime=auto and compute_type=auto"
            )
        return "torch", dtype_name(model)
    if kind == "default":
        kind = "float32"
    if kind == "auto":
        if runtime in ("auto", "onnx") and onnx_available():
            return "onnx", auto_compute_type()
        return "torch", "float32"
    if kind == "bfloat16":
        if runtime == "onnx":
            raise LanmtError("runtime=onnx computes in float32 or int8, not bfloat16")
        if not native_bf16():
            raise LanmtError(
                "compute_type=bfloat16 needs a CPU that multiplies bfloat16 in hardware "
                "(AVX512-BF16 or AMX), and this one does not: use compute_type=auto, float32 "
                "or int8"
            )
        return "torch", kind
    if runtime == "onnx" and not onnx_available():
        raise LanmtError("runtime=onnx needs ONNX Runtime: pip install onnxruntime onnx")
    engine = "torch" if runtime == "torch" or not onnx_available() else "onnx"
    return engine, kind


def build(
    model, runtime: str = "auto", compute_type: str = "auto", threads: int | None = None
) -> NATRuntime:
    """The runtime of a LaNMT model (a fresh one: a model still training gets new weights)."""
    import torch

    engine, kind = resolve(model, runtime, compute_type)
    if next(model.parameters()).device.type != "cpu":
        return NATRuntime(model, engine, kind)
    if engine == "onnx":
        from lanmt_cli.onnx_nat import OnnxLaNMT

        return NATRuntime(OnnxLaNMT(model, kind, threads or torch.get_num_threads()), engine, kind)
    from lanmt_cli.quantize import cpu_inference_copy

    return NATRuntime(cpu_inference_copy(model, kind), engine, kind)
