"""`lanmt serve` (issue 22) as a real server process on 127.0.0.1, with the tiny bundle:
LibreTranslate's API through a real client of it (deep-translator), lanmt's own endpoint,
metrics, dynamic batching across requests, and every fault of the issue's item 3."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lanmt_cli.app import app
from tests.processes import cli, wait_for

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
LIMITS = ["--max-chars", "400", "--max-sentences", "6"]


# --- a server process and a small HTTP client ---------------------------------------------


class Server:
    """A `lanmt serve` process on a free port of 127.0.0.1."""

    def __init__(self, folder: Path, *args):
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "serve.log"
        with open(self.log, "w") as err:
            self.proc = cli("serve", "--port", "0", *args, stdout=subprocess.DEVNULL, stderr=err)
        wait_for(
            lambda: "serving " in self.text() or self.proc.poll() is not None,
            what="the server to start",
        )
        assert self.proc.poll() is None, self.text()
        self.url = re.search(r" at (http://\S+?);", self.text())[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        return self.log.read_text()

    def request(
        self,
        path,
        *,
        json_body=None,
        form=None,
        query=None,
        body=None,
        headers=None,
        method=None,
        timeout=60.0,
    ):
        """(status, headers, JSON or text) of one request."""
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif form is not None:
            body = urllib.parse.urlencode(form, doseq=True).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        url = self.url + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, hdrs, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as err:
            status, hdrs, raw = err.code, err.headers, err.read()
        text = raw.decode()
        assert "Traceback" not in text
        kind = hdrs.get("content-type", "")
        return status, hdrs, json.loads(text) if kind.startswith("application/json") else text

    def translate(self, q, **fields):
        return self.request(
            "/translate", json_body={"q": q, "source": "en", "target": "de", **fields}
        )

    def metric(self, name: str) -> float:
        """The sum of a metric's samples named `name` (all labels)."""
        from prometheus_client.parser import text_string_to_metric_families

        _, _, text = self.request("/metrics")
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        )

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    """A server with small limits; a request waits up to 50 ms for others to join its batch."""
    s = Server(
        tmp_path_factory.mktemp("serve"), "--model", tiny_bundle, "--max-wait-ms", "50", *LIMITS
    )
    yield s
    assert s.stop() == 0, s.text()


@pytest.fixture(scope="module")
def slow_server(tiny_bundle, tmp_path_factory):
    """A server with an API key, whose requests wait 400 ms for company and whose queue
    holds 4 sentences."""
    s = Server(
        tmp_path_factory.mktemp("serve-slow"),
        "--model",
        tiny_bundle,
        "--api-key",
        "secret",
        "--max-wait-ms",
        "400",
        "--max-queue",
        "4",
        "--max-sentences",
        "2",
    )
    yield s
    assert s.stop() == 0, s.text()


@pytest.fixture(scope="module")
def sources(tiny_task) -> list[str]:
    return [src for src, _ in tiny_task[:24]]


