"""`lanmt serve --replicas N`: the same app on N Ray Serve replicas.

Each replica is an actor that loads the model once and runs the very app of a single
server (`api.create_app`), batcher included; Ray Serve's HTTP proxy spreads the requests
over the replicas. The driver waits for SIGTERM or Ctrl-C, then deletes its Serve app (each
replica finishes its requests in flight; other apps of a shared cluster stay) and exits 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ray import serve

from lanmt_cli.errors import LanmtError
from lanmt_cli.ray_cluster import ray_cluster
from lanmt_cli.serving.api import ServerConfig, create_app
from lanmt_cli.serving.engine import Engine, EngineConfig

APP_NAME = "lanmt"
GRACEFUL_SECONDS = 30.0  # how long a stopping replica may take to answer what it holds


@serve.ingress()
class Replica:
    """One replica: the engine is built when Ray Serve asks for the app."""

    def __init__(self, engine_config: EngineConfig, server_config: ServerConfig):
        self.engine_config = engine_config
        self.server_config = server_config

    def __serve_build_asgi_app__(self):
        engine = Engine(self.engine_config)
        engine.warm_up()
        return create_app(engine, self.server_config)


def _checked(config: EngineConfig) -> EngineConfig:
    """The model as an absolute folder (replicas may run elsewhere), and the default
    decoder checked, before any replica starts."""
    from lanmt_cli import registry
    from lanmt_cli.bundle import read_config
    from lanmt_cli.hub import resolve_model

    path = resolve_model(config.model).resolve()
    read_config(path)
    teacher = None if config.teacher is None else str(resolve_model(config.teacher).resolve())
    if config.decoder is not None:
        registry.resolve(config.decoder, config.options)
    return replace(config, model=str(path), teacher=teacher)


def _cpus_per_replica(config: EngineConfig, server: ServerConfig) -> int:
    """Each replica's CPUs: its decoding threads' CPU threads (`--threads`, default 1)."""
    return (config.threads or 1) * server.workers


def serve_replicas(
    engine_config: EngineConfig,
    server_config: ServerConfig,
    host: str,
    port: int,
    replicas: int,
    address: str | None,
    say: Callable[[str], None],
) -> None:
    """Deploy `replicas` replicas behind Ray Serve's proxy at host:port; serve until a
    signal; then remove the app (a private cluster goes with it)."""
    import logging

    import ray

    logging.getLogger("ray.serve").setLevel(logging.WARNING)

    engine_config = _checked(engine_config)
    cpus = _cpus_per_replica(engine_config, server_config)
    with ray_cluster(address):
        have = ray.cluster_resources().get("CPU", 0)
        if have < replicas * cpus:
            raise LanmtError(
                f"--replicas {replicas} x {cpus} CPU(s) need {replicas * cpus} CPUs; "
                f"the Ray cluster has {int(have)}"
            )
        deployment = serve.deployment(
            Replica,
            name="translator",
            num_replicas=replicas,
            ray_actor_options={"num_cpus": cpus},
            # The replica's own queue bounds the work; Serve's limit must not cut batches.
            max_ongoing_requests=server_config.max_queue + 64,
            graceful_shutdown_timeout_s=GRACEFUL_SECONDS,
        )
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(
                deployment.bind(engine_config, server_config), name=APP_NAME, route_prefix="/"
            )
        except RuntimeError as err:  # a replica failed to start: its first line says why
            raise LanmtError(f"the replicas did not start: {_first_line(err)}") from None
        name = Path(engine_config.model).name
        say(
            f"serving {name} on {replicas} Ray Serve replicas at http://{host}:{port}; Ctrl-C stops"
        )
        try:
            _wait_for_signal()
        finally:
            serve.delete(APP_NAME)  # the replicas answer what they hold; other apps stay
    say("stopped")


def _wait_for_signal() -> None:
    stop = threading.Event()
    handlers = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line and not line.startswith("File ")]
    return (errors[-1] if errors else lines[0] if lines else type(err).__name__)[:500]
