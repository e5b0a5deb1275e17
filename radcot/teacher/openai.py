"""Teacher backend for any OpenAI-compatible HTTP endpoint (OpenAI, vLLM, llama.cpp, TGI, teacher-serve).

Requests go through one thread-safe ``httpx.Client``; the runner supplies the concurrency (one query
per call, ``concurrency`` calls in flight). Each query is retried with exponential backoff and full
jitter on 408/409/429/5xx, timeouts, connection errors and malformed JSON, honouring ``Retry-After``;
each retry is one WARNING log line (attempt i/n, the reason, the wait). After ``max_attempts`` the query
raises :class:`TeacherError` with the last cause; the runner records it as failed and the next run
retries it. Other 4xx (bad model name, bad key) fail at once.

An endpoint that never answers is not retried query by query: after ``max_connect_failures`` connection
failures in a row (refused, unknown host, connect timeout) before any HTTP answer, the backend raises
:class:`TeacherUnreachable` (URL, error, fix) for that query and every later one at once, and the runner
stops. Once the endpoint has answered, connection failures are transient and retried as above.

The API key is read from an environment variable (``api_key_env``); it is sent only in the
``Authorization`` header and never logged or written.

Example:
    >>> from radcot.teacher import get_backend
    >>> be = get_backend("openai", base_url="http://127.0.0.1:8000/v1", model="smollm2")  # doctest: +SKIP
"""
from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from typing import Any, Sequence
from urllib.parse import urlparse

from radcot.records import RadcotError
from radcot.teacher._checks import check_float, check_int, check_str
from radcot.teacher.base import (
    Generation,
    GenerationParams,
    TeacherBackend,
    TeacherError,
    TeacherUnreachable,
    TeachItem,
)

logger = logging.getLogger("radcot.teacher.openai")

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


#: connection failures in a row, before the endpoint has ever answered, after which a run stops
DEFAULT_MAX_CONNECT_FAILURES = 3


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _ConnectFailed(_Retryable):
    """No connection at all (refused, unknown host, connect timeout): the server may not be there."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad.

    Example:
        >>> parse_retry_after("3")
        3.0
    """
    check_str("parse_retry_after", "value", value, optional=True)
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _check_init_args(model, base_url, api_key_env, api, system, timeout, max_attempts, backoff_base, backoff_max,
                     max_retry_after, concurrency, extra_body, max_connect_failures) -> None:
    """:class:`OpenAIBackend`'s arguments have the right types and ranges (before any connection)."""
    where = "OpenAIBackend"
    check_str(where, "model", model, optional=True)
    check_str(where, "base_url", base_url, optional=True)
    check_str(where, "api_key_env", api_key_env, optional=True)
    if api not in ("chat", "completions"):
        raise ValueError(f"{where}: api must be 'chat' or 'completions', got {api!r}")
    check_str(where, "system", system, optional=True)
    check_float(where, "timeout", timeout, positive=True)
    check_int(where, "max_attempts", max_attempts, minimum=1)
    check_float(where, "backoff_base", backoff_base, minimum=0.0)
    check_float(where, "backoff_max", backoff_max, minimum=0.0)
    check_float(where, "max_retry_after", max_retry_after, minimum=0.0)
    check_int(where, "concurrency", concurrency, minimum=1)
    check_int(where, "max_connect_failures", max_connect_failures, minimum=1)
    if extra_body is not None and not isinstance(extra_body, dict):
        raise TypeError(f"{where}: extra_body must be a dict of request fields or None, got "
                        f"{type(extra_body).__name__}")


