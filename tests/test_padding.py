"""The one padding function: what decoders, the translator, the data loader and tests use."""

import numpy as np
import torch

from lanmt_cli.config import PAD
from lanmt_cli.padding import pad_rows, pad_tokens


def test_pad_tokens_right_pads_with_pad():
    got = pad_tokens([[5, 6, 7], [8], [9, 10]])
    assert got.dtype == torch.long
    assert got.tolist() == [[5, 6, 7], [8, PAD, PAD], [9, 10, PAD]]


def test_pad_tokens_is_at_least_one_wide_and_moves_to_the_device():
    got = pad_tokens([[], []], "cpu")
    assert got.shape == (2, 1) and got.tolist() == [[PAD], [PAD]]
    assert pad_tokens([np.array([3, 4]), (5,)], torch.device("cpu")).tolist() == [[3, 4], [5, PAD]]


def test_pad_rows_picks_rows_of_a_ragged_array():
    rows = [[1, 2], [3], [4, 5, 6], []]
    ids = np.array([t for r in rows for t in r], dtype=np.int64)
    offsets = np.cumsum([0] + [len(r) for r in rows])
    assert pad_rows(ids, offsets, np.array([2, 1])).tolist() == [[4, 5, 6], [3, PAD, PAD]]
    assert pad_rows(ids, offsets, np.array([3])).shape == (1, 0)  # the data loader's width
    assert pad_rows(ids, offsets, np.array([3]), min_width=1).tolist() == [[PAD]]
