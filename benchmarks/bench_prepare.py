"""Time `lanmt prepare` on a WMT-sized corpus (4.5 million pairs) built from Multi30k.

    python benchmarks/bench_prepare.py [--dir /tmp] [--pairs 4500000]

Writes `bench-prepare/train.en`, `train.de` (plain text) under `--dir` by repeating the
Multi30k en-de training pairs with variations (shuffled words, numbers, case,
concatenations, a few lopsided and empty pairs), runs `lanmt prepare` on them as a
subprocess and prints one line: wall time, peak resident memory, pairs kept.
Target on a 2-core machine: at most 15 minutes and 2 GB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from multi30k import MULTI30K

LIMIT_S = 15 * 60
LIMIT_BYTES = 2 * 10**9


def read(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def vary(src: str, tgt: str, rng: random.Random, pool: list[tuple[str, str]]) -> tuple[str, str]:
    """One variation of a pair; both sides change alike so the pair stays plausible."""
    r = rng.random()
    if r < 0.25:
        return src, tgt
    if r < 0.40:
        return src.lower(), tgt.lower()
    if r < 0.50:
        return src.upper(), tgt.upper()
    if r < 0.70:
        s, t = src.split(), tgt.split()
        rng.shuffle(s)
        rng.shuffle(t)
        return " ".join(s), " ".join(t)
    if r < 0.85:
        n = str(rng.randrange(10 ** rng.randint(1, 7)))
        return f"{n} {src} ({rng.randint(1, 99)})", f"{n} {tgt} ({rng.randint(1, 99)})"
    if r < 0.97:  # several sentences in one line: some exceed --max-len
        extra = [pool[rng.randrange(len(pool))] for _ in range(rng.randint(1, 6))]
        return " ".join([src, *(s for s, _ in extra)]), " ".join([tgt, *(t for _, t in extra)])
    if r < 0.995:  # a misaligned pair: far longer target
        extra = [pool[rng.randrange(len(pool))][1] for _ in range(3)]
        return src, " ".join([tgt, *extra])
    return src, ""


def generate(directory: Path, pairs: int, multi30k: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `pairs` varied Multi30k pairs as plain text; reuse files of the right size."""
    directory.mkdir(parents=True, exist_ok=True)
    src_path, tgt_path = directory / "train.en", directory / "train.de"
    stamp = directory / "pairs.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"pairs": pairs, "seed": seed}:
        return src_path, tgt_path
    stamp.unlink(missing_ok=True)
    pool = list(zip(read(multi30k / "train.en.gz"), read(multi30k / "train.de.gz"), strict=True))
    rng = random.Random(seed)
    start = time.monotonic()
    with open(src_path, "w", encoding="utf-8") as fs, open(tgt_path, "w", encoding="utf-8") as ft:
        done = 0
        while done < pairs:
            chunk = [
                vary(*pool[rng.randrange(len(pool))], rng, pool)
                for _ in range(min(100_000, pairs - done))
            ]
            fs.write("".join(s + "\n" for s, _ in chunk))
            ft.write("".join(t + "\n" for _, t in chunk))
            done += len(chunk)
    stamp.write_text(json.dumps({"pairs": pairs, "seed": seed}))
    size = (src_path.stat().st_size + tgt_path.stat().st_size) / 2**20
    print(f"generated {pairs:,} pairs ({size:,.0f} MiB) in {time.monotonic() - start:.0f} s")
    return src_path, tgt_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to write the data")
    parser.add_argument("--pairs", type=int, default=4_500_000)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--multi30k", type=Path, default=MULTI30K, help="Multi30k text directory")
    args = parser.parse_args()

    work = args.dir / "bench-prepare"
    src, tgt = generate(work, args.pairs, args.multi30k)
    out = work / "prepared"
    cmd = [sys.executable, "-m", "lanmt_cli.app", "prepare", "--train-src", str(src)]
    cmd += ["--train-tgt", str(tgt), "--out", str(out), "--force"]
    cmd += ["--vocab-size", str(args.vocab_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    if result.returncode != 0:
        sys.exit(f"lanmt prepare failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    print(result.stdout, end="")
    train = json.loads((out / "meta.json").read_text())["splits"]["train"]
    ok = wall <= LIMIT_S and peak <= LIMIT_BYTES
    print(
        f"bench_prepare: {train['pairs']:,} pairs, kept {train['kept']:,}, "
        f"wall {wall:.1f} s, peak RSS {peak / 2**30:.2f} GiB, "
        f"{'within' if ok else 'OVER'} the 15 min / 2 GB target"
    )


if __name__ == "__main__":
    main()
