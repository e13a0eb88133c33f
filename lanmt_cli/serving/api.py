"""The HTTP API, a Starlette app: LibreTranslate's `POST /translate` and `GET /languages`,
lanmt's own `POST /v1/translate`, `GET /health` and `GET /metrics`.

Every answer is JSON (the metrics: Prometheus' text format). Every error is
`{"error": "one clear message"}` with a 4xx or 5xx status, never a traceback; errors
about a limit also name it: `{"error": ..., "limit": {"name": "max_chars", "value": 5000}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lanmt_cli.errors import LanmtError
from lanmt_cli.serving.batcher import Batcher, Done, QueueFull, Stopping
from lanmt_cli.serving.engine import Choice, Engine
from lanmt_cli.serving.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("lanmt.serve")

# Names of the language codes a bundle may declare (ISO 639-1), as /languages lists them.
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fi": "Finnish",
    "fr": "French",
    "hi": "Hindi",
    "hu": "Hungarian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "zh": "Chinese",
}
_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")


@dataclass
class ServerConfig:
    """Batching and limits of one server (or of each replica)."""

    max_wait_ms: float = 0.0  # longest a request waits for others to share its batch
    batch_tokens: int = 4096  # source tokens a batch gathers from the queue
    workers: int = 1  # batches decoded at once, each on its own threads
    max_queue: int = 1024  # sentences waiting at most; beyond: 503 with Retry-After
    max_chars: int = 5000  # characters per request; beyond: 413
    max_sentences: int = 128  # sentences (lines) per request; beyond: 400
    api_key: str | None = None  # asked as the `api_key` field of the translate endpoints

    @property
    def max_body_bytes(self) -> int:
        """Request bodies longer than this are refused unread (JSON may spell a character
        in 6 bytes, \\uXXXX)."""
        return 6 * self.max_chars + 65536


class ApiError(Exception):
    """An error answered as {"error": message} with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        limit: tuple[str, int] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.limit = limit
        self.headers = headers

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message}
        if self.limit is not None:
            body["limit"] = {"name": self.limit[0], "value": self.limit[1]}
        return JSONResponse(body, self.status, headers=self.headers)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


# --- reading requests --------------------------------------------------------------------


