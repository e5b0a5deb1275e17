"""``radcot teach``: teacher chains of thought for queries, resumable (rerun the same command to resume).

Examples::

    # the paper's prompt against any OpenAI-compatible server (key read from $OPENAI_API_KEY)
    radcot teach --backend openai --model gpt-4o-mini --queries topics.dl19-passage.txt --out dl19.cots.jsonl
    # a local model (offline default, also --model smollm2: the bundled SmolLM2-135M-Instruct), 8 prompts per pass
    radcot teach --backend hf --batch-size 8 --queries data/demo --out demo.cots.jsonl
    # the official davinci-003 CoTs, replayed into radcot's format
    radcot teach --backend replay --replay-file teacher-cot-davinci003/dl19.tsv \\
        --queries topics.dl19-passage.txt --out dl19.davinci.jsonl

Exit status: 0 when every query is answered, 1 when some failed (they are listed in
``OUT.failed.jsonl`` and retried by the next run of the same command) or the run stopped (an endpoint
that refuses every connection from the start, more than --max-failed-fraction failures).
"""
from __future__ import annotations

import argparse
import sys

from radcot.cli._args import (
    ArgumentParser,
    check_resumable,
    env_var_set,
    fraction,
    non_negative_int,
    in_range,
    non_negative_float,
    positive_float,
    positive_int,
)

