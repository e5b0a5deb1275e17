"""The HTTP service behind ``radcot serve``: FastAPI on uvicorn, a dynamic batcher, an expansion cache, Prometheus.

API (JSON; the names are stable; request fields are strictly typed: ``"k": "10"`` or ``"k": true`` is a 422):

- ``POST /v1/expand`` ``{"queries": [{"id": "q1", "text": "..."}], "formula": "radcot"?, "deadline_ms": 200?}``
  -> ``{"results": [{"id", "query", "cot", "expanded", "fallback", "cached"}]}`` in request order.
- ``POST /v1/search`` ``{"query": "...", "k": 10, "formula"?, "deadline_ms"?}`` ->
  ``{"query", "cot", "expanded", "fallback", "cached", "hits": [{"docid", "score", "rank"}]}``.
- ``GET /health``: 200 ``{"status": "ok", "student": FINGERPRINT, "pid"}`` once the student is loaded, 503 before.
- ``GET /v1/info``: what is served (:class:`~radcot.serving.expander.ServedSettings`) and the service's limits.
- ``GET /metrics``: Prometheus text (requests, latency, batch sizes, queue depth, cache hits, fallbacks).

Deadlines: with ``--deadline-ms`` (or a request's ``deadline_ms``) every answer comes within the deadline,
counted from the request's arrival. A query the student cannot expand in time is answered unexpanded:
``"expanded"`` is the query, ``"fallback": "deadline"`` (``"overloaded"`` when the queue is full;
``"no_cot"`` when the student wrote nothing usable); its generation goes on in the background when the
service is otherwise idle, so the cache has it next time. ``radcot_fallbacks_total{reason}`` counts them.

Queries are cached per served student (see :mod:`radcot.serving.cache`); the same query asked by several
requests at once is generated once. A request whose client goes away before its batch runs is dropped.

Errors are ``{"error": {"code", "message", "field"?}}``: malformed JSON 400; a missing/ill-typed field 422
naming it (``queries.0.text``); a body over ``max_body_bytes`` 413 (refused from its ``Content-Length``
before anything is read, or as soon as a chunked body passes the limit); a query over ``max_query_chars``
or more than ``max_queries`` queries 400 naming it; a full queue (without a deadline) or a student still
loading 503 with ``Retry-After``; a missing/wrong API key 401.

Why FastAPI + uvicorn rather than LitServe: the batching this service needs is a short asyncio queue
on the server's own event loop (a request carries several queries, split across batches by count, with
deadlines and cache fills), with the model in-process and shared with ``Expander`` users; LitServe's model
runs in separate worker processes fed through queues (pickling every request) and its batching unit is one
request. FastAPI and uvicorn are already the stack here, and the error contract above (413 before reading,
422 naming the field) is plain FastAPI/ASGI code.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from radcot.expansion import FORMULAS, Expansion
from radcot.serving.batcher import Batcher, Gone, Job, Late, QueueFull
from radcot.serving.cache import normalize_query
from radcot.serving.metrics import Metrics

logger = logging.getLogger("radcot.serving")

Formula = Literal[tuple(FORMULAS)]  # type: ignore[valid-type] - the registry's names

#: the routes that get their own label in the request metrics
PATHS = ("/v1/expand", "/v1/search", "/v1/info", "/health", "/metrics")
#: the longest deadline a request may ask for (one hour)
MAX_DEADLINE_MS = 3_600_000


@dataclass
class ServeSettings:
    """What ``radcot serve`` passes to :func:`create_app` (every limit has a flag of the same name)."""

    formula: str | None = None  # None: the student's recorded formula
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    max_queue: int = 1024
    max_background: int = 1024
    deadline_ms: float | None = None
    max_body_bytes: int = 1 << 20
    max_query_chars: int = 1000
    max_queries: int = 256
    max_k: int = 1000
    api_key: str | None = None
    workers: int = 1
    cache: str = "off"  # what the expander's cache is (shown by /v1/info)

    def public(self) -> dict[str, Any]:
        """The settings /v1/info shows (never the API key)."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"} | {"api_key": bool(self.api_key)}


# ----------------------------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class QueryIn(_Strict):
    id: str
    text: str


Deadline = Optional[float]


class ExpandRequest(_Strict):
    queries: list[QueryIn] = Field(min_length=1)
    formula: Optional[Formula] = None
    deadline_ms: Deadline = Field(None, gt=0, le=MAX_DEADLINE_MS, allow_inf_nan=False)


