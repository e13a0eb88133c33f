"""What the Multi30k benchmark scripts share: where the data and the shipped model are, how
test_2016_flickr is read, how a call is timed, and the command-line options they all take."""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Multi30k's text files: $LANMT_MULTI30K, else shared/data/multi30k beside the checkout.
MULTI30K = Path(os.environ.get("LANMT_MULTI30K") or ROOT.parent / "shared" / "data" / "multi30k")
DEFAULT_MODEL = ROOT / "lanmt_cli" / "models" / "default"


def read(path: Path, n: int) -> list[str]:
    """The first `n` lines of a (gzipped) text file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f][:n]


def timed(fn) -> float:
    """Seconds `fn()` takes, with Python's garbage collector paused (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def test_set_options(
    parser: argparse.ArgumentParser,
    sentences: int,
    latency: int,
    threads: int | None = 2,
    threads_help: str | None = None,
) -> None:
    """--model, --data, --threads, --sentences and --latency, with these defaults."""
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", type=Path, default=MULTI30K)
    parser.add_argument("--threads", type=int, default=threads, help=threads_help)
    parser.add_argument("--sentences", type=int, default=sentences)
    parser.add_argument("--latency", type=int, default=latency, help="sentences timed alone")
