"""The HTTP service behind ``radcot teacher-serve``: an OpenAI-compatible API on the ``radcot serve`` stack.

FastAPI on uvicorn, the same :class:`~radcot.serving.batcher.Batcher`, :class:`~radcot.serving.app.Guard`
(API key, body limit, request metrics) and Prometheus metrics as ``radcot serve``. Endpoints (JSON, as in
the OpenAI API; each also without the ``/v1`` prefix):

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: one completion per request; concurrent
  requests share forward passes (up to ``batch_size`` inputs with the same generation parameters, the
  first waiting at most ``batch_wait_ms`` for company). ``stream=true`` and ``n > 1`` are refused (400).
- ``GET /v1/models``: the one served model. ``GET /health``: ``{"status": "ok", "model"}``.
  ``GET /metrics``: Prometheus text.

Errors are OpenAI's shape, ``{"error": {"message", "type", "code"}}`` (``code`` is the HTTP status, as in
``radcot serve``'s errors): a bad request 400, an unknown model or route 404, a body over
``max_body_bytes`` 413, a full queue 503 with ``Retry-After``, a missing/wrong API key 401, a failed
generation 500.

Example:
    >>> app = create_teacher_app(HFBackend(), TeacherServeSettings(batch_size=8))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from radcot.serving.app import HTTPProblem, batcher_lifespan, install_guard, read_body
from radcot.serving.batcher import Batcher, QueueFull
from radcot.serving.metrics import Metrics
from radcot.teacher.base import Generation, GenerationParams

logger = logging.getLogger("radcot.teacher.serve")

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
COMPLETION_PATHS = ("/v1/completions", "/completions")
PATHS = (*CHAT_PATHS, *COMPLETION_PATHS, "/v1/models", "/models", "/health", "/v1/health", "/metrics")


@dataclass
class TeacherServeSettings:
    """What ``radcot teacher-serve`` passes to :func:`create_teacher_app`.

    Args:
        model_name: the name clients send as ``model`` (None: the backend's ``model_name``).
        batch_size: most inputs per forward pass.
        batch_wait_ms: how long the first queued request waits for others to join its batch.
        max_queue: most requests waiting; more get 503 with ``Retry-After``.
        max_body_bytes: request body limit (413 over it).
        max_tokens_limit: reject requests asking for more new tokens than this.
        default_max_tokens: used when a request gives no ``max_tokens``.
        api_key: require this key (``Authorization: Bearer`` or ``X-API-Key``); None: no key.
    """

    model_name: str | None = None
    batch_size: int = 8
    batch_wait_ms: float = 20.0
    max_queue: int = 1024
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 4096
    default_max_tokens: int = 150
    api_key: str | None = None

    def __post_init__(self) -> None:
        from radcot.teacher._checks import check_float, check_int, check_str

        where = "TeacherServeSettings"
        check_str(where, "model_name", self.model_name, optional=True, nonempty=True)
        for name in ("batch_size", "max_queue", "max_body_bytes", "max_tokens_limit", "default_max_tokens"):
            check_int(where, name, getattr(self, name), minimum=1)
        check_float(where, "batch_wait_ms", self.batch_wait_ms, minimum=0.0)
        check_str(where, "api_key", self.api_key, optional=True, nonempty=True)


def _bad(message: str, status: int = 400, type: str = "invalid_request_error") -> HTTPProblem:  # noqa: A002
    return HTTPProblem(status, message, type=type)


# ------------------------------------------------------------------------------------- OpenAI requests


def _field(body: dict[str, Any], name: str, cast: type, default: Any) -> Any:
    """``body[name]`` as ``cast`` (``default`` when absent or null); 400 naming the field otherwise."""
    value = body.get(name)
    if value is None:
        return default
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise _bad(f"{name}={value!r} is not a valid {cast.__name__}") from None


def params_from(body: dict[str, Any], default_max_tokens: int) -> GenerationParams:
    """OpenAI request fields -> :class:`GenerationParams` (400 on bad values)."""
    if body.get("stream"):
        raise _bad("stream=true is not supported by radcot teacher-serve; send stream=false")
    if _field(body, "n", int, 1) != 1:
        raise _bad("n > 1 is not supported by radcot teacher-serve; send one request per sample")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    tokens_field = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    try:
        return GenerationParams(
            max_tokens=_field(body, tokens_field, int, None) or default_max_tokens,
            temperature=_field(body, "temperature", float, 1.0),  # the OpenAI API's defaults
            top_p=_field(body, "top_p", float, 1.0),
            stop=tuple(str(s) for s in stop),
            seed=_field(body, "seed", int, None),
        )
    except (TypeError, ValueError) as e:  # GenerationParams' own checks (ranges)
        raise _bad(f"bad generation parameter: {e}") from None


def json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise)."""
    try:
        body = json.loads(raw.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"request body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def input_text(backend: Any, body: dict[str, Any], chat: bool) -> str:
    """The model input of a request: chat messages through the backend's chat template, or the prompt."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages
        ):
            raise _bad('"messages" must be a non-empty list of {"role", "content": string}')
        if getattr(backend, "chat", True):
            return backend.format_chat([{"role": m["role"], "content": m["content"]} for m in messages])
        return "\n".join(m["content"] for m in messages)  # a base model: plain concatenation
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad('"prompt" must be a string (one prompt per request)')
    return prompt


def completion(gen: Generation, chat: bool, model_name: str) -> dict[str, Any]:
    """The OpenAI response object for one generation."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": gen.text}
    else:
        choice["text"] = gen.text
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [choice],
        "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                  "total_tokens": gen.prompt_tokens + gen.completion_tokens},
    }