class OpenAIBackend(TeacherBackend):
    """Ask an OpenAI-compatible server (``/chat/completions`` or ``/completions``).

    Args:
        model: the model name sent to the server; ``None`` asks ``GET /models`` and uses the only one served.
        base_url: the API root including ``/v1`` (default ``https://api.openai.com/v1``).
        api_key_env: environment variable holding the key (optional for local servers).
        api: ``"chat"`` (prompt as one user message) or ``"completions"`` (raw prompt).
        system: optional system message for the chat API.
        timeout: seconds per request (read/write/pool; connect is at most 10 s).
        max_attempts: tries per query before it is recorded as failed.
        backoff_base, backoff_max: exponential backoff ``min(max, base * 2**k)`` with full jitter.
        max_retry_after: cap on a server's ``Retry-After`` (seconds).
        concurrency: HTTP connection pool size: requests this backend keeps in flight at most. The pipeline
            passes ``teacher.concurrency`` here (and to the runner), ``radcot teach`` its ``--concurrency``.
        extra_body: fields added to every request body (e.g. ``{"top_k": 20}`` for vLLM).
        max_connect_failures: connection failures in a row before the endpoint has ever answered after which
            every query fails at once with :class:`TeacherUnreachable` (the run stops).

    Example:
        >>> be = OpenAIBackend(model="gpt-3.5-turbo-instruct", api="completions")  # doctest: +SKIP
    """

    name = "openai"
    batch_size = 1

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api: str = "chat",
        system: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retry_after: float = 300.0,
        concurrency: int = 8,
        extra_body: dict[str, Any] | None = None,
        max_connect_failures: int = DEFAULT_MAX_CONNECT_FAILURES,
    ):
        from radcot._deps import require

        _check_init_args(model, base_url, api_key_env, api, system, timeout, max_attempts, backoff_base, backoff_max,
                         max_retry_after, concurrency, extra_body, max_connect_failures)
        httpx = require("httpx", "the openai teacher backend", extra="teacher")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RadcotError(f"--base-url {self.base_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        self.api, self.system, self.timeout = api, system, float(timeout)
        self.max_attempts, self.backoff_base, self.backoff_max = max_attempts, float(backoff_base), float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.max_connect_failures = max_connect_failures
        self.extra_body = dict(extra_body or {})
        self.api_key_env = api_key_env
        self._httpx = httpx
        self.concurrency = concurrency
        self._client = httpx.Client(
            headers=self._headers(parsed.hostname),
            timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._lock = threading.Lock()
        self.retries = 0  # retried requests over the backend's life (all queries)
        self._answered = False  # the endpoint has sent an HTTP answer (any status) at least once
        self._connect_failures = 0  # connection failures in a row while it never answered
        self._unreachable: str | None = None  # the message, once the endpoint is known to be down
        self.model = model or self._discover_model()

    def _headers(self, hostname: str | None) -> dict[str, str]:
        """JSON headers, with ``Authorization`` when the key variable is set (required for api.openai.com)."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key and hostname == "api.openai.com":
            raise RadcotError(
                f"the OpenAI API needs a key: export {self.api_key_env}=... (or pass --api-key-env NAME of the "
                "variable that holds it)"
            )
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # -- helpers ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api": self.api, "system": self.system, "api_key_env": self.api_key_env}

    def _discover_model(self) -> str:
        url = f"{self.base_url}/models"
        try:
            r = self._client.get(url)
            r.raise_for_status()
            ids = [m["id"] for m in r.json().get("data", [])]
        except (self._httpx.ConnectError, self._httpx.ConnectTimeout) as e:
            raise TeacherUnreachable(self._unreachable_message(f"{type(e).__name__}: {e}", 1)) from None
        except Exception as e:  # noqa: BLE001
            raise RadcotError(f"no --model given and listing models at {url} failed ({type(e).__name__}: {e}); pass --model NAME") from None
        if len(ids) != 1:
            raise RadcotError(f"no --model given and {url} serves {len(ids)} models {ids[:10]}; pass --model NAME")
        return ids[0]

    def _unreachable_message(self, error: str, failures: int) -> str:
        url = urlparse(self.base_url)
        if url.hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
            fix = (f"Is a server running there? Start one (e.g. `radcot teacher-serve --port {url.port or 80}`) or "
                   f"fix the base URL (--base-url).")
        else:
            fix = "Is this machine online, and is the base URL (--base-url) right?"
        return (f"cannot connect to the teacher endpoint {self.base_url}: {error} ({failures} connection attempt"
                f"{'s' if failures != 1 else ''} failed, no answer yet). {fix} Then rerun the same command")

    def _payload(self, prompt: str, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens, "temperature": params.temperature}
        if params.top_p != 1.0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if self.api == "chat":
            messages = [{"role": "system", "content": self.system}] if self.system else []
            body["messages"] = messages + [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(self.extra_body)
        return body

    def _parse(self, data: Any) -> Generation:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
            if text is None:
                text = ""  # e.g. a content filter; flagged empty by the runner
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}")
            usage = data.get("usage") or {}
            return Generation(
                text=text,
                finish_reason=str(choice.get("finish_reason") or "stop"),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise _Retryable(f"malformed response (no choices[0] text: {type(e).__name__}: {e}): {str(data)[:200]!r}") from None

    def _once(self, url: str, body: dict) -> Generation:
        httpx = self._httpx
        try:
            r = self._client.post(url, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _ConnectFailed(f"connection failed ({type(e).__name__}: {e})") from None
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout after {self.timeout:g}s ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise _Retryable(f"connection error ({type(e).__name__}: {e})") from None
        self._answered = True
        if r.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {r.status_code}: {r.text[:200]!r}", parse_retry_after(r.headers.get("retry-after")))
        if r.status_code >= 400:
            hint = ""
            if r.status_code in (401, 403):
                hint = f" (check the key in ${self.api_key_env})"
            elif r.status_code == 404:
                hint = f" (check --base-url {self.base_url} and --model {self.model})"
            raise TeacherError(f"HTTP {r.status_code} from {url}{hint}: {r.text[:300]!r}")
        try:
            data = r.json()
        except ValueError:
            raise _Retryable(f"malformed JSON in HTTP {r.status_code} response: {r.text[:200]!r}") from None
        return self._parse(data)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))
        if retry_after is not None:
            return min(retry_after, self.max_retry_after) + 0.1 * backoff
        return backoff

    def _count_connect_failure(self, e: _Retryable, attempt: int) -> None:
        """Raise :class:`TeacherUnreachable` on the ``max_connect_failures``-th failure in a row (never answered)."""
        with self._lock:
            if self._answered:
                return
            self._connect_failures += 1
            if self._connect_failures >= self.max_connect_failures and self._unreachable is None:
                self._unreachable = self._unreachable_message(str(e), self._connect_failures)
            if self._unreachable is not None:
                raise TeacherUnreachable(self._unreachable, attempts=attempt) from None

    def generate_one(self, prompt: str, params: GenerationParams) -> Generation:
        """One prompt with retries; raises :class:`TeacherError` after ``max_attempts``.

        Raises:
            TeacherUnreachable: the endpoint never answered and ``max_connect_failures`` connections failed.
            TeacherError: the query failed (a non-retryable HTTP error, or every attempt failed).
        """
        url = f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"
        body = self._payload(prompt, params)
        for attempt in range(1, self.max_attempts + 1):
            if self._unreachable is not None:
                raise TeacherUnreachable(self._unreachable, attempts=attempt - 1)
            try:
                return self._once(url, body)._replace(attempts=attempt)
            except TeacherError as e:
                e.attempts = attempt
                raise
            except _Retryable as e:
                if isinstance(e, _ConnectFailed):
                    self._count_connect_failure(e, attempt)
                if attempt == self.max_attempts:
                    raise TeacherError(
                        f"gave up after {attempt} attempts at {url}; last error: {e}", attempts=attempt
                    ) from None
                delay = self._delay(attempt, e.retry_after)
                with self._lock:
                    self.retries += 1
                logger.warning("teacher %s: attempt %d/%d failed (%s); retrying in %.1f s", url, attempt,
                               self.max_attempts, e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def generate(self, items: Sequence[TeachItem], params: GenerationParams) -> list[Generation | TeacherError]:
        """Each item's answer, or its :class:`TeacherError` (a :class:`TeacherUnreachable` once the endpoint is
        known to be down: then every later item gets it at once, without a request)."""
        out: list[Generation | TeacherError] = []
        for item in items:
            try:
                out.append(self.generate_one(item.prompt, params))
            except TeacherError as e:
                out.append(e)
        return out

    def close(self) -> None:
        self._client.close()
