"""Served throughput and latency of `lanmt serve` under concurrent clients (issue 22).

    python benchmarks/bench_serve.py [--clients 1 8 64] [--requests 30] [--threads 2]
        [-d one-shot -d refine1 -d beam1:compute_type=int8] [--max-wait-ms 0]

For each decoder, first in this process and with the Translator the server builds: the
batch-1 latency (`translate([sentence])`, median over --latency sentences) and the offline
batched sentences/s over --sentences sentences (`translate(all)`, as `lanmt bench` times
it; median of --repeats runs). Then it starts `lanmt serve` with that decoder on 127.0.0.1
and, for each number of clients C, runs C concurrent clients, each sending --requests
single sentences of test_2016_flickr one after another (LibreTranslate's POST /translate,
JSON, one keep-alive connection per client). Reports sentences/s (all sentences over the
wall time), p50 and p99 latency per request, served over offline sentences/s, and the
1-client overhead over in-process batch-1. Server and clients share the machine; the
clients are one asyncio process (this one), so run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from multi30k import ROOT, read, test_set_options

DECODERS = ["one-shot", "refine1", "beam1:compute_type=int8"]


# --- a small keep-alive HTTP/1.1 client --------------------------------------------------


class Client:
    """One connection; `post` sends a JSON body and returns (status, JSON answer)."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(port: int, sentences: list[str], clients: int, requests: int) -> dict:
    """`clients` clients, each translating `requests` sentences one at a time."""
    latencies: list[float] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        client = Client(port)
        try:
            for k in range(requests):
                text = sentences[(i * requests + k) % len(sentences)]
                start = time.perf_counter()
                status, _ = await client.post(
                    "/translate", {"q": text, "source": "en", "target": "de"}
                )
                latencies.append(time.perf_counter() - start)
                failures += status != 200
        finally:
            client.close()

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - start
    ms = sorted(1000 * s for s in latencies)
    return {
        "clients": clients,
        "sentences": len(ms),
        "failures": failures,
        "seconds": wall,
        "sentences_per_s": len(ms) / wall,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
    }


# --- in-process figures ------------------------------------------------------------------


def in_process(args, spec: str, sentences: list[str]) -> dict:
    """Batch-1 latency and offline batched sentences/s of the decoder, in this process."""
    from lanmt_cli.bench import runtime_options
    from lanmt_cli.registry import parse_spec
    from lanmt_cli.translator import Translator

    name, options = parse_spec(spec)
    tr = Translator(args.model, name, options, threads=args.threads,
                    batch_tokens=args.batch_tokens)  # fmt: skip
    tr.translate(sentences[:20])  # warm-up, batched and alone
    for s in sentences[:10]:
        tr.translate([s])
    alone = []
    for s in sentences[: args.latency]:
        start = time.perf_counter()
        tr.translate([s])
        alone.append(1000 * (time.perf_counter() - start))
    runs = []
    for _ in range(args.repeats):
        gc.collect()
        start = time.perf_counter()
        tr.translate(sentences)
        runs.append(time.perf_counter() - start)
    runtime = runtime_options(tr)
    return {
        "runtime": runtime["runtime"],  # engine and precision, e.g. "onnx float32"
        "batch1_p50_ms": statistics.median(alone),
        "offline_sentences_per_s": len(sentences) / statistics.median(runs),
    }


# --- the server --------------------------------------------------------------------------


def start_server(args, spec: str, log: Path) -> tuple[subprocess.Popen, int]:
    from lanmt_cli.registry import parse_spec

    name, options = parse_spec(spec)
    cmd = [sys.executable, "-m", "lanmt_cli.app", "serve", "--model", str(args.model),
           "--decoder", name, "--port", "0", "--threads", str(args.threads),
           "--max-wait-ms", str(args.max_wait_ms), "--batch-tokens", str(args.batch_tokens),
           "--workers", str(args.workers),
           "--max-queue", str(max(1024, 2 * max(args.clients)))]  # fmt: skip
    for key, value in options.items():
        cmd += ["--opt", f"{key}={value}"]
    err = open(log, "w")  # noqa: SIM115 (the server's stderr while it runs)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r" at http://127\.0\.0\.1:(\d+);", log.read_text())
        if found:
            return proc, int(found[1])
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not start:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    if proc.wait(120) != 0:
        print(f"warning: the server exited with {proc.returncode}", file=sys.stderr)


# --- the report --------------------------------------------------------------------------


def table(results: list[dict]) -> str:
    head = ("| decoder | runtime | clients | sentences/s | p50 ms | p99 ms | served / offline "
            "batched |\n|:---|:---|---:|---:|---:|---:|---:|\n")  # fmt: skip
    rows = []
    for r in results:
        for run in r["runs"]:
            ratio = run["sentences_per_s"] / r["offline_sentences_per_s"]
            rows.append(
                f"| {r['decoder']} | {r['runtime']} | {run['clients']} | "
                f"{run['sentences_per_s']:.1f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | "
                f"{ratio:.2f}x |"
            )
    head2 = ("\n| decoder | offline batched sentences/s | in-process batch-1 p50 ms | "
             "served 1 client p50 ms | overhead ms |\n|:---|---:|---:|---:|---:|\n")  # fmt: skip
    rows2 = []
    for r in results:
        one = next((run for run in r["runs"] if run["clients"] == 1), None)
        served = f"{one['p50_ms']:.1f}" if one else "-"
        over = f"{one['p50_ms'] - r['batch1_p50_ms']:.1f}" if one else "-"
        rows2.append(
            f"| {r['decoder']} | {r['offline_sentences_per_s']:.1f} | "
            f"{r['batch1_p50_ms']:.1f} | {served} | {over} |"
        )
    return head + "\n".join(rows) + "\n" + head2 + "\n".join(rows2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    test_set_options(parser, sentences=1000, latency=100)
    parser.add_argument("-d", "--decoder", action="append", help=f"default: {DECODERS}")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, default=30, help="sentences per client")
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=1, help="lanmt serve --workers")
    parser.add_argument("--repeats", type=int, default=3, help="offline batched runs")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()

    sentences = read(args.data / "test_2016_flickr.en.gz", args.sentences)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.decoder or DECODERS:
            print(f"{spec}: in-process figures", file=sys.stderr)
            figures = in_process(args, spec, sentences)
            gc.collect()
            proc, port = start_server(args, spec, Path(tmp) / "serve.log")
            try:
                asyncio.run(load(port, sentences, 8, 5))  # warm-up
                runs = []
                for clients in args.clients:
                    print(f"{spec}: {clients} clients x {args.requests} sentences",
                          file=sys.stderr)  # fmt: skip
                    runs.append(asyncio.run(load(port, sentences, clients, args.requests)))
            finally:
                stop_server(proc)
            results.append({"decoder": spec, **figures, "runs": runs})
    print(table(results), end="")
    if args.json:
        settings = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2))


if __name__ == "__main__":
    main()