BACKEND_CHOICES = ("openai", "hf", "replay", "kb")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="radcot teach",
        description="Ask a teacher LLM for a chain of thought per query; one JSONL record per query, "
        "resumable after any interruption (rerun the same command).",
    )
    p.add_argument("--backend", required=True, choices=BACKEND_CHOICES)
    p.add_argument("--queries", required=True,
                   help="queries: BEIR dir, queries.jsonl, 'qid<TAB>text' TSV or TREC topics")
    p.add_argument("--out", required=True, help="output JSONL (sidecars OUT.failed.jsonl, OUT.config.json)")
    g = p.add_argument_group("prompt")
    g.add_argument("--prompt", default="radcot",
                   help="radcot (the paper's), query2doc, cot-keywords, or a template containing {query}")
    g.add_argument("--prompt-file", default=None, help="a text file holding a template with {query}")
    g.add_argument("--examples", default=None,
                   help="few-shot examples for {examples} (JSONL query/passage or TSV query<TAB>passage)")
    g.add_argument("--max-examples", type=positive_int, default=None, help="use only the first N examples")
    g = p.add_argument_group("generation")
    g.add_argument("--max-tokens", type=positive_int, default=150, help="new tokens per answer (paper: 150)")
    g.add_argument("--temperature", type=non_negative_float, default=0.0, help="paper: 0 (greedy)")
    g.add_argument("--top-p", type=in_range(0.0, 1.0, lo_open=True), default=1.0)
    g.add_argument("--seed", type=non_negative_int, default=0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--keep-newlines", action="store_true",
                   help="keep newlines in answers (default: replaced by spaces, as in the paper)")
    g = p.add_argument_group("backend")
    g.add_argument("--model", default=None,
                   help="openai: model name (default: the only one the server lists); hf: a Hugging Face name, a "
                        "directory, a .gguf file, or smollm2 (the default: the bundled SmolLM2-135M-Instruct)")
    g.add_argument("--base-url", default=None, help="openai: API root incl. /v1 (default $OPENAI_BASE_URL or OpenAI)")
    g.add_argument("--api-key-env", type=env_var_set, default=None,
                   help="openai: environment variable holding the API key (default OPENAI_API_KEY, optional for "
                        "local servers; a variable named here must be set); the key is never written")
    g.add_argument("--api", choices=["chat", "completions"], default="chat", help="openai: which endpoint")
    g.add_argument("--system", default=None, help="system message (openai chat, hf chat template)")
    g.add_argument("--timeout", type=positive_float, default=60.0, help="openai: seconds per request")
    g.add_argument("--max-attempts", type=positive_int, default=6, help="openai: tries per query before it is recorded failed")
    g.add_argument("--max-connect-failures", type=positive_int, default=3,
                   help="openai: stop the run after this many failed connections in a row before the server ever "
                        "answered (refused, unknown host, connect timeout); default 3")
    g.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (openai); default 8")
    g.add_argument("--batch-size", type=positive_int, default=8, help="hf: prompts per forward pass; default 8")
    g.add_argument("--gguf-file", default=None, help="hf: GGUF file name inside --model")
    g.add_argument("--device", default="cpu", help="hf: torch device")
    g.add_argument("--threads", type=positive_int, default=None, help="hf: torch CPU threads")
    g.add_argument("--replay-file", action="append", default=[],
                   help="replay: teacher outputs (davinci-003 TSV, qid<TAB>text, radcot JSONL); repeatable")
    g.add_argument("--world", default=None, help="kb: the demo world directory (default: --queries if a directory)")
    g = p.add_argument_group("run")
    g.add_argument("--limit", type=positive_int, default=None, help="only the first N queries")
    g.add_argument("--force", action="store_true", help="resume even if OUT was made with other settings")
    g.add_argument("--overwrite", action="store_true", help="delete OUT and its sidecars and start over")
    g.add_argument("--max-failed-fraction", type=fraction, default=0.5,
                   help="stop (exit 1) once more than this share of the queries answered so far failed, judged after "
                        "the first 10 (default 0.5; 1.0: never stop early). Finished queries are kept")
    g.add_argument("--no-retry-failed", action="store_true", help="do not re-ask queries that failed before")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _backend_kwargs(args: argparse.Namespace) -> dict:
    if args.backend == "openai":
        return {"model": args.model, "base_url": args.base_url, "api_key_env": args.api_key_env or "OPENAI_API_KEY",
                "api": args.api,
                "system": args.system, "timeout": args.timeout, "max_attempts": args.max_attempts,
                "concurrency": args.concurrency, "max_connect_failures": args.max_connect_failures}
    if args.backend == "hf":
        return {"model": args.model, "gguf_file": args.gguf_file, "batch_size": args.batch_size,
                "device": args.device, "threads": args.threads, "system": args.system}
    if args.backend == "replay":
        if not args.replay_file:
            from radcot.records import RadcotError

            raise RadcotError("--backend replay needs --replay-file FILE (davinci-003 TSV, qid<TAB>text or radcot JSONL)")
        return {"path": args.replay_file, **({"model": args.model} if args.model else {})}
    if args.backend == "kb":
        from pathlib import Path

        world = args.world or (args.queries if Path(args.queries).is_dir() else None)
        if world is None:
            from radcot.records import RadcotError

            raise RadcotError("--backend kb needs --world DIR (the demo world made by `radcot make-world`)")
        return {"world": world}
    raise AssertionError(args.backend)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_resumable(args.out, "teacher output")  # resumed, or replaced with --overwrite, only if radcot wrote it
    from radcot.locks import output_lock

    # fail at once if busy, before loading a model, and hold the lock until teach() is done (it inherits it):
    # released in between, a second process could take the output between the check and the run
    with output_lock(args.out, "teacher output", inherit=True):
        return _run(args)


def _run(args) -> int:
    from radcot.teacher import GenerationParams, get_backend, teach
    from radcot.teacher.prompts import get_prompt

    prompt = get_prompt(args.prompt, file=args.prompt_file, examples_file=args.examples, max_examples=args.max_examples)
    params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                              stop=tuple(args.stop), seed=args.seed)
    with get_backend(args.backend, **_backend_kwargs(args)) as backend:
        summary = teach(
            backend, args.queries, args.out, prompt=prompt, params=params, concurrency=args.concurrency,
            limit=args.limit, show_progress=False if args.no_progress else None,
            newline=None if args.keep_newlines else " ", force=args.force, overwrite=args.overwrite,
            retry_failed=not args.no_retry_failed, max_failed_fraction=args.max_failed_fraction,
        )
    print(summary)
    if summary.failed:
        print(f"radcot teach: {summary.failed} of {summary.total} queries failed (last error: {summary.last_error}); "
              f"rerun the same command to retry them", file=sys.stderr)
        return 1
    if summary.empty:
        print(f"radcot teach: warning: {summary.empty} answers were empty (flagged \"empty\": true in {args.out})",
              file=sys.stderr)
    return 0
