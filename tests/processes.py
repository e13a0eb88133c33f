"""`lanmt` as a real process (for signals and kills), and waiting for what it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start `lanmt ARGS` from this checkout (`env`: the environment, default this one's).

    The child gets Ctrl-C as a command typed at a terminal does, even where the tests run as a
    background job (which inherits SIGINT ignored, and then Python never raises
    KeyboardInterrupt).
    """
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lanmt_cli.app", *map(str, args)]
    if sys.platform != "win32":
        kw.setdefault("preexec_fn", _default_sigint)
    return subprocess.Popen(cmd, env=env, **kw)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, timeout: float = 180.0, what: str = "condition") -> None:
    """Poll `condition()` every 0.1 s; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
