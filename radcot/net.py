"""Bounded network calls: nothing radcot does or triggers waits on a silent server for minutes.

:func:`network_timeout` bounds every socket opened inside it — pyserini's prebuilt index and topic
downloads (``urlopen`` without a timeout), hub look-ups — by setting the socket default timeout for the
block and restoring it after. :func:`get_json` and :func:`reachable` are the preflight's probes.

Example:
    >>> from radcot.net import network_timeout
    >>> with network_timeout(10):  # doctest: +SKIP
    ...     download_prebuilt_index("msmarco-v1-passage")
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

from radcot.records import RadcotError

#: seconds a silent server may keep radcot waiting (per connect / per read)
DEFAULT_TIMEOUT = 30.0
_lock = threading.Lock()


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
