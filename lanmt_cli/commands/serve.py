"""`lanmt serve`: a translation server with dynamic batching (see `lanmt_cli.serving`).

The model loads once; concurrent requests are queued and coalesced into batches that the
decoder translates in one pass. LibreTranslate's API (`POST /translate`, `GET /languages`)
and lanmt's own (`POST /v1/translate`, `GET /health`, `GET /metrics`).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from lanmt_cli.commands.options import (
    BatchTokensOption,
    Device,
    DeviceOption,
    ModelOption,
    SeedOption,
    TeacherOption,
    ThreadsOption,
)
from lanmt_cli.errors import LanmtError


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _per_worker(threads: int | None, workers: int) -> int | None:
    """CPU threads of each decoding thread: --threads (default: the CPUs this process may
    use) shared out among --workers."""
    from lanmt_cli.tokenizer import default_threads

    if workers == 1:
        return threads
    return max(1, (threads or default_threads()) // workers)


def serve(
    model: ModelOption = None,
    decoder: Annotated[
        str | None,
        typer.Option(
            "--decoder",
            "-d",
            metavar="NAME",
            help="The decoder of LibreTranslate requests, and of lanmt's own where they name "
            "none. Default: refine1 (beam for a Transformer model).",
        ),
    ] = None,
    opt: Annotated[
        list[str] | None,
        typer.Option(
            "--opt", metavar="KEY=VALUE", help="An option of --decoder, e.g. beam=1. Repeatable."
        ),
    ] = None,
    teacher: TeacherOption = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on (another than 127.0.0.1 opens it "
            "to the network: see --api-key).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 5000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LANMT_API_KEY",
            metavar="KEY",
            help="Answer translate requests only with this api_key field (as LibreTranslate "
            "does). Also read from $LANMT_API_KEY.",
        ),
    ] = None,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            "--max-wait-ms",
            min=0,
            max=1000,
            help="How long a request may wait for others to share its batch.",
        ),
    ] = 0.0,
    batch_tokens: BatchTokensOption = 4096,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Batches decoded at once, each on --threads / N CPU threads.",
        ),
    ] = 1,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue", min=1, help="Sentences waiting at most; beyond: 503 with Retry-After."
        ),
    ] = 1024,
    max_chars: Annotated[
        int, typer.Option("--max-chars", min=1, help="Characters per request; beyond: 413.")
    ] = 5000,
    max_sentences: Annotated[
        int,
        typer.Option("--max-sentences", min=1, help="Sentences (lines) per request; beyond: 400."),
    ] = 128,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            min=0,
            help="Run N replicas as a Ray Serve deployment (needs lanmt[serve-ray]); "
            "0: one process, no Ray.",
        ),
    ] = 0,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            metavar="RAY_ADDRESS",
            help="With --replicas: the Ray cluster to join (default: a private local one).",
        ),
    ] = None,
    device: DeviceOption = Device.auto,
    threads: ThreadsOption = None,
    seed: SeedOption = 0,
) -> None:
    """Serve translations over HTTP, batching concurrent requests.

    Example: lanmt serve --port 5000, then
    curl -d q='Two dogs play.' -d source=en -d target=de localhost:5000/translate
    """
    from lanmt_cli import serving

    if address and not replicas:
        raise LanmtError("--address names the Ray cluster of --replicas; give --replicas N too")
    if max_sentences > max_queue:
        raise LanmtError(
            f"--max-sentences {max_sentences} is more than --max-queue {max_queue}: such a "
            "request could never be queued"
        )
    what = "lanmt serve --replicas" if replicas else "lanmt serve"
    serving.require("serve-ray" if replicas else "serve", what)
    from lanmt_cli.serving.api import ServerConfig
    from lanmt_cli.serving.engine import EngineConfig
    from lanmt_cli.serving.server import listen

    sock = None if replicas else listen(host, port)  # a port in use fails before any loading
    from lanmt_cli.registry import parse_options

    engine_config = EngineConfig(
        model=model,
        decoder=decoder,
        options=parse_options(opt),
        teacher=teacher,
        device=device.value,
        threads=_per_worker(threads, workers),
        batch_tokens=batch_tokens,
        seed=seed,
    )
    server_config = ServerConfig(
        max_wait_ms=max_wait_ms,
        batch_tokens=batch_tokens,
        workers=workers,
        max_queue=max_queue,
        max_chars=max_chars,
        max_sentences=max_sentences,
        api_key=api_key or None,
    )
    if not _loopback(host) and not api_key:
        _say(
            f"warning: listening on {host} without --api-key: anyone who reaches this port "
            "can translate"
        )
    if replicas:
        from lanmt_cli.serving.replicas import serve_replicas

        serve_replicas(engine_config, server_config, host, port, replicas, address, _say)
        return
    _serve_here(engine_config, server_config, host, sock)


def _serve_here(engine_config, server_config, host: str, sock) -> None:
    from lanmt_cli.serving.engine import Engine
    from lanmt_cli.serving.server import serve as run

    try:
        engine = Engine(engine_config)
        engine.warm_up()
        where = sock.getsockname()
        url = f"http://{host if ':' not in host else f'[{host}]'}:{where[1]}"
        pair = f"{engine.source}-{engine.target}" if engine.source and engine.target else "?"
        _say(
            f"serving {engine.bundle.path} ({pair}, decoder {engine.default.name}) at {url}; "
            "Ctrl-C stops"
        )
        run(engine, server_config, sock)
    finally:
        sock.close()
    _say("stopped")


def register(app: typer.Typer, wrap) -> None:
    app.command("serve")(wrap(serve))