def lanmt_translate(bundle, sources, tmp_path, *args) -> list[str]:
    """What `lanmt translate` prints for `sources`, one line each."""
    src = tmp_path / "src.txt"
    src.write_text("".join(s + "\n" for s in sources))
    result = CliRunner().invoke(app, ["translate", "--model", str(bundle), str(src), *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def reference(tiny_bundle, sources, tmp_path_factory) -> list[str]:
    return lanmt_translate(tiny_bundle, sources, tmp_path_factory.mktemp("ref"))


# --- LibreTranslate's API -------------------------------------------------------------------


def test_a_libretranslate_client_gets_what_lanmt_translate_prints(server, sources, reference):
    from deep_translator import LibreTranslator

    client = LibreTranslator(source="en", target="de", api_key="any", custom_url=server.url + "/")
    assert client.translate(sources[0]) == reference[0]
    assert client.translate_batch(sources[1:4]) == reference[1:4]


def test_json_form_query_and_multipart_requests_all_translate(server, sources, reference):
    fields = {"source": "en", "target": "de", "format": "text"}
    status, _, body = server.translate(sources[:3])  # q as a list: a list back
    assert status == 200 and body == {"translatedText": reference[:3]}
    status, _, body = server.request("/translate", form={"q": sources[0], **fields})
    assert status == 200 and body == {"translatedText": reference[0]}
    status, _, body = server.request("/translate", query={"q": sources[1], **fields}, body=b"")
    assert status == 200 and body == {"translatedText": reference[1]}
    status, _, body = server.request("/translate", form={"q": sources[:2], **fields})  # q=a&q=b
    assert status == 200 and body == {"translatedText": reference[:2]}
    boundary = "lanmt-test-boundary"
    parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in {"q": sources[2], **fields}.items()
    )
    status, _, body = server.request(
        "/translate",
        body=(parts + f"--{boundary}--\r\n").encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200 and body == {"translatedText": reference[2]}
    status, _, body = server.request(
        "/translate",
        body=b"--other\r\nno headers\r\n",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 400 and body["error"].startswith("malformed multipart form")


def test_lines_of_a_text_are_translated_and_kept_apart(server, sources, reference):
    status, _, body = server.translate(f"{sources[0]}\n{sources[1]}\r\n\n{sources[2]}")
    assert status == 200
    assert body["translatedText"] == f"{reference[0]}\n{reference[1]}\r\n\n{reference[2]}"
    status, _, body = server.translate(["", sources[3]])  # every text gets an answer
    assert status == 200 and body["translatedText"] == ["", reference[3]]


def test_auto_source_answers_the_models_source_language(server, sources, reference):
    status, _, body = server.translate(sources[0], source="auto")
    assert status == 200 and body["translatedText"] == reference[0]
    assert body["detectedLanguage"]["language"] == "en"


def test_languages_lists_the_models_pair(server):
    status, _, body = server.request("/languages")
    assert status == 200
    assert body == [
        {"code": "en", "name": "English", "targets": ["de"]},
        {"code": "de", "name": "German", "targets": []},
    ]


# --- batching -----------------------------------------------------------------------------


def test_concurrent_single_sentences_are_batched_and_answered_as_alone(server, sources, reference):
    """Sentences sent one a request by 12 clients at once share batches, and each gets
    exactly what `lanmt translate` prints for it."""
    batches_before = server.metric("lanmt_batch_requests_count")
    alone_before = _bucket(server, "lanmt_batch_requests_bucket", "1.0")
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda s: server.translate(s), sources))
    assert [a[2]["translatedText"] for a in answers] == reference
    batches = server.metric("lanmt_batch_requests_count") - batches_before
    alone = _bucket(server, "lanmt_batch_requests_bucket", "1.0") - alone_before
    assert batches < len(sources) and alone < batches  # some batches held several requests


def test_with_two_workers_concurrent_sentences_get_what_lanmt_translate_prints(
    tiny_bundle, tmp_path, sources, reference
):
    """--workers 2: two batches decode at once (each on one of --threads 2), and every
    sentence still gets exactly what `lanmt translate` prints for it."""
    s = Server(tmp_path, "--model", tiny_bundle, "--workers", "2", "--threads", "2")
    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda line: s.translate(line), sources))
        assert [a[2]["translatedText"] for a in answers] == reference
        assert s.metric("lanmt_batch_sentences_sum") >= len(sources)
    finally:
        assert s.stop() == 0, s.text()


