"""`lanmt serve`: translation over HTTP with dynamic batching.

    engine    the one contact with the translation core: a model loaded once, a Translator
              per decoder and options
    batcher   concurrent requests coalesced into batches, decoded on one worker thread
    api       the Starlette app: LibreTranslate's API, lanmt's own, /health, /metrics
    metrics   Prometheus metrics
    server    one process on uvicorn
    replicas  N replicas as a Ray Serve deployment

It needs the `serve` extra (Starlette, uvicorn, prometheus-client, python-multipart), and
`--replicas` the `serve-ray` extra (Ray Serve); `require` says which is missing.
"""

from __future__ import annotations

import importlib.util

from lanmt_cli.errors import LanmtError

EXTRAS = {
    "serve": ("starlette", "uvicorn", "prometheus_client", "python_multipart"),
    "serve-ray": ("starlette", "uvicorn", "prometheus_client", "python_multipart", "ray.serve"),
}


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # its parent package is missing
        return True


def require(extra: str, what: str) -> None:
    """One clear LanmtError naming the install command if a module of `extra` is missing."""
    missing = [m for m in EXTRAS[extra] if _missing(m)]
    if missing:
        raise LanmtError(
            f"{what} needs the {extra} extra ({', '.join(missing)} missing): "
            f"pip install 'lanmt[{extra}]'"
        )
