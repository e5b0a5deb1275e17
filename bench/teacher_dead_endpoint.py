"""How long ``radcot teach`` and ``radcot expand`` take to fail against a teacher endpoint that is not there.

Picks a free local port nobody listens on (connections are refused), writes ``--n`` queries, runs both
commands with their defaults (``--teacher openai``, 6 attempts, 1 s backoff base) through the real CLI and
reports, as JSON, each command's exit status, wall time, number of stderr lines and its last line.

Usage::

    python bench/teacher_dead_endpoint.py --n 30 --out runs/bench/teacher_dead_endpoint.json
    PYTHONPATH=OTHER_TREE python bench/teacher_dead_endpoint.py --repo OTHER_TREE   # another checkout's code

Measured on 2 shared cores (see docs/teacher.md): before the fail-fast client, teach stopped after 37 s
(10 queries x 6 attempts with backoff) and expand after 431 s with nothing printed; after it, 1.5 s and 2.3 s.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A port that was free a moment ago: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], repo: Path, workdir: Path, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), OPENAI_API_KEY="sk-bench")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "radcot", *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=timeout)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return {"exit": rc, "seconds": round(time.perf_counter() - t0, 2), "stderr_lines": len(lines),
            "last_line": lines[-1][:300] if lines else ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=30, help="queries (default 30)")
    p.add_argument("--repo", default=str(REPO), help="the checkout whose radcot runs (default: this one)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per command before giving up")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radcot-dead-endpoint-") as tmp:
        work = Path(tmp)
        (work / "q.tsv").write_text("".join(f"{i}\tdead endpoint query {i}\n" for i in range(args.n)))
        url = f"http://127.0.0.1:{closed_port()}/v1"
        result = {
            "queries": args.n, "base_url": url, "repo": args.repo,
            "teach": run(["teach", "--backend", "openai", "--model", "m", "--base-url", url, "--queries", "q.tsv",
                          "--out", "cots.jsonl", "--no-progress"], Path(args.repo), work, args.timeout),
            "expand": run(["expand", "--teacher", "openai", "--teacher-option", f"base_url={url}", "--teacher-option",
                           "model=m", "--queries", "q.tsv", "--out", "expanded.tsv"], Path(args.repo), work,
                          args.timeout),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
