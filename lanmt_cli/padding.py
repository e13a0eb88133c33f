"""Padding: ragged token sequences -> one right-padded LongTensor, the one way everywhere.

`pad_rows` pads rows of a flat id array (the binarized corpus' layout: ids and offsets);
`pad_tokens` pads lists of ids (decoders, the translator, tests) through it. Both fill with
PAD in one vectorized numpy step: no per-row tensor is built, which matters on the decoding
path.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lanmt_cli.config import PAD

if TYPE_CHECKING:
    import torch


def pad_rows(
    ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, *, min_width: int = 0
) -> torch.Tensor:
    """Rows `rows` of the ragged array (`ids`, `offsets`) as a (B, L) LongTensor on the CPU.

    Row r is `ids[offsets[r]:offsets[r + 1]]`; L is the longest chosen row (at least
    `min_width`), the rest filled with PAD.
    """
    import torch

    starts = offsets[rows]  # (B,)
    lengths = offsets[rows + 1] - starts  # (B,)
    cols = np.arange(max(int(lengths.max(initial=0)), min_width))  # (L,)
    mask = cols[None, :] < lengths[:, None]  # (B, L)
    out = np.full(mask.shape, PAD, dtype=np.int64)  # (B, L)
    out[mask] = ids[(starts[:, None] + cols[None, :])[mask]]
    return torch.from_numpy(out)


def pad_tokens(seqs: Sequence[Sequence[int]], device=None) -> torch.Tensor:
    """Token lists -> (B, L) LongTensor padded with PAD (L >= 1), on `device` (default CPU)."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))  # (B,)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)  # (B + 1,)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=offsets[-1])
    out = pad_rows(flat, offsets, np.arange(len(seqs)), min_width=1)
    return out if device is None else out.to(device)
