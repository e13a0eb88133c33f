"""Start a LaNMT model from its teacher's weights (a shortcut for small compute budgets).

The two models share their building blocks, so the teacher's embeddings, encoder,
decoder layers and output projection fit LaNMT's embeddings, prior encoder,
non-autoregressive decoder and output projection one for one. The latent parts
(posterior, latent projection, length predictor) always start fresh.

Parts: `encoder` copies embeddings, encoder and output projection; `all` also the decoder
layers. A decoder copied from the teacher already translates without z, so it learns to
ignore the latent: `encoder` is the recipe's choice.
"""

from __future__ import annotations

import torch
from torch import nn

from lanmt_cli.errors import LanmtError

# teacher parameter prefix -> LaNMT parameter prefix
TEACHER_TO_LANMT = {
    "src_embed.": "x_embed.",
    "tgt_embed.": "y_embed.",
    "encoder.": "prior_encoder.",
    "decoder.": "decoder.",
    "project.weight": "project.weight",
}
TEACHER_INIT_PARTS = ("none", "encoder", "all")


def lanmt_name(teacher_name: str, parts: str = "all") -> str | None:
    """The LaNMT parameter that a teacher parameter starts, or None."""
    for src, dst in TEACHER_TO_LANMT.items():
        if src == "decoder." and parts != "all":
            continue
        if teacher_name.startswith(src):
            return dst + teacher_name[len(src) :]
    return None


@torch.no_grad()
def init_from_teacher(lanmt: nn.Module, teacher: nn.Module, parts: str = "all") -> list[str]:
    """Copy the teacher weights of `parts` into `lanmt`; return the LaNMT names copied.

    Raises LanmtError when a mapped weight's shape differs (models of different sizes).
    """
    target = dict(lanmt.named_parameters())
    copied = []
    for name, weight in teacher.state_dict().items():
        mine = lanmt_name(name, parts)
        if mine not in target:
            continue
        if target[mine].shape != weight.shape:
            raise LanmtError(
                f"cannot start LaNMT from the teacher: {name} is {tuple(weight.shape)}, "
                f"{mine} is {tuple(target[mine].shape)}; give both models the same sizes"
            )
        target[mine].copy_(weight)
        copied.append(mine)
    if "project.bias" in target and "project.weight" in copied:
        target["project.bias"].zero_()  # the teacher's projection has no bias
    return copied
