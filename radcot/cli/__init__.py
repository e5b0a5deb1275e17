"""The ``radcot`` console script: one subcommand per module, each with ``main(argv) -> int``.

Subcommand modules are imported only when that subcommand runs, so ``radcot --help`` starts no JVM
and imports no torch.

Errors: a user mistake (a :class:`~radcot.records.RadcotError`, a missing/unreadable file, a bad value)
prints one line ``radcot CMD: error: ...`` and exits 1; bad arguments exit 2 (argparse). ``RADCOT_DEBUG=1``
(or ``-v``) shows the full traceback of any error.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

# name -> (module under radcot.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("index", "build a BM25 (Lucene) or dense (FAISS) index from a collection"),
    "search": ("search", "search queries (optionally expanded) and write a TREC run"),
    "evaluate": ("evaluate", "score a TREC run against qrels with ir-measures"),
    "teach": ("teach", "generate teacher chains of thought for queries (resumable)"),
    "teacher-serve": ("teacher_serve", "serve a local HF model as an OpenAI-compatible API on 127.0.0.1"),
    "build-data": ("build_data", "join queries, retrieved passages and teacher CoTs into a distillation dataset"),
    "train": ("train", "train a Fusion-in-Decoder student (resumable, DDP under torchrun)"),
    "generate": ("generate", "generate CoTs with a trained student"),
    "expand": ("expand", "expand queries with CoTs (query2doc/radcot formulas)"),
    "serve": ("serve", "serve live query expansion over HTTP with a trained student (FastAPI + uvicorn)"),
    "cache": ("cache", "warm, inspect or prune the SQLite expansion cache of radcot serve"),
    "run": ("run", "run a declarative pipeline (pipelines/*.yaml) with a stage cache"),
    "table": ("table", "print a results table (and report) for a pipeline's runs"),
    "make-world": ("make_world", "generate the embedded synthetic demo collection deterministically"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: radcot [-v|-q] <command> [options]", "", "LLM-free query expansion (RADCoT).", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `radcot <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``radcot`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    level = logging.INFO
    while argv and argv[0] in ("-v", "--verbose", "-q", "--quiet"):
        level = logging.DEBUG if argv.pop(0) in ("-v", "--verbose") else logging.WARNING
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from radcot import __version__

        print(f"radcot {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"radcot: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_per_request_loggers(level)
    from radcot.records import RadcotError  # light: no heavy imports

    module = importlib.import_module(f"radcot.cli.{COMMANDS[name][0]}")
    debug = level <= logging.DEBUG or os.environ.get("RADCOT_DEBUG", "") not in ("", "0")
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:
        return _broken_pipe()
    except KeyboardInterrupt:
        print("radcot: interrupted", file=sys.stderr)
        return 130
    except (RadcotError, OSError, ValueError) as e:  # a user mistake: one clear line
        if debug:
            raise
        hint = "" if isinstance(e, RadcotError) else " (RADCOT_DEBUG=1 shows the traceback)"
        print(f"radcot {name}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return 1


#: libraries that log one INFO line per HTTP request (100k lines for a DL teacher run): shown only with -v
PER_REQUEST_LOGGERS = ("httpx", "httpcore")
#: libraries whose INFO lines are their own internals: faiss probes its CPU builds on every load (six lines, two
#: of them "ModuleNotFoundError"), rouge-score says "Using default tokenizer." at every evaluation: shown with -v
INTERNAL_LOGGERS = ("faiss.loader", "absl")


def _quiet_per_request_loggers(level: int) -> None:
    """Keep per-request and library-internal INFO lines out of the default output, so retries and warnings stay
    visible."""
    if level > logging.DEBUG:
        for name in PER_REQUEST_LOGGERS + INTERNAL_LOGGERS:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.strerror:  # e.g. [Errno 2] No such file or directory: 'x'
        text = f"{e.filename}: {e.strerror}"
    return " ".join(text.split())


def _broken_pipe() -> int:
    """``radcot evaluate ... | head``: exit quietly, as Unix tools do (stdout pointed at /dev/null)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0