# --------------------------------------------------------------------------------------------- service


class TeacherService:
    """The backend behind the routes, its batcher and counters (``requests``, ``batches``: forward passes)."""

    def __init__(self, backend: Any, settings: TeacherServeSettings, metrics: Metrics):
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self.model_name = settings.model_name or backend.model_name
        self.requests = 0
        self.batches = 0
        self.batcher = Batcher(self._generate, max_batch=settings.batch_size, wait_ms=settings.batch_wait_ms,
                               max_queue=settings.max_queue, observe=metrics.batch)
        metrics.queue_depth.set_function(lambda: self.batcher.waiting)
        metrics.loaded.set(1)

    def _generate(self, jobs: list[tuple[str, GenerationParams]]) -> list[Generation | Exception]:
        """One forward pass per distinct parameter set; a failed pass fails only its own requests."""
        groups: dict[GenerationParams, list[int]] = {}
        for i, (_, params) in enumerate(jobs):
            groups.setdefault(params, []).append(i)
        out: list[Generation | Exception] = [None] * len(jobs)  # type: ignore[list-item]
        for params, idx in groups.items():
            try:
                gens = self.backend.complete([jobs[i][0] for i in idx], params)
                self.batches += 1
            except Exception as e:  # noqa: BLE001 - answered as HTTP 500 to each of these requests
                logger.exception("generation of %d inputs failed", len(idx))
                gens = [e] * len(idx)
            for i, g in zip(idx, gens):
                out[i] = g
        return out

    async def generate(self, text: str, params: GenerationParams) -> Generation:
        """One completion through the batcher (503 when the queue is full, 500 when generation fails)."""
        self.requests += 1
        try:
            (gen,) = await self.batcher.submit([(text, params)])
        except QueueFull as e:
            raise HTTPProblem(503, str(e), headers={"Retry-After": str(e.retry_after)}, type="server_error") from None
        if isinstance(gen, Exception):
            raise HTTPProblem(500, f"generation failed: {type(gen).__name__}: {gen}", type="server_error")
        return gen


def _routes(app: FastAPI, service: TeacherService) -> None:
    settings = service.settings

    async def complete(request: Request, chat: bool) -> dict[str, Any]:
        body = json_object(await read_body(request, settings.max_body_bytes))
        model = body.get("model")
        if model not in (None, "", service.model_name):
            raise _bad(f"model {model!r} is not served here; this server serves {service.model_name!r}",
                       404, "model_not_found")
        params = params_from(body, settings.default_max_tokens)
        if params.max_tokens > settings.max_tokens_limit:
            raise _bad(f"max_tokens={params.max_tokens} exceeds this server's limit {settings.max_tokens_limit}")
        gen = await service.generate(input_text(service.backend, body, chat), params)
        return completion(gen, chat, service.model_name)

    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    async def completions(request: Request):
        return await complete(request, chat=False)

    async def models():
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "created": 0,
                                            "owned_by": "radcot"}]}

    async def health():
        return {"status": "ok", "model": service.model_name}

    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    for path in CHAT_PATHS:
        app.add_api_route(path, chat_completions, methods=["POST"])
    for path in COMPLETION_PATHS:
        app.add_api_route(path, completions, methods=["POST"])
    for path, fn in (("/v1/models", models), ("/models", models), ("/health", health), ("/v1/health", health),
                     ("/metrics", metrics)):
        app.add_api_route(path, fn, methods=["GET"])


def create_teacher_app(backend: Any, settings: TeacherServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``backend`` (loaded: ``complete``, ``model_name``; ``format_chat`` for chat).

    ``app.state.service`` is the :class:`TeacherService` (its ``requests`` and ``batches`` counters).
    Shutting the app down answers every queued request first.
    """
    settings = settings or TeacherServeSettings()
    if not isinstance(settings, TeacherServeSettings):
        raise TypeError(f"create_teacher_app: settings must be a TeacherServeSettings, got {type(settings).__name__}")
    for attr in ("complete", "model_name"):
        if not hasattr(backend, attr):
            raise TypeError(f"create_teacher_app: backend {type(backend).__name__} has no {attr!r}; serve an HFBackend "
                            f"or wrap a query-level backend in radcot.teacher.serve.PromptBackend")
    metrics = Metrics(PATHS)
    service = TeacherService(backend, settings, metrics)
    app = FastAPI(title="radcot teacher-serve", summary="an OpenAI-compatible teacher",
                  lifespan=batcher_lifespan(service.batcher), redirect_slashes=False)
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def _no_route(request: Request, exc: StarletteHTTPException):
        routes = "/v1/chat/completions or /v1/completions" if request.method == "POST" else "/v1/models"
        return _bad(f"no route {request.method} {request.url.path}; try {routes}", exc.status_code,
                    "not_found_error" if exc.status_code == 404 else "invalid_request_error").response()

    _routes(app, service)
    install_guard(app, settings, metrics)
    return app


__all__ = ["TeacherServeSettings", "TeacherService", "create_teacher_app"]
