"""Teacher backend for any OpenAI-compatible HTTP endpoint (OpenAI, vLLM, llama.cpp, TGI, teacher-serve).

Requests go through one thread-safe ``httpx.Client``; the runner supplies the concurrency (one query
per call, ``concurrency`` calls in flight). Each query is retried with exponential backoff and full
jitter on 408/409/429/5xx, timeouts, connection errors and malformed JSON, honouring ``Retry-After``.
After ``max_attempts`` the query raises :class:`TeacherError` with the last cause; the runner records
it as failed and the next run retries it. Other 4xx (bad model name, bad key) fail at once.

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
from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem

logger = logging.getLogger("radcot.teacher.openai")

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
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
    ):
        from radcot._deps import require

        httpx = require("httpx", "the openai teacher backend", extra="teacher")
        if api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {api!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RadcotError(f"--base-url {self.base_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        self.api, self.system, self.timeout = api, system, float(timeout)
        self.max_attempts, self.backoff_base, self.backoff_max = int(max_attempts), float(backoff_base), float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.extra_body = dict(extra_body or {})
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key and parsed.hostname == "api.openai.com":
            raise RadcotError(
                f"the OpenAI API needs a key: export {api_key_env}=... (or pass --api-key-env NAME of the variable that holds it)"
            )
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            limits=httpx.Limits(max_connections=max(1, int(concurrency)),
                                max_keepalive_connections=max(1, int(concurrency))),
        )
        self._httpx = httpx
        self.concurrency = max(1, int(concurrency))
        self._lock = threading.Lock()
        self.retries = 0  # retried requests over the backend's life (all queries)
        self.model = model or self._discover_model()

    # -- helpers ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api": self.api, "system": self.system, "api_key_env": self.api_key_env}

    def _discover_model(self) -> str:
        url = f"{self.base_url}/models"
        try:
            r = self._client.get(url)
            r.raise_for_status()
            ids = [m["id"] for m in r.json().get("data", [])]
        except Exception as e:  # noqa: BLE001
            raise RadcotError(f"no --model given and listing models at {url} failed ({type(e).__name__}: {e}); pass --model NAME") from None
        if len(ids) != 1:
            raise RadcotError(f"no --model given and {url} serves {len(ids)} models {ids[:10]}; pass --model NAME")
        return ids[0]

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
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout after {self.timeout:g}s ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise _Retryable(f"connection error ({type(e).__name__}: {e})") from None
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

    def generate_one(self, prompt: str, params: GenerationParams) -> Generation:
        """One prompt with retries; raises :class:`TeacherError` after ``max_attempts``."""
        url = f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"
        body = self._payload(prompt, params)
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._once(url, body)._replace(attempts=attempt)
            except TeacherError as e:
                e.attempts = attempt
                raise
            except _Retryable as e:
                if attempt == self.max_attempts:
                    raise TeacherError(
                        f"gave up after {attempt} attempts at {url}; last error: {e}", attempts=attempt
                    ) from None
                delay = self._delay(attempt, e.retry_after)
                with self._lock:
                    self.retries += 1
                logger.debug("attempt %d failed (%s); retrying in %.2fs", attempt, e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def generate(self, items: Sequence[TeachItem], params: GenerationParams) -> list[Generation | TeacherError]:
        out: list[Generation | TeacherError] = []
        for item in items:
            try:
                out.append(self.generate_one(item.prompt, params))
            except TeacherError as e:
                out.append(e)
        return out

    def close(self) -> None:
        self._client.close()
