"""One server process: the app on uvicorn, bound before the model loads is announced.

SIGTERM and Ctrl-C stop it gracefully: the socket closes, requests in flight are answered,
queued sentences decoded, and the process exits 0; a second signal stops it at once.
"""

from __future__ import annotations

import socket

import uvicorn

from lanmt_cli.errors import LanmtError
from lanmt_cli.serving.api import ServerConfig, create_app
from lanmt_cli.serving.engine import Engine


class _Server(uvicorn.Server):
    """uvicorn, except that a signal is not raised again after the graceful stop (which
    would end the process with the signal's status instead of 0)."""

    def handle_exit(self, sig, frame) -> None:
        self.force_exit = self.should_exit  # a second signal: stop at once
        self.should_exit = True


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise LanmtError(f"--host {host}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise LanmtError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def serve(engine: Engine, config: ServerConfig, sock: socket.socket) -> None:
    """Serve until SIGTERM or Ctrl-C, then finish what is in flight and return."""
    app = create_app(engine, config)
    uv = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
        server_header=False,
    )
    _Server(uv).run(sockets=[sock])
