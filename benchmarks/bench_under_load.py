"""How much lanmt's decoders slow down when another process keeps one core busy.

    python benchmarks/bench_under_load.py [--sentences 300] [--latency 100] [--threads N]

Translates test_2016_flickr (en-de) with each decoder, with lanmt's default thread settings
unless --threads is given: first on a quiet machine, then while a busy-loop process (pure
Python `while True`, pinned to the first CPU this process may use) runs beside it, then
quiet again. Prints, per decoder, batch-1 latency (mean ms over the first --latency
sentences) and batched seconds (4,096-token batches) quiet and loaded, and the slowdown
loaded / quiet (quiet = the mean of the runs before and after). Issue 12's target: at most
2x with default settings. Run it on an otherwise idle machine: other load distorts the
"quiet" figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from multi30k import read, test_set_options

DECODERS = ["one-shot", "refine1", "beam", "beam1"]
BUSY = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def measure(translators: dict, ids: list[list[int]], src: list[str], latency: int) -> dict:
    """{decoder: (mean batch-1 ms, batched seconds)}; decoders take turns per sentence."""
    alone: dict[str, float] = {name: 0.0 for name in translators}
    names = list(translators)
    for k, s in enumerate(ids[:latency]):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            start = time.perf_counter()
            translators[name].decode_batch([s])
            alone[name] += time.perf_counter() - start
    out = {}
    for name, tr in translators.items():
        start = time.perf_counter()
        tr.translate(src)
        out[name] = (
            1000 * alone[name] / max(1, min(latency, len(ids))),
            time.perf_counter() - start,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    test_set_options(parser, sentences=300, latency=100, threads=None,
                     threads_help="default: lanmt's own")  # fmt: skip
    parser.add_argument("-d", "--decoder", action="append", help=f"default: {DECODERS}")
    args = parser.parse_args()

    from lanmt_cli.bundle import load_bundle
    from lanmt_cli.translator import Translator

    src = read(args.data / "test_2016_flickr.en.gz", args.sentences)
    bundle = load_bundle(args.model)
    names = args.decoder or DECODERS
    translators = {n: Translator(bundle, n, threads=args.threads) for n in names}
    ids = translators[names[0]].encode(src)
    for tr in translators.values():  # warm-up
        tr.translate(src[:20])

    quiet1 = measure(translators, ids, src, args.latency)
    cpu = sorted(os.sched_getaffinity(0))[0]
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(cpu)])
    try:
        time.sleep(0.5)
        loaded = measure(translators, ids, src, args.latency)
    finally:
        busy.kill()
        busy.wait()
    quiet2 = measure(translators, ids, src, args.latency)

    import torch

    print(f"{len(src)} sentences; torch threads {torch.get_num_threads()}; "
          f"busy loop pinned to CPU {cpu} of {len(os.sched_getaffinity(0))}")  # fmt: skip
    print()
    print(
        "| decoder | batch 1 ms quiet | loaded | slowdown | batched s quiet | loaded | slowdown |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        q_ms = (quiet1[name][0] + quiet2[name][0]) / 2
        q_s = (quiet1[name][1] + quiet2[name][1]) / 2
        l_ms, l_s = loaded[name]
        print(f"| {name} | {q_ms:.1f} | {l_ms:.1f} | {l_ms / q_ms:.2f}x "
              f"| {q_s:.2f} | {l_s:.2f} | {l_s / q_s:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