class SearchRequest(_Strict):
    query: str
    k: int = Field(10, ge=1)
    formula: Optional[Formula] = None
    deadline_ms: Deadline = Field(None, gt=0, le=MAX_DEADLINE_MS, allow_inf_nan=False)


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
    """ASGI middleware: API key, the body-size limit from ``Content-Length``, request metrics, the worker header.

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
        scope.setdefault("state", {})["arrived"] = t0  # deadlines count from here

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                worker = (b"x-radcot-worker", str(os.getpid()).encode())  # which worker answered (--workers N)
                message = {**message, "headers": [*message.get("headers", []), worker]}
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
    """The state behind the routes: the expander (once loaded), the batcher, the metrics, generations in flight."""

    def __init__(self, settings: ServeSettings, load: Callable[[], Any], metrics: Metrics):
        self.settings, self.load, self.metrics = settings, load, metrics
        self.expander: Any = None
        self.load_error: str | None = None
        self.batcher = Batcher(self._generate, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms,
                               max_queue=settings.max_queue, max_background=settings.max_background,
                               observe=metrics.batch, event=metrics.job_event, on_depth=metrics.queue_depth.set)
        self._inflight: dict[str, tuple[Job, int]] = {}  # normalised query -> (its job, its index there)
        self.search_s = 0.0  # running estimate of a search's seconds (/v1/search keeps it out of the deadline)

    def _generate(self, keys: list[str]) -> list[str]:
        return self.expander.generate(keys)  # generated and cached, in the batcher's worker thread

    async def load_model(self, on_error: Callable[[str], None] | None = None,
                         on_loaded: Callable[[], None] | None = None) -> None:
        # its own thread, not the loop's default executor: asyncio.run() joins that one on the way out, so a
        # SIGTERM during loading would wait for the whole load (torch, the model, the JVM) before exiting.
        # Kept (idle) afterwards: the thread that started the JVM stays alive, as it did before.
        self._loader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="radcot-load")
        try:
            self.expander = await asyncio.get_running_loop().run_in_executor(self._loader, self.load)
            seconds = getattr(self.expander, "warm_up_s", None)
            if seconds:
                self.batcher.cost.observe(1, seconds)  # deadlines can be judged from the first request on
            # the model, tokenizer and libraries loaded so far never become garbage: out of the collector's sight,
            # a full collection stops the event loop for milliseconds instead of up to ~280 ms (measured under
            # load), which would break deadlines
            gc.freeze()
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

    def deadline(self, request: Request, deadline_ms: float | None) -> float | None:
        """When the request's expansion must be decided (``perf_counter`` time): its own ``deadline_ms`` or
        ``--deadline-ms`` from its arrival, less :func:`answer_margin` to write the answer."""
        ms = deadline_ms if deadline_ms is not None else self.settings.deadline_ms
        if ms is None:
            return None
        arrived = request.scope.get("state", {}).get("arrived", time.perf_counter())
        return arrived + ms / 1000.0 - answer_margin(ms / 1000.0)

    async def expansions(self, texts: list[str], formula: str | None, deadline: float | None = None,
                         gone: asyncio.Future | None = None) -> list[tuple[Expansion, bool]]:
        """``(expansion, cached)`` per text: the cache first, then one generation per distinct query (shared
        with other requests for it), each unexpanded with its reason when it cannot come by ``deadline``."""
        self.ready()
        keys = [normalize_query(t) for t in texts]
        distinct = list(dict.fromkeys(keys))
        cots = self.expander.lookup(distinct)
        cached = set(cots)
        self.metrics.cache(hits=sum(k in cached for k in keys), misses=sum(k not in cached for k in keys))
        reasons: dict[str, str] = {}
        todo = [k for k in distinct if k not in cots]
        if todo:
            await self._generated(todo, deadline, gone, cots, reasons)
        out = []
        for t, k in zip(texts, keys):
            exp = Expansion.unexpanded(t, reasons[k]) if k in reasons else self.expander.apply(t, cots[k], formula)
            if exp.fallback is not None:
                self.metrics.fallback(exp.fallback)
            out.append((exp, k in cached))
        return out

    async def _generated(self, keys: list[str], deadline: float | None, gone: asyncio.Future | None,
                         cots: dict[str, str], reasons: dict[str, str]) -> None:
        """Fill ``cots`` (or ``reasons``) for ``keys`` from the generations they join or queue."""
        waits = self._join(keys, deadline)
        joined = {k for pairs in waits.values() for k, _ in pairs}
        new = [k for k in keys if k not in joined]
        if new:
            try:
                job = self.batcher.enqueue(new, deadline)
            except QueueFull as e:
                if deadline is None:
                    for job in waits:
                        self.batcher.release(job)
                    raise HTTPProblem(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
                reasons.update((k, "overloaded") for k in new)
            else:
                self._track(job, new)
                waits[job] = list(zip(new, range(len(new))))
        outcomes = await asyncio.gather(*(self.batcher.wait(job, deadline, gone) for job in waits),
                                        return_exceptions=True)
        for (job, pairs), res in zip(waits.items(), outcomes):
            if isinstance(res, Gone):
                raise ClientDisconnect()
            if isinstance(res, Late):
                reasons.update((k, "deadline") for k, _ in pairs)
            elif isinstance(res, BaseException):
                raise res
            else:
                cots.update((k, res[i]) for k, i in pairs)

    def _join(self, keys: list[str], deadline: float | None) -> dict[Job, list[tuple[str, int]]]:
        """The queued or running jobs that already generate some of ``keys`` (now waited for once more)."""
        waits: dict[Job, list[tuple[str, int]]] = {}
        for k in keys:
            held = self._inflight.get(k)
            if held is None:
                continue
            job, i = held
            if job in waits or self.batcher.attach(job, deadline):
                waits.setdefault(job, []).append((k, i))
                self.metrics.shared.inc()
        return waits

    def _track(self, job: Job, keys: list[str]) -> None:
        for i, k in enumerate(keys):
            self._inflight[k] = (job, i)

        def forget(_):
            for k in keys:
                if self._inflight.get(k, (None,))[0] is job:
                    del self._inflight[k]

        job.future.add_done_callback(forget)

    async def search(self, text: str, k: int) -> list:
        """The hits of ``text`` (in a thread), keeping :attr:`search_s` (an exponential average) up to date."""
        t0 = time.perf_counter()
        hits = await asyncio.to_thread(self.expander.search, text, k)
        self.search_s = 0.8 * self.search_s + 0.2 * (time.perf_counter() - t0) if self.search_s else \
            time.perf_counter() - t0
        return hits


def answer_margin(budget_s: float) -> float:
    """Seconds kept from a deadline to build and send the answer after the decision: 5 ms + 2.5% of the
    budget, at most 20 ms (10 ms of a 200 ms deadline).

    Example:
        >>> round(answer_margin(0.2), 4)
        0.01
    """
    return min(0.02, 0.005 + 0.025 * budget_s)


@asynccontextmanager
async def watch_disconnect(request: Request):
    """A future that is set when the client goes away while its request is answered (its body fully read)."""
    gone = asyncio.get_running_loop().create_future()

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                if not gone.done():
                    gone.set_result(True)
                return

    task = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        task.cancel()


def _result(exp: Expansion, cached: bool) -> dict[str, Any]:
    return {**exp.to_dict(), "cached": cached}


def _routes(app: FastAPI, service: Service) -> None:
    settings = service.settings

    @app.post("/v1/expand")
    async def expand(request: Request):
        req = parse(ExpandRequest, await read_body(request, settings.max_body_bytes))
        check_limits([(f"queries.{i}.text", q.text) for i, q in enumerate(req.queries)], settings)
        deadline = service.deadline(request, req.deadline_ms)
        async with watch_disconnect(request) as gone:
            exps = await service.expansions([q.text for q in req.queries], req.formula, deadline, gone)
        return {"results": [{"id": q.id, **_result(e, c)} for q, (e, c) in zip(req.queries, exps)]}

    @app.post("/v1/search")
    async def search(request: Request):
        req = parse(SearchRequest, await read_body(request, settings.max_body_bytes))
        check_limits([("query", req.query)], settings)
        if req.k > settings.max_k:
            raise HTTPProblem(400, f"k={req.k} is over the limit of {settings.max_k} (--max-k)", field="k")
        service.ready()
        if service.expander.retriever is None:
            raise HTTPProblem(400, "this service has no index: start it with --index DIR to search", field="query")
        deadline = service.deadline(request, req.deadline_ms)
        async with watch_disconnect(request) as gone:
            (exp, cached), = await service.expansions([req.query], req.formula,
                                                      None if deadline is None else deadline - service.search_s, gone)
        hits = await service.search(exp.expanded, req.k)
        return {**_result(exp, cached), "hits": [{"docid": h.doc_id, "score": h.score, "rank": r}
                                                 for r, h in enumerate(hits, 1)]}

    @app.get("/health")
    async def health():
        if service.expander is None:
            body = {"status": "failed" if service.load_error else "loading", "pid": os.getpid()}
            if service.load_error:
                body["error"] = service.load_error
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return {"status": "ok", "student": service.expander.settings.fingerprint, "pid": os.getpid()}

    @app.get("/v1/info")
    async def info():
        service.ready()
        return {"student": service.expander.settings.to_dict(), "serve": settings.public(), "pid": os.getpid()}

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


__all__ = ["Guard", "HTTPProblem", "ServeSettings", "create_app", "install_guard", "read_body", "watch_disconnect"]
