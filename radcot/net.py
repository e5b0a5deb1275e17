"""Bounded network calls: nothing radcot does or triggers waits on a silent server for minutes.

:func:`network_timeout` bounds every socket opened inside it — pyserini's prebuilt index and topic
downloads (``urlopen`` without a timeout), hub look-ups — by setting the socket default timeout for the
block and restoring it after. :func:`get_json` and :func:`reachable` are the preflight's probes.

:func:`hub_status` is the one place that knows whether the Hugging Face hub may and can be used: it reads
``HF_HUB_OFFLINE`` (:func:`hub_offline`) and otherwise probes ``HF_ENDPOINT`` once per process (a TCP
connection bounded by :data:`HUB_PROBE_TIMEOUT` seconds, name resolution included). Every radcot hub access
(the ``hf`` teacher, ``radcot teacher-serve``, the student loader, the dense encoder, the preflight) asks it
first, so an offline machine gets one clear error in seconds instead of ``huggingface_hub``'s minute of retries.

Example:
    >>> from radcot.net import network_timeout
    >>> with network_timeout(10):  # doctest: +SKIP
    ...     download_prebuilt_index("msmarco-v1-passage")
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

from radcot.records import RadcotError

#: seconds a silent server may keep radcot waiting (per connect / per read)
DEFAULT_TIMEOUT = 30.0
#: seconds the Hugging Face hub probe may take (name resolution and TCP connect together)
HUB_PROBE_TIMEOUT = 3.0
#: the hub used when ``HF_ENDPOINT`` is not set (as in ``huggingface_hub``)
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")
_lock = threading.Lock()
_hub_probes: dict[str, "HubStatus"] = {}  # endpoint -> the probe's answer, once per process


class NetworkError(RadcotError, OSError):
    """A network call failed or timed out; names the URL and the cause."""


@contextlib.contextmanager
def network_timeout(seconds: float = DEFAULT_TIMEOUT) -> Iterator[float]:
    """Bound every socket created in the block (connect and each read) by ``seconds``; restores the old default.

    The default timeout is process-wide: the block is meant for the main thread's downloads and look-ups.
    """
    if seconds <= 0:
        raise ValueError(f"network timeout must be > 0 seconds, got {seconds}")
    with _lock:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(seconds)
    try:
        yield seconds
    finally:
        with _lock:
            socket.setdefaulttimeout(old)


def get_json(url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> Any:
    """``GET url`` and parse JSON within ``timeout`` seconds (connect and read).

    Raises:
        NetworkError: unreachable, timed out, HTTP error status or a body that is not JSON.
    """
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - http(s) URLs from the config
            body = r.read()
    except urllib.error.HTTPError as e:
        raise NetworkError(f"GET {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.timeout, TimeoutError)) or isinstance(e, (socket.timeout, TimeoutError)):
            raise NetworkError(f"GET {url}: no answer within {timeout:g} s") from None
        raise NetworkError(f"GET {url}: {reason}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise NetworkError(f"GET {url}: the answer is not JSON ({body[:80]!r})") from None


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether the host of ``url`` accepts a TCP connection within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------- the Hugging Face hub


@dataclasses.dataclass(frozen=True)
class HubStatus:
    """Whether the Hugging Face hub can be used, and if not, why (for error messages).

    Attributes:
        reachable: hub downloads are allowed and the endpoint accepted a connection.
        endpoint: the hub URL (``HF_ENDPOINT`` or https://huggingface.co).
        reason: why not, as a clause for a message (``"HF_HUB_OFFLINE is set"``, ``"https://huggingface.co
            is unreachable (...)"``); empty when reachable.
    """

    reachable: bool
    endpoint: str
    reason: str = ""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no Hugging Face hub access (``1``/``true``/``yes``/``on``, any case).

    The one reading of the variable in radcot, the same as ``huggingface_hub``'s: any other value, or none,
    means online.

    Example:
        >>> isinstance(hub_offline(), bool)
        True
    """
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_status(timeout: float = HUB_PROBE_TIMEOUT) -> HubStatus:
    """Whether the Hugging Face hub may be used (``HF_HUB_OFFLINE``) and answers (probed once per process).

    ``HF_HUB_OFFLINE`` is read on every call (no connection is tried when it is set); the TCP probe of the
    endpoint runs once per endpoint and process, in at most ``timeout`` seconds even when name resolution
    hangs, and its answer is reused by every later hub access.

    Args:
        timeout: seconds the first probe may take (later calls return the recorded answer at once).

    Returns:
        a :class:`HubStatus`; ``reason`` completes a sentence such as "X is not in the local cache and ...".

    Example:
        >>> status = hub_status()  # doctest: +SKIP
        >>> status.reachable, status.reason  # doctest: +SKIP
        (False, 'https://huggingface.co is unreachable ([Errno -2] Name or service not known)')
    """
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise TypeError(f"hub_status(timeout=...) must be a positive number of seconds, got {timeout!r}")
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_HUB_ENDPOINT).rstrip("/") or DEFAULT_HUB_ENDPOINT
    if hub_offline():
        return HubStatus(False, endpoint, "HF_HUB_OFFLINE is set")
    with _lock:
        known = _hub_probes.get(endpoint)
    if known is None:
        known = _probe_hub(endpoint, timeout)
        with _lock:
            known = _hub_probes.setdefault(endpoint, known)
    return known


def forget_hub_status() -> None:
    """Drop the recorded hub probes, so the next :func:`hub_status` probes again (tests, long-lived servers)."""
    with _lock:
        _hub_probes.clear()


def _probe_hub(endpoint: str, timeout: float) -> HubStatus:
    """One TCP connection to ``endpoint`` in a daemon thread (``getaddrinfo`` has no timeout of its own)."""
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: list[str] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append("")
        except OSError as e:
            outcome.append(str(e) or type(e).__name__)

    thread = threading.Thread(target=connect, name="radcot-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return HubStatus(False, endpoint, f"{endpoint} did not answer within {timeout:g} s")
    if outcome[0]:
        return HubStatus(False, endpoint, f"{endpoint} is unreachable ({outcome[0]})")
    return HubStatus(True, endpoint)
