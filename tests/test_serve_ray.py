"""`lanmt serve --replicas 2`: the same app on two Ray Serve replicas of a private local
Ray cluster (CPU), answering as the single server does, and stopping cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.processes import cli, wait_for
from tests.test_serve import Server, lanmt_translate

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayServer(Server):
    """`lanmt serve --replicas N` (Ray Serve picks no free port itself: one is chosen here)."""

    def __init__(self, folder, *args):
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "serve.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        with open(self.log, "w") as err:
            self.proc = cli(
                "serve", "--port", self.port, *args, env=env, stdout=subprocess.DEVNULL, stderr=err
            )
        wait_for(
            lambda: "serving " in self.text() or self.proc.poll() is not None,
            what="the replicas to start",
        )
        assert self.proc.poll() is None, self.text()


def test_two_replicas_answer_like_one_server_and_stop_cleanly(tiny_bundle, tiny_task, tmp_path):
    from deep_translator import LibreTranslator

    sources = [src for src, _ in tiny_task[:16]]
    reference = lanmt_translate(tiny_bundle, sources, tmp_path)
    s = RayServer(
        tmp_path / "ray", "--model", tiny_bundle, "--replicas", "2", "--max-wait-ms", "20"
    )
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda src: s.translate(src), sources))
        assert [a[2]["translatedText"] for a in answers] == reference
        client = LibreTranslator(source="en", target="de", api_key="any", custom_url=s.url + "/")
        assert client.translate_batch(sources[:3]) == reference[:3]
        status, _, body = s.request("/v1/translate", json_body={"sentences": "a", "decoder": "x"})
        assert status == 400 and "unknown decoder 'x'" in body["error"]
        pids = {s.request("/health")[2]["pid"] for _ in range(30)}
        assert len(pids) == 2  # both replicas answer
        assert s.stop(signal.SIGTERM, timeout=120) == 0, s.text()
        assert s.text().rstrip().endswith("stopped")
    finally:
        s.stop(signal.SIGKILL)
