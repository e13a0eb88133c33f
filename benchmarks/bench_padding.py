"""Padding speed: lanmt_cli.padding.pad_tokens against the per-row loop it replaced.

    python benchmarks/bench_padding.py [--batch 64] [--length 30] [--repeats 2000]

Prints microseconds per call for decoding-sized batches (token lists of lengths 1 to
--length). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from lanmt_cli.config import PAD
from lanmt_cli.padding import pad_tokens


def per_row(seqs: list[list[int]]) -> torch.Tensor:
    """The earlier way (decoders and translator): one small tensor per row."""
    out = torch.full((len(seqs), max(1, max(len(s) for s in seqs))), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def timed(fn, seqs, repeats: int) -> float:
    fn(seqs)  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn(seqs)
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    for batch in (1, 8, args.batch):
        seqs = [
            [rng.randrange(4, 8000) for _ in range(rng.randint(1, args.length))]
            for _ in range(batch)
        ]
        assert torch.equal(per_row(seqs), pad_tokens(seqs))
        old, new = timed(per_row, seqs, args.repeats), timed(pad_tokens, seqs, args.repeats)
        print(f"batch {batch:4d}: per-row loop {old:8.1f} us   pad_tokens {new:8.1f} us")


if __name__ == "__main__":
    main()
