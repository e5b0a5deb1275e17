"""Process plumbing shared by ``radcot serve`` and ``radcot teacher-serve``: bind, run uvicorn, stop on SIGTERM.

Both commands bind their socket before printing the URL (a client that reads the line and connects is
queued, not refused), then run one uvicorn server on it whose SIGTERM/SIGINT answer the requests in flight
and exit 0 within :data:`DRAIN_S` seconds plus the batcher's drain.

Example:
    >>> sock = listen("127.0.0.1", 0, parser.error)  # doctest: +SKIP
    >>> server = uvicorn_server(app)  # doctest: +SKIP
    >>> print(f"listening on http://{address(sock)}"); run(server, sock)  # doctest: +SKIP
"""
from __future__ import annotations

import os
import signal
import socket
from typing import Any, Callable, NoReturn

#: graceful shutdown: seconds uvicorn waits for requests in flight before closing (the drain stays under 10 s)
DRAIN_S = 7


def listen(host: str, port: int, error: Callable[[str], NoReturn]) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port); a bind failure goes to ``error`` (``parser.error``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. Without it,
    # a response's second write waits for the client's delayed ACK: +40 ms on every keep-alive request (measured).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        error(f"cannot bind {host}:{port} ({e.strerror or e}); pick another --port (0 = any free port)")
    sock.listen(2048)  # before the URL is printed: a client that reads it and connects is queued, not refused
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    """``HOST:PORT`` of a bound socket (the real port after binding port 0)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def api_key(env_var: str | None, error: Callable[[str], NoReturn]) -> str | None:
    """The API key held in ``env_var`` (None when no variable is named); an empty variable goes to ``error``."""
    if env_var is None:
        return None
    key = os.environ.get(env_var, "")
    if not key.strip():
        error(f"--api-key-env {env_var}: that environment variable is empty or unset; export it first")
    return key


def uvicorn_server(app: Any):
    """A quiet uvicorn server for ``app`` with the graceful-shutdown drain of :data:`DRAIN_S` seconds."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=DRAIN_S, access_log=False)
    return uvicorn.Server(config)


def stop_on_sigterm(server) -> None:
    """SIGTERM before uvicorn installs its handlers, and after: stop (exit 0), not die.

    uvicorn drains on SIGTERM, then re-raises the signal with the handler that was there before it
    started; with the default one the process would die by the signal (status -15) after a clean drain.
    """
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))


def run(server, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT (requests in flight are answered first)."""
    stop_on_sigterm(server)
    server.run(sockets=[sock])


__all__ = ["DRAIN_S", "address", "api_key", "listen", "run", "stop_on_sigterm", "uvicorn_server"]
