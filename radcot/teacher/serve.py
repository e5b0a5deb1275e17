"""An OpenAI-compatible HTTP server around a local :class:`~radcot.teacher.hf.HFBackend` (or any backend).

``radcot teacher-serve`` lets one machine's model serve many ``radcot teach --backend openai``
workers. Endpoints (JSON, as in the OpenAI API): ``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /v1/models``, ``GET /health``. Requests are handled by threads and
queued to one generation thread that forms micro-batches (up to ``batch_size`` requests with the same
generation parameters, waiting at most ``batch_wait_s`` for company), so concurrent clients share
forward passes. Streaming and ``n > 1`` are not supported (HTTP 400 says so).

Any other teacher backend (``kb``, ``replay``...) is served through :class:`PromptBackend`, which reads
the query back out of the rendered prompt (e.g. ``radcot run --rehearse`` serves the demo world's ``kb``
teacher to the pipeline's ``openai`` backend).

Binds to 127.0.0.1 by default: there is no authentication.

Example:
    >>> from radcot.teacher.hf import HFBackend
    >>> server = TeacherServer(HFBackend(), port=0)  # doctest: +SKIP
    >>> server.start()  # serves in a background thread  # doctest: +SKIP
    >>> server.base_url  # doctest: +SKIP
    'http://127.0.0.1:43125/v1'
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from radcot.records import Query
from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem

logger = logging.getLogger("radcot.teacher.serve")


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code = status, code


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _params_from(body: dict[str, Any], default_max_tokens: int) -> GenerationParams:
    """OpenAI request fields -> :class:`GenerationParams` (400 on bad values)."""
    if body.get("stream"):
        raise _BadRequest("stream=true is not supported by radcot teacher-serve; send stream=false")
    if int(body.get("n", 1) or 1) != 1:
        raise _BadRequest("n > 1 is not supported by radcot teacher-serve; send one request per sample")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens")) or default_max_tokens
    try:
        return GenerationParams(
            max_tokens=int(max_tokens),
            temperature=float(_or(body.get("temperature"), 1.0)),  # the OpenAI API's defaults
            top_p=float(_or(body.get("top_p"), 1.0)),
            stop=tuple(str(s) for s in stop),
            seed=body.get("seed"),
        )
    except (TypeError, ValueError) as e:
        raise _BadRequest(f"bad generation parameter: {e}") from None


class PromptBackend:
    """Serve a query-level :class:`TeacherBackend` (``kb``, ``replay``...) behind the prompt-level server API.

    The server hands over rendered prompts; this adapter recovers each query by matching the prompt
    template (``{query}`` becomes the query; a prompt that does not match is used whole as the query)
    and asks the backend. Requests get ids ``serve-1``, ``serve-2``...: backends keyed by query id (replay)
    therefore need their ids in the prompt, which is why this suits text-keyed backends like ``kb``.

    Args:
        backend: the backend to serve.
        prompt: the prompt (a name or a template with ``{query}``) clients render (default ``radcot``).
    """

    chat = False  # chat messages are joined as plain text, then matched against the template

    def __init__(self, backend: TeacherBackend, prompt: str = "radcot"):
        import re

        from radcot.teacher.prompts import get_prompt

        self.backend = backend
        self.model_name = backend.model_name
        self.batch_size = getattr(backend, "batch_size", 1) or 1
        template = get_prompt(prompt).template.strip()
        pattern = re.escape(template).replace(re.escape("{examples}"), ".*?").replace(re.escape("{query}"), "(.*)", 1)
        self._pattern = re.compile(pattern, re.DOTALL)
        self._n = 0

    def query_of(self, text: str) -> str:
        """The query inside a rendered prompt (the whole text when the template does not match)."""
        m = self._pattern.fullmatch(text.strip())
        return m.group(1) if m else text

    def complete(self, texts: list[str], params: GenerationParams) -> list[Generation]:
        items = []
        for text in texts:
            self._n += 1
            items.append(TeachItem(Query(f"serve-{self._n}", self.query_of(text)), text))
        out = self.backend.generate(items, params)
        for g in out:
            if isinstance(g, TeacherError):
                raise g
        return out

    def close(self) -> None:
        self.backend.close()


class TeacherServer:
    """Serve ``backend`` (an :class:`HFBackend`) over HTTP with an OpenAI-compatible API.

    Args:
        backend: the loaded model (``format_chat``, ``format_prompt`` and ``complete`` are used).
        host: interface to bind (default 127.0.0.1: there is no authentication).
        port: TCP port (0 picks a free one; see :attr:`port` after construction).
        model_name: the name clients send as ``model`` (default: the backend's model name).
        batch_size: most requests per forward pass (default: the backend's ``batch_size``).
        batch_wait_s: how long the first queued request waits for others to join its batch.
        max_tokens_limit: reject requests asking for more new tokens than this.
        default_max_tokens: used when a request gives no ``max_tokens``.
    """

    def __init__(
        self,
        backend,
        host: str = "127.0.0.1",
        port: int = 8000,
        model_name: str | None = None,
        batch_size: int | None = None,
        batch_wait_s: float = 0.02,
        max_tokens_limit: int = 4096,
        default_max_tokens: int = 150,
    ):
        self.backend = backend
        self.model_name = model_name or backend.model_name
        self.batch_size = int(batch_size or getattr(backend, "batch_size", 1) or 1)
        self.batch_wait_s = float(batch_wait_s)
        self.max_tokens_limit = int(max_tokens_limit)
        self.default_max_tokens = int(default_max_tokens)
        self._queue: "queue.Queue[tuple[str, GenerationParams, Future] | None]" = queue.Queue()
        self._stop = threading.Event()
        self.requests = 0
        self.batches = 0
        server = self

        class Handler(_Handler):
            srv = server

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._worker = threading.Thread(target=self._work, name="radcot-serve-gen", daemon=True)
        self._http_thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, the value for ``--base-url``."""
        return f"http://{self.host}:{self.port}/v1"

    # -- generation thread (micro-batching) -----------------------------------------------------

    def submit(self, text: str, params: GenerationParams) -> Future:
        """Queue one already-formatted model input; the future resolves to a :class:`Generation`."""
        fut: Future = Future()
        self._queue.put((text, params, fut))
        return fut

    def _work(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=max(0.0, left)) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._stop.set()
                    break
                batch.append(nxt)
            groups: dict[GenerationParams, list[tuple[str, GenerationParams, Future]]] = {}
            for job in batch:
                groups.setdefault(job[1], []).append(job)
            for params, jobs in groups.items():
                live = [j for j in jobs if j[2].set_running_or_notify_cancel()]
                if not live:
                    continue
                try:
                    gens = self.backend.complete([j[0] for j in live], params)
                    self.batches += 1
                except Exception as e:  # noqa: BLE001 - answered as HTTP 500 to each request
                    for j in live:
                        j[2].set_exception(e)
                    continue
                for j, g in zip(live, gens):
                    j[2].set_result(g)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "TeacherServer":
        """Start the generation thread and serve HTTP in a background thread."""
        self._worker.start()
        self._http_thread = threading.Thread(target=self.httpd.serve_forever, name="radcot-serve-http", daemon=True)
        self._http_thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`shutdown` (or Ctrl-C)."""
        if not self._worker.is_alive():
            self._worker.start()
        try:
            self.httpd.serve_forever()
        finally:
            self._stop_worker()

    def _stop_worker(self) -> None:
        self._stop.set()
        self._queue.put(None)

    def shutdown(self) -> None:
        """Stop serving (safe from another thread) and release the socket."""
        self._stop_worker()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown()


class _Handler(BaseHTTPRequestHandler):
    srv: TeacherServer
    protocol_version = "HTTP/1.1"
    server_version = "radcot-teacher-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, obj: Any) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": code, "code": status}})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [
                {"id": self.srv.model_name, "object": "model", "created": 0, "owned_by": "radcot"}]})
        elif path in ("/health", "/v1/health"):
            self._send(200, {"status": "ok", "model": self.srv.model_name})
        else:
            self._error(404, f"no route GET {self.path}; try /v1/models", "not_found_error")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?")[0].rstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if path not in ("/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions"):
                raise _BadRequest(f"no route POST {self.path}; use /v1/chat/completions or /v1/completions",
                                  404, "not_found_error")
            try:
                body = json.loads(raw.decode("utf-8") or "null")
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _BadRequest(f"request body is not JSON ({e})") from None
            if not isinstance(body, dict):
                raise _BadRequest("request body must be a JSON object")
            model = body.get("model")
            if model not in (None, "", self.srv.model_name):
                raise _BadRequest(f"model {model!r} is not served here; this server serves {self.srv.model_name!r}",
                                  404, "model_not_found")
            params = _params_from(body, self.srv.default_max_tokens)
            if params.max_tokens > self.srv.max_tokens_limit:
                raise _BadRequest(f"max_tokens={params.max_tokens} exceeds this server's limit {self.srv.max_tokens_limit}")
            chat = path.endswith("chat/completions")
            text = self._input_text(body, chat)
        except _BadRequest as e:
            self._error(e.status, str(e), e.code)
            return
        self.srv.requests += 1
        try:
            gen: Generation = self.srv.submit(text, params).result()
        except Exception as e:  # noqa: BLE001
            logger.exception("generation failed")
            self._error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
            return
        self._send(200, self._response(gen, chat))

    def _input_text(self, body: dict, chat: bool) -> str:
        be = self.srv.backend
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages
            ):
                raise _BadRequest('"messages" must be a non-empty list of {"role", "content": string}')
            if getattr(be, "chat", True):
                return be.format_chat([{"role": m["role"], "content": m["content"]} for m in messages])
            return "\n".join(m["content"] for m in messages)  # a base model: plain concatenation
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _BadRequest('"prompt" must be a string (one prompt per request)')
        return prompt

    def _response(self, gen: Generation, chat: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": gen.text}
        else:
            choice["text"] = gen.text
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.srv.model_name,
            "choices": [choice],
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                      "total_tokens": gen.prompt_tokens + gen.completion_tokens},
        }


__all__ = ["PromptBackend", "TeacherServer"]
