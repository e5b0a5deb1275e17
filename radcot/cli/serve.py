"""``radcot serve``: live query expansion over HTTP with a trained student (FastAPI + uvicorn).

Example::

    radcot serve --student runs/demo/students/radcot --port 8000 --deadline-ms 200 --cache expansions.sqlite &
    curl -s localhost:8000/v1/expand -H 'content-type: application/json' \\
         -d '{"queries": [{"id": "q1", "text": "where was Velkor Danth born"}]}'

The student is served as it was evaluated: its recorded index, passages per query, decoding and formula
(:mod:`radcot.student.profile`); flags override them, ``--index`` of another kind or collection is refused
unless ``--force-index``. The first line on stdout is ``radcot serve: listening on http://HOST:PORT`` (with
the real port when ``--port 0``); each worker then prints ``radcot serve: worker PID serving student ...``
(what it serves) once it is ready. SIGTERM/SIGINT stop accepting connections, answer the requests in
flight and exit (within 10 s). See :mod:`radcot.serving.app` for the API, deadlines and error codes.

``--workers N`` forks N server processes that accept on the one listening socket and share the expansion
cache (``--cache FILE``, or a temporary one) and the metrics; the parent restarts a worker that dies and
stops them all on SIGTERM. A worker loads its student before it accepts a connection, so every answer,
``/health`` included, comes from a loaded worker (a restarted one loads while the others answer); until the
first worker is loaded, connections wait in the socket's queue.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from radcot.cli._args import (ArgumentParser, non_negative_float, non_negative_int, port, positive_float,
                              positive_int)

logger = logging.getLogger("radcot.serving")

#: a worker restarted more often than this within a minute stops the service
MAX_RESTARTS_PER_MINUTE = 5


def add_student_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that choose what is served (shared with ``radcot cache warm``, whose entries must match)."""
    from radcot.expansion import FORMULAS
    from radcot.serving.cpu import PRECISIONS

    s = p.add_argument_group("student (defaults: what its profile, radcot_student.json, records)")
    s.add_argument("--student", required=True,
                   help="training run directory (radcot train --out), its best/, or a pipeline row's student dir")
    s.add_argument("--index", default=None,
                   help="its passages' index (default: the recorded one); /v1/search searches it")
    s.add_argument("--dense-index", default=None, help="the dense index of a fused (BM25 + dense) student")
    s.add_argument("--force-index", action="store_true",
                   help="serve --index even when its kind or collection is not the student's")
    s.add_argument("--formula", default=None, choices=list(FORMULAS), help="expansion formula (default: recorded)")
    s.add_argument("--k", type=positive_int, default=None, help="passages per query (default: recorded)")
    s.add_argument("--max-new-tokens", type=positive_int, default=None, help="CoT length in tokens (default: recorded)")
    s.add_argument("--num-beams", type=positive_int, default=None, help="beam size (default: recorded, 1 = greedy)")
    s.add_argument("--no-repeat-ngram-size", type=non_negative_int, default=None, help="(default: recorded)")
    s.add_argument("--repetition-penalty", type=positive_float, default=None, help="(default: recorded)")
    c = p.add_argument_group("CPU path and device (opt-in; each changes the CoTs, see docs/serving.md)")
    c.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default: the evaluated student), bf16, or int8 (dynamic quantisation, CPU)")
    c.add_argument("--stop-at-answer", action="store_true",
                   help="stop each CoT once its 'Answer:' sentence ends (shorter CoTs, fewer tokens)")
    c.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda, ...)")
    c.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads per process (default: torch's)")


def check_student_arguments(args, p: argparse.ArgumentParser) -> None:
    """The student flags' usage errors, before anything loads (exit 2, one line)."""
    from radcot.records import RadcotError
    from radcot.student.profile import StudentProfile

    if args.precision == "int8" and args.device not in ("auto", "cpu"):
        p.error(f"--precision int8 runs on the CPU only; got --device {args.device} (use bf16 on a GPU)")
    if args.dense_index is not None and not os.path.isdir(args.dense_index):
        p.error(f"--dense-index {args.dense_index} is not a directory (build one with radcot index --dense)")
    if args.index is not None and not os.path.isdir(args.index):
        p.error(f"--index {args.index} is not a directory (build one with radcot index)")
    try:
        profile = StudentProfile.load(args.student)
        index = args.index if args.dense_index is None else \
            {"dense": args.dense_index, **({"bm25": args.index} if args.index is not None else {})}
        profile.index_dirs(index, force=args.force_index)
    except (RadcotError, OSError) as e:
        p.error(" ".join(str(e).split()))


def load_expander(args, cache, batch_size: int):
    """The :class:`~radcot.serving.expander.Expander` the student flags describe."""
    from radcot.serving.expander import Expander

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # this process serves: its threads are its own
    return Expander.load(
        args.student, index=args.index, dense_index=args.dense_index, force_index=args.force_index,
        formula=args.formula, k=args.k, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty,
        batch_size=batch_size, device=args.device, cache=cache, precision=args.precision,
        stop_at_answer=args.stop_at_answer)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="radcot serve", description="Serve live query expansion with a trained student "
                       "(POST /v1/expand, /v1/search; GET /health, /v1/info, /metrics). Binds 127.0.0.1 by default.")
    add_student_arguments(p)
    v = p.add_argument_group("service")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    v.add_argument("--port", type=port, default=8000, help="TCP port (0: a free one, printed; default 8000)")
    v.add_argument("--workers", type=positive_int, default=1,
                   help="server processes on the one port, sharing the cache (default 1)")
    v.add_argument("--deadline-ms", type=positive_float, default=None,
                   help="answer within this many ms; a query not expanded in time is answered unexpanded "
                        "(fallback: deadline) and finished in the background (default: no deadline)")
    v.add_argument("--cache", default=None, metavar="FILE",
                   help="SQLite expansion cache shared with other workers/processes (radcot cache warm fills it)")
    v.add_argument("--cache-size", type=non_negative_int, default=10_000,
                   help="without --cache: in-memory cache entries per worker (0: off; default 10000)")
    v.add_argument("--cache-max-entries", type=positive_int, default=None,
                   help="with --cache: keep about this many entries, dropping the oldest (default: no limit)")
    v.add_argument("--max-batch", type=positive_int, default=32, help="most queries per generate call (default 32)")
    v.add_argument("--batch-wait-ms", type=non_negative_float, default=5.0,
                   help="how long a batch waits for more requests (default 5)")
    v.add_argument("--max-queue", type=positive_int, default=1024,
                   help="most queries waiting; more get 503, or with a deadline a fallback (default 1024)")
    v.add_argument("--max-background", type=non_negative_int, default=None,
                   help="most queries finished in the background after their deadline (default: --max-queue)")
    v.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="request body limit (default 1 MiB)")
    v.add_argument("--max-query-chars", type=positive_int, default=1000, help="longest query text (default 1000)")
    v.add_argument("--max-queries", type=positive_int, default=256, help="most queries per request (default 256)")
    v.add_argument("--max-k", type=positive_int, default=1000, help="largest k of /v1/search (default 1000)")
    v.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the API key held in environment variable VAR (Authorization: Bearer / X-API-Key)")
    return p


