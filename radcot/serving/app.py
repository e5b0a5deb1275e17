"""The HTTP service behind ``radcot serve``: FastAPI on uvicorn, a dynamic batcher, an LRU cache, Prometheus.

API (JSON; the names are stable):

- ``POST /v1/expand`` ``{"queries": [{"id": "q1", "text": "..."}], "formula": "radcot"?}`` ->
  ``{"results": [{"id", "query", "cot", "expanded"}]}`` in request order.
- ``POST /v1/search`` ``{"query": "...", "k": 10, "formula": "radcot"?}`` ->
  ``{"query", "cot", "expanded", "hits": [{"docid", "score", "rank"}]}`` (hits from ``--index``).
- ``GET /health``: 200 ``{"status": "ok"}`` once the student is loaded, 503 ``{"status": "loading"}`` before.
- ``GET /metrics``: Prometheus text (requests, latency, batch sizes, queue depth, cache hits).

Errors are ``{"error": {"code", "message", "field"?}}``: malformed JSON 400; a missing/ill-typed field 422
naming it (``queries.0.text``); a body over ``max_body_bytes`` 413 (refused from its ``Content-Length``
before anything is read, or as soon as a chunked body passes the limit); a query over ``max_query_chars``
or more than ``max_queries`` queries 400 naming it; a full queue or a student still loading 503 with
``Retry-After``; a missing/wrong API key 401.

Why FastAPI + uvicorn rather than LitServe: the batching this service needs is a short asyncio queue
on the server's own event loop (a request carries several queries, split across batches by count), with
the model in-process and shared with ``Expander`` users; LitServe's model runs in separate worker
processes fed through queues (pickling every request) and its batching unit is one request. FastAPI and
uvicorn are already the stack here, and the error contract above (413 before reading, 422 naming the
field) is plain FastAPI/ASGI code.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from radcot.serving.batcher import Batcher, QueueFull
from radcot.serving.cache import LRUCache
from radcot.serving.metrics import Metrics

logger = logging.getLogger("radcot.serving")

Formula = Literal["radcot", "query2doc", "dense", "none"]

#: the routes that get their own label in the request metrics
PATHS = ("/v1/expand", "/v1/search", "/health", "/metrics")


@dataclass
class ServeSettings:
    """What ``radcot serve`` passes to :func:`create_app` (every limit has a flag of the same name)."""

    formula: str = "radcot"
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    max_queue: int = 1024
    cache_size: int = 10_000
    max_body_bytes: int = 1 << 20
    max_query_chars: int = 1000
    max_queries: int = 256
    max_k: int = 1000
    api_key: str | None = None


# ----------------------------------------------------------------------------------------------- schemas


class QueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    text: str


class ExpandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[QueryIn] = Field(min_length=1)
    formula: Formula | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    k: int = Field(10, ge=1)
    formula: Formula | None = None


class HTTPProblem(Exception):
    """An error response: status, message, the offending field, the error type (OpenAI's), extra headers."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None,
                 type: str | None = None):  # noqa: A002 - the JSON field's name
        super().__init__(message)
        self.status, self.message, self.field, self.headers, self.type = status, message, field, headers or {}, type

    def response(self) -> JSONResponse:
        err: dict[str, Any] = {"code": self.status, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        if self.type is not None:
            err["type"] = self.type
        return JSONResponse({"error": err}, status_code=self.status, headers=self.headers)


# ------------------------------------------------------------------------------------------ request body


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) once it passes ``limit`` bytes; a client that goes away raises ``ClientDisconnect``."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body over the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(model: type[BaseModel], body: bytes) -> Any:
    """Validate ``body`` as ``model``: malformed JSON -> 400, the first bad field -> 422 naming it."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise HTTPProblem(400, f"malformed JSON: {err['msg']}") from None
        where = ".".join(str(p) for p in err["loc"]) or "body"
        got = "" if err["type"] == "missing" else f" (got {str(err.get('input'))[:80]!r})"
        raise HTTPProblem(422, f"field {where}: {err['msg']}{got}", field=where) from None


def check_limits(texts: list[tuple[str, str]], settings: ServeSettings) -> None:
    """400 for too many queries or a query over ``max_query_chars`` (``texts``: (field, text) pairs)."""
    if len(texts) > settings.max_queries:
        raise HTTPProblem(400, f"{len(texts)} queries in one request; the limit is {settings.max_queries} "
                               f"(--max-queries): split the request", field="queries")
    for field, text in texts:
        if len(text) > settings.max_query_chars:
            raise HTTPProblem(400, f"{field} is {len(text)} characters; the limit is {settings.max_query_chars} "
                                   f"(--max-query-chars)", field=field)
        if not text.strip():
            raise HTTPProblem(400, f"{field} is blank", field=field)


# --------------------------------------------------------------------------------------------- the guard


class Guard:
    """ASGI middleware: API key, the body-size limit from ``Content-Length``, request metrics.

    ``settings`` is any settings object with ``api_key`` and ``max_body_bytes`` (both services' have them).
    """

    def __init__(self, app, settings: ServeSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._refuse(headers)
        t0, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if problem is not None:
                await problem.response()(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(scope["path"], status[0], time.perf_counter() - t0)

    def _refuse(self, headers: dict[str, str]) -> HTTPProblem | None:
        key = self.settings.api_key
        if key:
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if not given and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8")):
                return HTTPProblem(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                   headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return HTTPProblem(400, f"bad Content-Length header {length[:40]!r}")
            if int(length) > self.settings.max_body_bytes:
                return HTTPProblem(413, f"request body of {length} bytes is over the limit of "
                                        f"{self.settings.max_body_bytes} bytes (--max-body-bytes)",
                                   headers={"Connection": "close"})
        return None


# ---------------------------------------------------------------------------------------------- service


class Service:
    """The state behind the routes: the expander (once loaded), the batcher, the cache, the metrics."""

    def __init__(self, settings: ServeSettings, load: Callable[[], Any], metrics: Metrics):
        self.settings, self.load, self.metrics = settings, load, metrics
        self.expander: Any = None
        self.load_error: str | None = None
        self.cache: LRUCache[str] = LRUCache(settings.cache_size)
        self.batcher = Batcher(self._cots, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms,
                               max_queue=settings.max_queue, observe=metrics.batch)
        metrics.queue_depth.set_function(lambda: self.batcher.waiting)

    def _cots(self, texts: list[str]) -> list[str]:
        return self.expander.cots(texts)

    async def load_model(self, on_error: Callable[[str], None] | None = None,
                         on_loaded: Callable[[], None] | None = None) -> None:
        # its own thread, not the loop's default executor: asyncio.run() joins that one on the way out, so a
        # SIGTERM during loading would wait for the whole load (torch, the model, the JVM) before exiting.
        # Kept (idle) afterwards: the thread that started the JVM stays alive, as it did before.
        self._loader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="radcot-load")
        try:
            self.expander = await asyncio.get_running_loop().run_in_executor(self._loader, self.load)
            if on_loaded is not None:
                on_loaded()  # on the event loop's thread (the main one under uvicorn.run)
            self.metrics.loaded.set(1)
            logger.info("student loaded: %r", self.expander)
        except Exception as e:  # noqa: BLE001 - reported on /health and to the CLI
            self.load_error = f"{type(e).__name__}: {e}"
            logger.error("could not load the student: %s", self.load_error)
            if on_error is not None:
                on_error(self.load_error)

    def ready(self) -> None:
        if self.expander is None:
            why = self.load_error or "the student is still loading"
            raise HTTPProblem(503, why, headers={"Retry-After": "5"})

    async def expansions(self, texts: list[str], formula: str | None) -> list[Any]:
        """Expansions of ``texts`` (cache first, the rest through the batcher, each distinct text once)."""
        self.ready()
        cots: dict[str, str] = {}
        for t in texts:
            hit = self.cache.get(t)
            if hit is not None:
                cots[t] = hit
        self.metrics.cache(hits=len([t for t in texts if t in cots]), misses=len([t for t in texts if t not in cots]))
        todo = list(dict.fromkeys(t for t in texts if t not in cots))
        if todo:
            try:
                new = await self.batcher.submit(todo)
            except QueueFull as e:
                raise HTTPProblem(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
            for t, c in zip(todo, new):
                cots[t] = c
                self.cache.put(t, c)
        return [self.expander.apply(t, cots[t], formula) for t in texts]


def _routes(app: FastAPI, service: Service) -> None:
    settings = service.settings

    @app.post("/v1/expand")
    async def expand(request: Request):
        req = parse(ExpandRequest, await read_body(request, settings.max_body_bytes))
        check_limits([(f"queries.{i}.text", q.text) for i, q in enumerate(req.queries)], settings)
        exps = await service.expansions([q.text for q in req.queries], req.formula)
        return {"results": [{"id": q.id, **e.to_dict()} for q, e in zip(req.queries, exps)]}

    @app.post("/v1/search")
    async def search(request: Request):
        req = parse(SearchRequest, await read_body(request, settings.max_body_bytes))
        check_limits([("query", req.query)], settings)
        if req.k > settings.max_k:
            raise HTTPProblem(400, f"k={req.k} is over the limit of {settings.max_k} (--max-k)", field="k")
        service.ready()
        if service.expander.retriever is None:
            raise HTTPProblem(400, "this service has no index: start it with --index DIR to search", field="query")
        (exp,) = await service.expansions([req.query], req.formula)
        hits = await asyncio.to_thread(service.expander.search, exp.expanded, req.k)
        return {**exp.to_dict(), "hits": [{"docid": h.doc_id, "score": h.score, "rank": r}
                                          for r, h in enumerate(hits, 1)]}

    @app.get("/health")
    async def health():
        if service.expander is None:
            body = {"status": "failed" if service.load_error else "loading"}
            if service.load_error:
                body["error"] = service.load_error
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return {"status": "ok", "student": repr(service.expander)}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)


def batcher_lifespan(batcher: Batcher, background: Callable[[], Any] | None = None):
    """A FastAPI lifespan shared by both servers: start ``batcher`` (and ``background()``, a coroutine run as a
    task, e.g. loading the model); on shutdown answer every queued request first, then cancel the task."""

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        task = asyncio.create_task(background()) if background is not None else None
        yield
        await batcher.stop()  # every queued request is answered first (graceful drain)
        if task is not None and not task.done():
            task.cancel()

    return lifespan


def create_app(load: Callable[[], Any], settings: ServeSettings | None = None,
               on_load_error: Callable[[str], None] | None = None,
               on_loaded: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app; ``load()`` (run in a thread after start-up) returns the :class:`Expander`.

    ``/health`` answers 503 until ``load()`` has returned (warm the expander up inside it: the first
    search opens the index). ``on_loaded()`` / ``on_load_error(message)`` are called after it.

    Example:
        >>> app = create_app(lambda: Expander.load("runs/student", index="idx"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    metrics = Metrics(PATHS)
    service = Service(settings, load, metrics)
    lifespan = batcher_lifespan(service.batcher, lambda: service.load_model(on_load_error, on_loaded))
    app = FastAPI(title="radcot", summary="live RADCoT query expansion", lifespan=lifespan)
    app.state.service = service
    _routes(app, service)
    install_guard(app, settings, metrics)
    return app


def install_guard(app: FastAPI, settings: Any, metrics: Metrics) -> None:
    """The plumbing both services share: :class:`HTTPProblem` answers, quiet client disconnects, :class:`Guard`."""

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        return exc.response()

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        logger.info("client went away while sending %s", request.url.path)
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"

    app.add_middleware(Guard, settings=settings, metrics=metrics)


__all__ = ["Guard", "HTTPProblem", "ServeSettings", "create_app", "install_guard", "read_body"]
