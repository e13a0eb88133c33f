"""Training throughput (target tokens per second): in-process versus Ray CPU workers.

    python benchmarks/bench_train_throughput.py [--data DIR] [--updates 12] [--workers 2]

Trains the teacher stage (the default model size unless --hidden/--layers are given)
on Multi30k en-de (prepared into a temporary folder unless --data names a prepared
directory) three ways on the same machine:

- in-process, torch using every core (--threads = number of cores);
- in-process, one thread;
- Ray Train, `--workers` CPU workers (gloo), one thread each.

Throughput counts the target tokens of all workers between the first logged update
(warm-up excluded) and the last, from the run's own JSONL log. Validation is off.
Prints one table and, with --json, the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from multi30k import MULTI30K


def prepare_multi30k(dest: Path) -> Path:
    from lanmt_cli.data import prepare_corpus

    prepare_corpus(
        dest,
        (MULTI30K / "train.en.gz", MULTI30K / "train.de.gz"),
        valid=(MULTI30K / "val.en.gz", MULTI30K / "val.de.gz"),
        vocab_size=8000,
    )
    return dest


def throughput(log: Path, warmup: int) -> tuple[float, int]:
    """(target tokens per second, updates measured) from the train records of a log."""
    train = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "train"]
    first, last = train[warmup - 1], train[-1]
    return (last["tokens"] - first["tokens"]) / (last["time"] - first["time"]), last[
        "step"
    ] - first["step"]


def run(name: str, data: Path, out: Path, options: dict, launch, warmup: int) -> dict:
    from lanmt_cli.trainers.loop import LOG_FILE
    from lanmt_cli.trainers.stages import train_stage

    start = time.monotonic()
    train_stage(out / name, "teacher", data, options, launch, force=True)
    wall = time.monotonic() - start
    tok_s, updates = throughput(out / name / "teacher" / LOG_FILE, warmup)
    return {
        "run": name,
        "tokens_per_s": round(tok_s, 1),
        "updates": updates,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, help="prepared data directory [Multi30k en-de]")
    ap.add_argument("--updates", type=int, default=12, help="updates per run")
    ap.add_argument("--warmup", type=int, default=2, help="updates not measured")
    ap.add_argument("--workers", type=int, default=2, help="Ray CPU workers")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster

    from lanmt_cli.trainers.stages import Launch

    cores = len(os.sched_getaffinity(0))
    model = {k: v for k, v in {"hidden": args.hidden, "layers": args.layers}.items() if v}
    base = {
        "model": model,
        "max_tokens": args.max_tokens,
        "max_steps": args.updates + args.warmup,
        "log_every": 1,
        "bleu": False,
        "valid_every": 10**9,
        "warmup": 100,
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        data = args.data.resolve() if args.data else prepare_multi30k(tmp / "data")
        runs = [
            ("in-process", {"threads": cores}, Launch(gpus=0, show=False)),
            ("in-process-1-thread", {"threads": 1}, Launch(gpus=0, show=False)),
            (
                f"ray-{args.workers}-workers",
                {"threads": 1},
                Launch(workers=args.workers, show=False),
            ),
        ]
        results = []
        for name, extra, launch in runs:
            results.append(run(name, data, tmp, {**base, **extra}, launch, args.warmup))
    ref = results[0]["tokens_per_s"]
    for r in results:
        r["vs_in_process"] = round(r["tokens_per_s"] / ref, 2)
    if args.json:
        print(
            json.dumps({"cores": cores, "max_tokens": args.max_tokens, "runs": results}, indent=2)
        )
        return
    size = model or "default size"
    print(f"{cores} cores, {args.max_tokens} tokens per batch per worker, teacher {size}")
    print(f"{'run':<22}{'tok/s':>10}{'ratio':>8}{'updates':>9}{'wall s':>9}")
    for r in results:
        print(
            f"{r['run']:<22}{r['tokens_per_s']:>10,.0f}{r['vs_in_process']:>8.2f}"
            f"{r['updates']:>9}{r['wall_s']:>9.1f}"
        )


if __name__ == "__main__":
    main()