def test_threads_are_shared_out_among_workers():
    from lanmt_cli.commands.serve import _per_worker
    from lanmt_cli.tokenizer import default_threads

    assert _per_worker(None, 1) is None and _per_worker(3, 1) == 3  # one worker: as given
    assert _per_worker(4, 2) == 2 and _per_worker(3, 2) == 1 and _per_worker(1, 4) == 1
    assert _per_worker(None, 2) == max(1, default_threads() // 2)


def test_the_loaded_model_is_out_of_the_collectors_full_scans(tiny_bundle):
    """After warm-up, what the engine loaded is frozen (gc.freeze): a full collection of
    it stalled every request in flight."""
    import gc

    from lanmt_cli.serving.engine import Engine, EngineConfig

    gc.unfreeze()
    try:
        engine = Engine(EngineConfig(model=str(tiny_bundle)))
        assert gc.get_freeze_count() == 0
        engine.warm_up()
        assert gc.get_freeze_count() > 10_000
        assert not any(o is engine.bundle.model for o in gc.get_objects())  # frozen
    finally:
        gc.unfreeze()


def _bucket(server: Server, name: str, le: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, _, text = server.request("/metrics")
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and s.labels.get("le") == le
    )


# --- lanmt's own endpoint, health, metrics ------------------------------------------------


def test_native_endpoint_names_the_decoder_and_times_each_sentence(
    server, tiny_bundle, sources, tmp_path
):
    expected = lanmt_translate(tiny_bundle, sources[:3], tmp_path, "-d", "one-shot")
    status, _, body = server.request(
        "/v1/translate", json_body={"sentences": sources[:3], "decoder": "one-shot"}
    )
    assert status == 200
    assert body["decoder"] == "one-shot" and body["options"]["lengths"] == 1
    assert [r["translation"] for r in body["results"]] == expected
    for r, src in zip(body["results"], sources[:3], strict=True):
        assert r["source"] == src and r["pieces"] == 1 and r["batch_sentences"] >= 1
        assert r["queue_ms"] >= 0 and r["decode_ms"] > 0
    assert body["total_ms"] >= max(r["queue_ms"] + r["decode_ms"] for r in body["results"])

    expected = lanmt_translate(tiny_bundle, sources[:2], tmp_path, "-d", "refine2")
    status, _, body = server.request(
        "/v1/translate",
        json_body={"sentences": sources[:2], "decoder": "refine", "options": {"steps": 2}},
    )
    assert status == 200 and body["options"]["steps"] == 2
    assert [r["translation"] for r in body["results"]] == expected


def test_health_and_metrics(server, sources):
    status, _, body = server.request("/health")
    assert status == 200 and body["status"] == "ok" and body["decoder"] == "refine"
    assert body["languages"] == {"source": "en", "target": "de"}
    sentences = server.metric("lanmt_sentences_total")
    requests = server.metric("lanmt_requests_total")
    server.translate(sources[:2])
    assert server.metric("lanmt_sentences_total") == sentences + 2
    assert server.metric("lanmt_requests_total") >= requests + 2  # the translate, a /metrics
    status, headers, text = server.request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    for name in (
        "lanmt_batch_sentences_bucket",
        "lanmt_batch_tokens_count",
        "lanmt_queue_sentences",
        "lanmt_request_seconds_bucket",
        "lanmt_requests_in_flight",
    ):
        assert name in text


# --- faults -------------------------------------------------------------------------------


def lt(**fields):
    """A LibreTranslate request: q="a" from en into de, with `fields` changed."""
    return {"q": "a", "source": "en", "target": "de", **fields}


FAULTS = {  # name: (path, body, status, message)
    "malformed JSON": ("/translate", b'{"q": "a dog', 400, "malformed JSON body"),
    "not an object": ("/translate", b'["a dog"]', 400, "must be an object, not list"),
    "nested too deeply": ("/translate", b"[" * 50000, 400, "malformed JSON body"),
    "q a number": ("/translate", lt(q=3), 400,
                   "field q must be a string or a list of strings, not a number"),
    "q holds null": ("/translate", lt(q=["a", None]), 400, "not a list holding null"),
    "no q": ("/translate", {"source": "en", "target": "de"}, 400, "missing field q"),
    "source a list": ("/translate", lt(source=["en"]), 400,
                      "field source must be a string, not a list"),
    "unknown pair": ("/translate", lt(source="fr"), 400,
                     "language pair fr-de is not served; this server translates en-de"),
    "html": ("/translate", lt(format="html"), 400, "format html is not supported"),
    "alternatives": ("/translate", lt(alternatives=-1), 400, "field alternatives must be"),
    "unknown decoder": ("/v1/translate", {"sentences": "a", "decoder": "refyne"}, 400,
                        "unknown decoder 'refyne' (did you mean refine?)"),
    "bad option": ("/v1/translate", {"sentences": "a", "options": {"steps": "many"}}, 400,
                   "option steps of decoder refine takes int"),
    "unknown option": ("/v1/translate", {"sentences": "a", "options": {"stepz": 2}}, 400,
                       "decoder refine has no option 'stepz'"),
    "options a list": ("/v1/translate", {"sentences": "a", "options": [1]}, 400,
                       "field options must be an object, not a list"),
    "unknown field": ("/v1/translate", {"sentences": "a", "decodr": "refine"}, 400,
                      "unknown field decodr"),
    "too many characters": ("/translate", lt(q="dog " * 101), 413,
                            "the request has 404 characters; this server takes at most 400"),
    "too many sentences": ("/translate", lt(q=["dog"] * 7), 400,
                           "the request has 7 sentences; this server takes at most 6"),
    "too many lines": ("/v1/translate", {"sentences": ["dog"] * 7}, 400,
                       "the request has 7 sentences"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"), list(FAULTS.values()), ids=list(FAULTS)
)
def test_a_bad_request_gets_one_clear_json_error(server, path, payload, status, message):
    if isinstance(payload, bytes):
        got, _, body = server.request(
            path, body=payload, headers={"Content-Type": "application/json"}
        )
    else:
        got, _, body = server.request(path, json_body=payload)
    assert got == status and message in body["error"], body
    if "characters" in message or "sentences" in message:
        name = "max_chars" if "characters" in message else "max_sentences"
        assert body["limit"] == {"name": name, "value": 400 if name == "max_chars" else 6}


def test_http_level_faults_are_json_too(server):
    status, _, body = server.request("/nowhere")
    assert status == 404 and body == {"error": "no such endpoint: /nowhere"}
    status, _, body = server.request("/translate")  # GET
    assert status == 405 and body == {"error": "method GET is not allowed here"}
    status, _, body = server.request(
        "/translate",
        body=b"q=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 400 and body == {"error": "the form body is not UTF-8"}
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # refused unread
        sock.sendall(
            b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 3000000\r\n\r\n["
        )
        answer = sock.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 413 ") and '"name":"max_body_bytes"' in answer
    status, _, body = server.request(
        "/translate", body=b"<q>a</q>", headers={"Content-Type": "text/xml"}
    )
    assert status == 415 and "unsupported content type text/xml" in body["error"]


def test_the_api_key_is_asked_for_translations_only(slow_server, sources):
    from deep_translator import LibreTranslator
    from deep_translator.exceptions import AuthorizationException

    for key in (None, "wrong"):
        extra = {} if key is None else {"api_key": key}
        status, _, body = slow_server.translate(sources[0], **extra)
        assert status == 403 and body == {"error": "Invalid API key"}
    status, _, body = slow_server.request("/v1/translate", json_body={"sentences": sources[0]})
    assert status == 403
    client = LibreTranslator(
        source="en", target="de", api_key="wrong", custom_url=slow_server.url + "/"
    )
    with pytest.raises(AuthorizationException):
        client.translate(sources[0])
    client = LibreTranslator(
        source="en", target="de", api_key="secret", custom_url=slow_server.url + "/"
    )
    assert client.translate(sources[0])
    assert slow_server.request("/health")[0] == 200  # health, metrics, languages: open


def test_a_full_queue_answers_503_and_every_request_an_answer(slow_server, sources):
    """12 clients at once, 2 sentences each, a queue of 4: the first two requests wait for
    their batch, the others are turned away at once; nobody goes unanswered."""

    def ask(i: int):
        return slow_server.translate(sources[2 * i : 2 * i + 2], api_key="secret")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    statuses = [a[0] for a in answers]
    assert set(statuses) == {200, 503}, statuses
    for status, headers, body in answers:
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
            assert body["limit"] == {"name": "max_queue", "value": 4}
            assert "too many sentences are waiting" in body["error"]
        else:
            assert len(body["translatedText"]) == 2


def test_a_client_that_disconnects_costs_nothing(slow_server, sources):
    """A request whose client leaves while it waits is dropped before it is decoded."""
    sentences = slow_server.metric("lanmt_sentences_total")
    gone = slow_server.metric("lanmt_client_disconnects_total")
    body = json.dumps({"q": sources[:2], "source": "en", "target": "de", "api_key": "secret"})
    with socket.create_connection(("127.0.0.1", slow_server.port)) as sock:
        sock.sendall(
            f"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        time.sleep(0.1)  # it waits 400 ms for company; leave before
    wait_for(
        lambda: slow_server.metric("lanmt_client_disconnects_total") == gone + 1,
        timeout=10,
        what="the server to notice",
    )
    status, _, answer = slow_server.translate(sources[2], api_key="secret")
    assert status == 200 and answer["translatedText"]
    assert slow_server.metric("lanmt_sentences_total") == sentences + 1  # only this one


# --- starting and stopping ----------------------------------------------------------------


@POSIX
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_accepting_finishes_what_is_in_flight_and_exits_0(
    tiny_bundle, tmp_path, sources, reference, sig
):
    s = Server(tmp_path, "--model", tiny_bundle, "--max-wait-ms", "1000")
    try:
        answers: list = []
        asking = threading.Thread(target=lambda: answers.append(s.translate(sources[:2])))
        asking.start()
        wait_for(
            lambda: s.metric("lanmt_queue_sentences") == 2,
            timeout=10,
            what="the request to be queued",
        )
        s.proc.send_signal(sig)
        wait_for(lambda: _refused(s.port), timeout=10, what="the socket to close")
        assert s.proc.poll() is None  # still finishing the request
        asking.join(30)
        assert answers and answers[0][0] == 200
        assert answers[0][2]["translatedText"] == reference[:2]
        assert s.proc.wait(30) == 0, s.text()
        assert "Traceback" not in s.text() and s.text().rstrip().endswith("stopped")
    finally:
        s.stop(signal.SIGKILL)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_it_listens_on_127_0_0_1_by_default(server):
    assert server.url.startswith("http://127.0.0.1:")


def test_a_port_in_use_fails_before_loading_the_model(tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(
            "serve", "--model", tiny_bundle, "--port", port, stderr=subprocess.PIPE, text=True
        )
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_option_mistakes_are_one_line():
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--address", "auto"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: --address names the Ray cluster of --replicas; give --replicas N too"
    )
    result = runner.invoke(app, ["serve", "--max-sentences", "50", "--max-queue", "10"])
    assert result.exit_code == 1 and "could never be queued" in result.output


BLOCK_STARLETTE = """
import sys
class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "starlette":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Uninstalled())
sys.argv = ["lanmt", "serve"]
from lanmt_cli.app import main
main()
"""


def test_without_the_serve_extra_one_line_names_the_install_command():
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_STARLETTE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "error: lanmt serve needs the serve extra (starlette missing): pip install 'lanmt[serve]'"
    )