def _check(args, p: argparse.ArgumentParser) -> str | None:
    """Usage errors before anything loads (exit 2, one line); returns the API key (or None)."""
    from radcot.serving.server import api_key

    check_student_arguments(args, p)
    if args.cache is not None and os.path.isdir(args.cache):
        p.error(f"--cache {args.cache} is a directory; name the SQLite file, e.g. {args.cache}/expansions.sqlite")
    return api_key(args.api_key_env, p.error)


def _exit_if_still_loading(service) -> None:
    """Stopped before the student finished loading: nothing to drain, and the loading thread cannot be
    interrupted (torch, the JVM), so leave now instead of waiting for it at interpreter exit."""
    if service.expander is None and service.load_error is None:
        print("radcot serve: stopped before the student finished loading", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)


def _settings(args, key: str | None):
    from radcot.serving.app import ServeSettings

    cache = (f"sqlite:{args.cache}" if args.cache else f"memory:{args.cache_size}" if args.cache_size else "off")
    return ServeSettings(formula=args.formula, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                         max_queue=args.max_queue, max_background=args.max_background if args.max_background
                         is not None else args.max_queue, deadline_ms=args.deadline_ms,
                         max_body_bytes=args.max_body_bytes, max_query_chars=args.max_query_chars,
                         max_queries=args.max_queries, max_k=args.max_k, api_key=key, workers=args.workers,
                         cache=cache)


def _loader(args):
    """The function that loads, warms up and returns the :class:`~radcot.serving.expander.Expander` (in a thread)."""

    def load():
        from radcot.serving.cache import open_cache

        expander = load_expander(args, open_cache(args.cache, args.cache_size, args.cache_max_entries), args.max_batch)
        expander.warm_up_s = expander.warm_up()
        return expander

    return load