async def _body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 beyond `cap` bytes (before reading, where the
    client says its length)."""
    too_long = ApiError(
        413,
        f"the request body is longer than {cap} bytes",
        limit=("max_body_bytes", cap),
        headers={"Connection": "close"},  # the rest of the body is not read
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise too_long
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_long
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _merge(pairs) -> dict[str, Any]:
    """Form or query pairs as fields; a repeated name (q=a&q=b) becomes a list."""
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in fields:
            old = fields[key]
            fields[key] = [*old, value] if isinstance(old, list) else [old, value]
        else:
            fields[key] = value
    return fields


async def read_json(request: Request, cap: int) -> dict[str, Any]:
    body = await _body(request, cap)
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "the JSON body is not UTF-8") from None
    except ValueError as err:  # JSONDecodeError, or a number too long to convert
        raise ApiError(400, f"malformed JSON body: {err}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the JSON body must be an object, not {type(data).__name__}")
    return data


async def read_fields(request: Request, cap: int) -> dict[str, Any]:
    """The fields of a LibreTranslate request: a JSON object, or the query string and a
    form (url-encoded or multipart) together, as LibreTranslate reads them."""
    kind = _media_type(request)
    if kind == "application/json":
        return await read_json(request, cap)
    fields = _merge(request.query_params.multi_items())
    if kind == "multipart/form-data":
        from starlette.formparsers import MultiPartException, MultiPartParser

        body = await _body(request, cap)

        async def once() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(request.headers, once(), max_files=0).parse()
        except MultiPartException as err:
            raise ApiError(400, f"malformed multipart form: {err}") from None
        return {**fields, **_merge(form.multi_items())}
    body = await _body(request, cap)
    if body.strip():
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the form body is not UTF-8") from None
        if kind not in ("application/x-www-form-urlencoded", ""):
            raise ApiError(
                415,
                f"unsupported content type {kind}; send application/json or "
                "application/x-www-form-urlencoded",
            )
        fields.update(_merge(parse_qsl(text, keep_blank_values=True)))
    return fields


def _string(fields: dict[str, Any], name: str, default: str | None = None) -> str:
    value = fields.get(name, default)
    if value is None:
        raise ApiError(400, f"missing field {name}")
    if not isinstance(value, str):
        raise ApiError(400, f"field {name} must be a string, not {_json_type(value)}")
    return value


def _strings(value: Any, name: str) -> tuple[list[str], bool]:
    """A string or a list of strings, and whether it was a single string."""
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value, False
    if value is None:
        raise ApiError(400, f"missing field {name}")
    if isinstance(value, list):
        what = "a list holding " + _json_type(next(v for v in value if not isinstance(v, str)))
    else:
        what = _json_type(value)
    raise ApiError(400, f"field {name} must be a string or a list of strings, not {what}")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _count(fields: dict[str, Any], name: str, default: int = 0) -> int:
    value = fields.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, f"field {name} must be a whole number >= 0, got {value!r:.40}")
    return value


# --- the service -------------------------------------------------------------------------


class Service:
    """One loaded engine, its batcher and metrics, and the limits of its requests."""

    def __init__(self, engine: Engine, config: ServerConfig):
        self.engine = engine
        self.config = config
        self.in_flight = 0
        self.stopping = False
        self.batcher = Batcher(
            engine.translate,
            max_tokens=config.batch_tokens,
            max_wait=config.max_wait_ms / 1000,
            max_queue=config.max_queue,
            workers=config.workers,
        )
        self.metrics = Metrics(lambda: self.batcher.queued, lambda: self.in_flight)
        self.batcher.on_batch = self.metrics.batch

    def check_key(self, fields: dict[str, Any]) -> None:
        key = self.config.api_key
        given = fields.get("api_key")
        if key and not (isinstance(given, str) and hmac.compare_digest(given, key)):
            raise ApiError(403, "Invalid API key")

    def check_limits(self, lines: list[str]) -> None:
        chars, sentences = sum(map(len, lines)), len(lines)
        c = self.config
        if chars > c.max_chars:
            raise ApiError(
                413,
                f"the request has {chars} characters; this server takes at most {c.max_chars}",
                limit=("max_chars", c.max_chars),
            )
        if sentences > c.max_sentences:
            raise ApiError(
                400,
                f"the request has {sentences} sentences; this server takes at most "
                f"{c.max_sentences}",
                limit=("max_sentences", c.max_sentences),
            )

    def check_pair(self, source: str, target: str) -> None:
        src, tgt = self.engine.source, self.engine.target
        if (src is None or source in (src, "auto")) and (tgt is None or target == tgt):
            return
        served = f"{src}-{tgt}" if src and tgt else f"into {tgt}" if tgt else f"from {src}"
        raise ApiError(
            400, f"language pair {source}-{target} is not served; this server translates {served}"
        )

    def choose(self, decoder: Any, options: Any) -> Choice:
        if decoder is None and options is None:
            return self.engine.default
        if decoder is None:
            decoder = self.engine.default.name
        if not isinstance(decoder, str):
            raise ApiError(400, f"field decoder must be a string, not {_json_type(decoder)}")
        if options is not None and not isinstance(options, dict):
            raise ApiError(400, f"field options must be an object, not {_json_type(options)}")
        for key, value in (options or {}).items():
            if isinstance(value, (dict, list)) or value is None:
                raise ApiError(400, f"decoder option {key} must be a string, number or boolean")
        try:
            return self.engine.choose(decoder, options)
        except LanmtError as err:
            raise ApiError(400, str(err)) from None

    async def translate(self, request: Request, choice: Choice, lines: list[str]) -> list[Done]:
        """Each line's result through the batcher; ClientGone if the client leaves first."""
        self.check_limits(lines)
        if self.stopping:
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": "1"})
        tokens = self.engine.count_tokens(lines)
        work = asyncio.ensure_future(self.batcher.submit(choice, lines, tokens))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client left first (or the server is stopping at once)
                work.cancel()
        if not work.done():
            self.metrics.disconnects.inc()
            raise ClientGone
        try:
            return work.result()
        except QueueFull as err:
            raise ApiError(
                503,
                f"too many sentences are waiting ({self.config.max_queue}, --max-queue); "
                f"retry in {err.retry_after} s",
                limit=("max_queue", self.config.max_queue),
                headers={"Retry-After": str(err.retry_after)},
            ) from None
        except Stopping:
            raise ApiError(
                503, "the server is shutting down", headers={"Retry-After": "1"}
            ) from None


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _split_lines(text: str) -> tuple[list[str], list[str]]:
    """A text's lines and the line breaks between them."""
    parts = _LINE_BREAK.split(text)
    return parts[0::2], parts[1::2]


def _join_lines(lines: list[str], breaks: list[str]) -> str:
    out = [lines[0]]
    for brk, line in zip(breaks, lines[1:], strict=True):
        out += [brk, line]
    return "".join(out)


def _finite(value: Any) -> Any:
    from lanmt_cli.commands.translate import _finite

    return _finite(value)


# --- endpoints ---------------------------------------------------------------------------


async def libre_translate(service: Service, request: Request) -> Response:
    """LibreTranslate's POST /translate: q (string or list), source, target, format."""
    fields = await read_fields(request, service.config.max_body_bytes)
    service.check_key(fields)
    texts, single = _strings(fields.get("q"), "q")
    source, target = _string(fields, "source"), _string(fields, "target")
    service.check_pair(source, target)
    fmt = _string(fields, "format", "text")
    if fmt != "text":
        raise ApiError(
            400, f"format {fmt} is not supported; this server translates plain text (format=text)"
        )
    alternatives = _count(fields, "alternatives")
    split = [_split_lines(text) for text in texts]
    lines = [line for text_lines, _ in split for line in text_lines]
    done = iter(await service.translate(request, service.engine.default, lines))
    translated, others = [], []
    for text_lines, breaks in split:
        results = [next(done).result for _ in text_lines]
        translated.append(_join_lines([r.translation for r in results], breaks))
        if len(results) == 1:
            best = results[0].translation
            others.append([t for t, _ in results[0].candidates if t != best][:alternatives])
        else:
            others.append([])
    body: dict[str, Any] = {"translatedText": translated[0] if single else translated}
    if alternatives:
        body["alternatives"] = others[0] if single else others
    if source == "auto" and service.engine.source:  # one source language: nothing to detect
        detected = {"language": service.engine.source, "confidence": 100.0}
        body["detectedLanguage"] = detected if single else [detected] * len(texts)
    return JSONResponse(body)


