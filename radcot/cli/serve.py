"""``radcot serve``: live query expansion over HTTP with a trained student (FastAPI + uvicorn).

Example::

    radcot serve --student runs/demo/train-radcot --index runs/demo/index --port 8000 &
    curl -s localhost:8000/v1/expand -H 'content-type: application/json' \\
         -d '{"queries": [{"id": "q1", "text": "where was Velkor Danth born"}]}'

The first line on stdout is ``radcot serve: listening on http://HOST:PORT`` (with the real port when
``--port 0``). SIGTERM/SIGINT stop accepting connections, answer the requests in flight and exit (within
10 s). See :mod:`radcot.serving.app` for the API and its error codes.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

logger = logging.getLogger("radcot.serving")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radcot serve", description="Serve live query expansion with a trained student "
                                "(POST /v1/expand, /v1/search; GET /health, /metrics). Binds 127.0.0.1 by default.")
    p.add_argument("--student", required=True, help="training run directory (radcot train --out) or its best/")
    p.add_argument("--index", default=None, help="BM25 or FAISS index: the student's passages and /v1/search's hits")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: a free one, printed; default 8000)")
    p.add_argument("--formula", default="radcot", choices=["radcot", "query2doc", "dense", "none"])
    p.add_argument("--max-batch", type=int, default=32, help="most queries per generate call (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests (default 5)")
    p.add_argument("--max-queue", type=int, default=1024, help="most queries waiting; more get 503 (default 1024)")
    p.add_argument("--cache-size", type=int, default=10_000, help="LRU cache of recent CoTs (0: off; default 10000)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--max-query-chars", type=int, default=1000, help="longest query text (default 1000)")
    p.add_argument("--max-queries", type=int, default=256, help="most queries per request (default 256)")
    p.add_argument("--max-k", type=int, default=1000, help="largest k of /v1/search (default 1000)")
    p.add_argument("--k", type=int, default=None, help="passages per query (default: the student's)")
    p.add_argument("--max-new-tokens", type=int, default=150, help="CoT length in tokens (default 150)")
    p.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda, ...)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes; only 1 is supported (one process batches best: it owns the model)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the API key held in environment variable VAR (Authorization: Bearer / X-API-Key)")
    return p


def _check(args, p: argparse.ArgumentParser) -> str | None:
    """Usage errors before anything loads; returns the API key (or None)."""
    from radcot.records import RadcotError
    from radcot.serving.expander import resolve_student_dir
    from radcot.serving.server import api_key

    if args.workers != 1:
        p.error(f"--workers {args.workers}: only 1 is supported; the batcher gathers requests inside one process "
                f"(run several services behind a load balancer to use more machines)")
    for name in ("max_batch", "max_queue", "max_body_bytes", "max_query_chars", "max_queries", "max_k",
                 "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.cache_size < 0 or args.batch_wait_ms < 0:
        p.error("--cache-size and --batch-wait-ms must be >= 0")
    try:
        resolve_student_dir(args.student)
    except RadcotError as e:
        p.error(str(e))
    if args.index is not None and not os.path.isdir(args.index):
        p.error(f"--index {args.index} is not a directory (build one with radcot index)")
    return api_key(args.api_key_env, p.error)


def _exit_if_still_loading(service) -> None:
    """Stopped before the student finished loading: nothing to drain, and the loading thread cannot be
    interrupted (torch, the JVM), so leave now instead of waiting for it at interpreter exit."""
    if service.expander is None and service.load_error is None:
        print("radcot serve: stopped before the student finished loading", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    from radcot._deps import require

    require("uvicorn", "radcot serve", extra="serve")
    require("fastapi", "radcot serve", extra="serve")
    require("prometheus_client", "radcot serve", extra="serve")
    key = _check(args, p)
    from radcot.serving.app import ServeSettings, create_app
    from radcot.serving.expander import Expander
    from radcot.serving.server import address, listen, run, uvicorn_server

    def load():
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)  # this process is the service: its threads are its own
        expander = Expander.load(args.student, index=args.index, formula=args.formula, device=args.device, k=args.k,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.max_batch)
        expander.warm_up()
        return expander

    settings = ServeSettings(formula=args.formula, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                             max_queue=args.max_queue, cache_size=args.cache_size, max_body_bytes=args.max_body_bytes,
                             max_query_chars=args.max_query_chars, max_queries=args.max_queries, max_k=args.max_k,
                             api_key=key)
    failed: list[str] = []

    def on_load_error(msg: str) -> None:
        failed.append(msg)
        server.should_exit = True

    def on_loaded() -> None:
        # radcot starts the JVM with -Xrs (no signal handlers of its own); a JVM another library started
        # without it would take SIGTERM/SIGINT: give them back to uvicorn's graceful shutdown either way
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, server.handle_exit)

    app = create_app(load, settings, on_load_error=on_load_error, on_loaded=on_loaded)
    sock = listen(args.host, args.port, p.error)
    server = uvicorn_server(app)
    print(f"radcot serve: listening on http://{address(sock)}", flush=True)
    run(server, sock)
    _exit_if_still_loading(app.state.service)
    if failed:
        print(f"radcot serve: error: could not load the student: {failed[0]}", file=sys.stderr)
        return 1
    return 0
