"""Joining a Ray cluster, or starting a private local one: for training on Ray workers and for
serving across replicas. Ray is imported only when a cluster is wanted."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from lanmt_cli.errors import LanmtError


@contextlib.contextmanager
def ray_cluster(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    """Join the cluster at `address`, or start a private local one for the block (quiet, no
    auth token); a Ray already initialised in this process is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    if not address:  # a private cluster: no token (and no warning about it)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        else:
            ray.init(address="local", num_cpus=num_cpus, **quiet)
    except ConnectionError as err:
        raise LanmtError(f"cannot join the Ray cluster at {address}: {err}") from None
    try:
        yield
    finally:
        ray.shutdown()
