"""Post-processing of decoder output, as in the reference implementation.

Drop special tokens (PAD, UNK, BOS, EOS), collapse runs of the same token (the typical
non-autoregressive repetition, "der der hund"), then detokenize with SentencePiece.
"""

from __future__ import annotations

from collections.abc import Sequence

from lanmt_cli.config import NUM_SPECIAL


def clean_ids(ids: Sequence[int], collapse_repeats: bool = True) -> list[int]:
    """Token ids without specials and, if `collapse_repeats`, without consecutive repeats."""
    out: list[int] = []
    for i in ids:
        if i < NUM_SPECIAL:
            continue
        if collapse_repeats and out and out[-1] == i:
            continue
        out.append(i)
    return out


def detokenize(
    tokenizer, seqs: Sequence[Sequence[int]], collapse_repeats: bool = True
) -> list[str]:
    """Text of each target id sequence after cleaning."""
    return tokenizer.decode_tgt([clean_ids(s, collapse_repeats) for s in seqs])