def serve_one(args, key: str | None, sock, preload: bool = False) -> int:
    """Run one server process on ``sock`` until SIGTERM; 1 when the student could not be loaded.

    Args:
        preload: load the student before accepting connections (a ``--workers`` worker: the loaded workers
            answer meanwhile, so ``/health`` 200 from one worker never meets a loading worker's 503 on the next
            request). Without it (one process), the server answers at once and ``/health`` says 503 until loaded.
    """
    from radcot.serving.app import create_app
    from radcot.serving.server import run, uvicorn_server

    load = _loader(args)
    if preload:
        try:
            expander = load()
        except Exception as e:  # noqa: BLE001 - reported as the one-process server reports it
            print(f"radcot serve: error: could not load the student: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
            return 1
        load = lambda: expander  # noqa: E731 - the app's loader returns the loaded student at once
    failed: list[str] = []

    def on_load_error(msg: str) -> None:
        failed.append(msg)
        server.should_exit = True

    def on_loaded() -> None:
        # radcot starts the JVM with -Xrs (no signal handlers of its own); a JVM another library started
        # without it would take SIGTERM/SIGINT: give them back to uvicorn's graceful shutdown either way
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, server.handle_exit)
        print(f"radcot serve: worker {os.getpid()} serving {app.state.service.expander.settings.summary()}",
              flush=True)

    app = create_app(load, _settings(args, key), on_load_error=on_load_error, on_loaded=on_loaded)
    server = uvicorn_server(app)
    run(server, sock)
    _exit_if_still_loading(app.state.service)
    if failed:
        print(f"radcot serve: error: could not load the student: {failed[0]}", file=sys.stderr, flush=True)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------ workers


class Supervisor:
    """The parent of ``--workers N``: forks the workers on the listening socket, restarts one that dies,
    and on SIGTERM/SIGINT stops them all (each drains its requests) and exits 0."""

    def __init__(self, args, key: str | None, sock):
        self.args, self.key, self.sock = args, key, sock
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self.restarts: list[float] = []

    def spawn(self, number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                rc = serve_one(self.args, self.key, self.sock, preload=True)
            except BaseException:  # noqa: BLE001 - a worker never returns into the parent's code
                logger.exception("worker %d failed", os.getpid())
                rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        self.children[pid] = number

    def stop(self, *_) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for i in range(self.args.workers):
            self.spawn(i)
        rc = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            number = self.children.pop(pid, None)
            from radcot.serving.metrics import mark_process_dead

            mark_process_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping or number is None:
                continue
            rc = self._after_death(pid, number, code) or rc
        return rc

    def _after_death(self, pid: int, number: int, code: int) -> int:
        """A worker stopped by itself: a load error stops the service (1); a crash restarts it (rate-limited)."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        if code == 1 or len(self.restarts) > MAX_RESTARTS_PER_MINUTE:
            why = "could not load the student" if code == 1 else f"restarted {MAX_RESTARTS_PER_MINUTE} times in a minute"
            print(f"radcot serve: error: worker {pid} exited with status {code} ({why}); stopping the service",
                  file=sys.stderr, flush=True)
            self.stop()
            return 1
        print(f"radcot serve: worker {pid} exited with status {code}; starting another", file=sys.stderr, flush=True)
        self.spawn(number)
        return 0


def _shared_dir(args) -> str | None:
    """For ``--workers N > 1``: a private directory for the workers' metrics (and their cache when no
    ``--cache`` is given), named in the environment before prometheus-client is imported."""
    if args.workers == 1:
        return None
    from radcot.serving.metrics import MULTIPROC_ENV

    shared = tempfile.mkdtemp(prefix="radcot-serve-")
    os.makedirs(os.path.join(shared, "metrics"))
    os.environ[MULTIPROC_ENV] = os.path.join(shared, "metrics")
    if args.cache is None and args.cache_size:
        args.cache = os.path.join(shared, "expansions.sqlite")
    return shared


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    from radcot._deps import require

    key = _check(args, p)
    shared = _shared_dir(args)
    try:
        require("uvicorn", "radcot serve", extra="serve")
        require("fastapi", "radcot serve", extra="serve")
        require("prometheus_client", "radcot serve", extra="serve")
        from radcot.serving.server import address, listen

        sock = listen(args.host, args.port, p.error)
        print(f"radcot serve: listening on http://{address(sock)}", flush=True)
        if args.workers > 1:
            print(f"radcot serve: {args.workers} workers, expansion cache: {args.cache or 'off'}", flush=True)
            return Supervisor(args, key, sock).run()
        return serve_one(args, key, sock)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