async def native_translate(service: Service, request: Request) -> Response:
    """POST /v1/translate: {"sentences": [...], "decoder": NAME, "options": {...}}; each
    sentence's translation, score, length and timing."""
    start = time.perf_counter()
    fields = await read_json(request, service.config.max_body_bytes)
    service.check_key(fields)
    unknown = sorted(set(fields) - {"sentences", "decoder", "options", "api_key"})
    if unknown:
        raise ApiError(
            400,
            f"unknown field {unknown[0]}; the fields are sentences, decoder, options and api_key",
        )
    sentences, single = _strings(fields.get("sentences"), "sentences")
    choice = service.choose(fields.get("decoder"), fields.get("options"))
    lines = [_LINE_BREAK.sub(" ", s) for s in sentences]  # one line each
    done = await service.translate(request, choice, lines)
    results = []
    for d in done:
        r = d.result.as_dict()
        del r["decoder"]
        r.update(
            queue_ms=round(1000 * d.queue_seconds, 3),
            decode_ms=round(1000 * d.decode_seconds, 3),
            batch_sentences=d.batch_sentences,
        )
        results.append(r)
    body = {
        "decoder": choice.name,
        "options": choice.as_dict(),
        "results": results,
        "total_ms": round(1000 * (time.perf_counter() - start), 3),
    }
    return JSONResponse(_finite(body))


async def languages(service: Service, request: Request) -> Response:
    """LibreTranslate's GET /languages: [{"code", "name", "targets"}]."""
    src, tgt = service.engine.source, service.engine.target
    if not (src and tgt):
        return JSONResponse([])
    return JSONResponse(
        [
            {"code": src, "name": LANGUAGE_NAMES.get(src, src), "targets": [tgt]},
            {"code": tgt, "name": LANGUAGE_NAMES.get(tgt, tgt), "targets": []},
        ]
    )


async def health(service: Service, request: Request) -> Response:
    engine = service.engine
    body = {
        "status": "stopping" if service.stopping else "ok",
        "model": str(engine.bundle.path),
        "languages": {"source": engine.source, "target": engine.target},
        "decoder": engine.default.name,
        "options": engine.default.as_dict(),
        "queue_sentences": service.batcher.queued,
        "requests_in_flight": service.in_flight,
        "pid": os.getpid(),  # which process (with --replicas: which replica) answered
    }
    return JSONResponse(_finite(body), 503 if service.stopping else 200)


async def metrics(service: Service, request: Request) -> Response:
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)


# --- the app -----------------------------------------------------------------------------

Endpoint = Callable[[Service, Request], Awaitable[Response]]


def _endpoint(service: Service, name: str, fn: Endpoint) -> Callable[[Request], Awaitable]:
    """`fn` with its errors answered as JSON, and counted and timed in the metrics."""

    async def handle(request: Request) -> Response:
        start = time.perf_counter()
        service.in_flight += 1
        try:
            response = await fn(service, request)
        except ApiError as err:
            response = err.response()
        except ClientGone:
            response = Response(status_code=499)  # nobody reads it (nginx's code for this)
        except LanmtError as err:  # a decoder that cannot be built for this model
            response = ApiError(400, str(err)).response()
        except Exception:
            log.exception("%s failed", name)
            response = ApiError(500, "internal error; the server's log has the details").response()
        finally:
            service.in_flight -= 1
        service.metrics.answered(name, response.status_code, time.perf_counter() - start)
        return response

    return handle


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no such endpoint: {request.url.path}",
        405: f"method {request.method} is not allowed here",
    }.get(exc.status_code, exc.detail)
    return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "internal error; the server's log has the details"}, 500)


def create_app(engine: Engine, config: ServerConfig) -> Starlette:
    """The Starlette app serving `engine` with `config`'s batching and limits."""
    service = Service(engine, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.stopping = True
        await service.batcher.close()

    routes = [
        Route("/translate", _endpoint(service, "translate", libre_translate), methods=["POST"]),
        Route("/languages", _endpoint(service, "languages", languages), methods=["GET"]),
        Route(
            "/v1/translate", _endpoint(service, "v1/translate", native_translate), methods=["POST"]
        ),
        Route("/health", _endpoint(service, "health", health), methods=["GET"]),
        Route("/metrics", _endpoint(service, "metrics", metrics), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.service = service
    return app
