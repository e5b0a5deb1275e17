"""Bad-input and fault cases for every ``radcot`` command, run as a new user would (issue 9's closing table).

Each case runs the real CLI (``python -m radcot ...``) in a subprocess, in its own temp directory, with a
timeout. Shared inputs (a tiny demo world, its BM25 index, kb-teacher CoTs, distillation data, a 2-step tiny
student, a run, a finished BM25-only pipeline) are built once, through the CLI, before the cases run. Fault
modes: plain (one run), ``twice`` (run, then the same command again), ``concurrent`` (two processes on one
output, started together), ``interrupt`` (SIGKILL mid-write, then the same command again). Teacher-server
faults use real HTTP servers on 127.0.0.1 (down, HTTP 500, not JSON, no choices).

For each case the harness records the exit code, the message line (the error line, else the first line of
output), whether a Python traceback was printed and, where it matters, whether the data on disk is right (no
query lost or duplicated, a user's file untouched, no temporary directory left). Verdicts:

- ``ok``: the expected outcome (a user mistake: a non-zero exit with one message; a valid call: exit 0), no
  traceback, data right;
- ``wrong data``: the data check failed (lost, duplicated, replaced or stale data) - the worst kind;
- ``traceback``: a Python traceback for a user mistake;
- ``wrong exit``: exit 0 for a mistake (silently accepted) or non-zero for a valid call;
- ``timeout``: the case ran past its time limit.

Usage::

    python eval/fault_cases.py                     # all cases, Markdown table and totals on stdout
    python eval/fault_cases.py --json faults.json  # also the records as JSON
    python eval/fault_cases.py -k teach --jobs 2   # cases whose name contains "teach", two at a time
    python eval/fault_cases.py --list              # names only

Many cases fail while issue 9 is open: the table is the measurement, not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
TINY_T5 = "tiny-t5:d_model=32,layers=1,heads=2,d_ff=64,vocab_size=500"
TRACEBACK = "Traceback (most recent call last)"
COMMANDS = ("index", "search", "evaluate", "teach", "teacher-serve", "build-data", "train", "generate", "expand",
            "run", "table", "make-world")

Check = Callable[[Path, dict, "Result"], "str | None"]  # returns a problem, or None when the data is right
Setup = Callable[[Path, dict], None]


@dataclass
class Case:
    """One fault case: ``radcot <args>`` run in a fresh directory; ``{NAME}`` in args are fixture paths."""

    name: str
    args: list[str]
    expect: str = "fail"              # "fail": a user mistake (non-zero exit); "ok": must succeed
    setup: Setup | None = None
    check: Check | None = None
    mode: str = "plain"               # plain | twice | concurrent | interrupt
    rerun: list[str] = field(default_factory=list)  # extra args for the second run (interrupt/twice)
    kill_when: Callable[[Path], bool] | None = None  # interrupt: kill once this holds (else after kill_after)
    kill_after: float = 3.0
    env: dict = field(default_factory=dict)
    timeout: float = 180.0

    @property
    def command(self) -> str:
        """The subcommand the case exercises ("(general)" for the top-level ones)."""
        return self.args[0] if self.args and self.args[0] in COMMANDS else "(general)"


@dataclass
class Result:
    name: str
    command: str
    cmdline: str
    expect: str
    exit: int | str
    message: str
    traceback: bool
    data_ok: bool | None
    data_note: str
    verdict: str
    seconds: float
    stdout: str = ""
    stderr: str = ""


# ------------------------------------------------------------------------------------------- processes

def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({"RADCOT_JAVA_HEAP": env.get("RADCOT_JAVA_HEAP", "1g"), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    env.pop("RADCOT_DEBUG", None)
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _popen(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "radcot", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int | str, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        return "timeout", out, err


def _run(args: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int | str, str, str]:
    return _wait(_popen(args, cwd, env), timeout)


# ------------------------------------------------------------------------------------------- fixtures

def build_fixtures(root: Path) -> dict:
    """Build the shared inputs through the CLI (the happy path); returns the ``{NAME}`` placeholders."""
    root.mkdir(parents=True, exist_ok=True)
    env = _env()
    steps = [
        ["make-world", "--out", "world", "--scale", "0.05", "--n-test", "20"],
        ["index", "--collection", "world", "--index", "idx", "--no-progress"],
        ["teach", "--backend", "kb", "--world", "world", "--queries", "world/queries.train.tsv", "--out", "cot.jsonl",
         "--no-progress"],
        ["teach", "--backend", "kb", "--world", "world", "--queries", "world/queries.test.tsv", "--out",
         "cot-test.jsonl", "--no-progress"],
        ["build-data", "--queries", "world/queries.train.tsv", "--teacher-out", "cot.jsonl", "--index", "idx",
         "--k", "2", "--out", "distill", "--no-progress"],
        ["train", "--data", "distill", "--model", TINY_T5, "--steps", "2", "--eval-every", "0", "--out", "student",
         "--eval-max-new-tokens", "4", "--text-maxlength", "32", "--target-maxlength", "32", "--no-progress"],
        ["search", "--index", "idx", "--queries", "world/queries.test.tsv", "--run", "run.trec", "--k", "10",
         "--no-progress"],
    ]
    (root / "mini.yaml").write_text(MINI_PIPELINE)
    steps.append(["run", "mini.yaml", "--runs-dir", "runs", "--no-report", "--no-progress"])
    for args in steps:
        rc, out, err = _run(args, root, env, 600)
        if rc != 0:
            raise SystemExit(f"fixture `radcot {' '.join(args)}` failed (exit {rc}):\n{err[-3000:]}")
    _build_tiny_lm(root, env)
    return placeholders(root)


TINY_LM = """import sys
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained(sys.argv[1])
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
LlamaForCausalLM(cfg).save_pretrained(sys.argv[2])
tok.save_pretrained(sys.argv[2])
"""


def _build_tiny_lm(root: Path, env: dict) -> None:
    """A random 1-layer causal LM (the student's tokenizer) so teacher-serve cases load in seconds, not 25 s."""
    proc = subprocess.run([sys.executable, "-c", TINY_LM, str(root / "student" / "best"), str(root / "tinylm")],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"fixture tiny LM failed:\n{proc.stderr[-3000:]}")


MINI_PIPELINE = """experiment: mini
seed: 13
params: {data: world}
dataset: {path: "${data}"}
retriever: {k1: 0.9, b: 0.4, threads: 1}
evaluation: {metrics: [nDCG@10, AP], k: 100, baseline: bm25}
rows:
  - {name: bm25, label: BM25}
  - {name: bm25-rm3, label: BM25+RM3, rm3: true}
"""


def placeholders(root: Path) -> dict:
    w = root / "world"
    return {"FX": str(root), "W": str(w), "Q": str(w / "queries.test.tsv"), "QTRAIN": str(w / "queries.train.tsv"),
            "QRELS": str(w / "qrels" / "test.tsv"), "IDX": str(root / "idx"), "COT": str(root / "cot.jsonl"),
            "COTT": str(root / "cot-test.jsonl"), "DATA": str(root / "distill"), "STUDENT": str(root / "student"),
            "BEST": str(root / "student" / "best"), "RUN": str(root / "run.trec"), "PIPE": str(root / "mini.yaml"),
            "RUNS": str(root / "runs"), "DEMO": str(REPO / "data" / "demo"), "TINYLM": str(root / "tinylm")}


# ------------------------------------------------------------------------------------ teacher servers

class _Handler(BaseHTTPRequestHandler):
    """Faulty OpenAI-compatible endpoints: /500/v1/..., /garbage/v1/..., /empty/v1/..., /slow/v1/..."""

    def _reply(self) -> None:
        mode = self.path.strip("/").split("/")[0]
        if mode == "slow":
            time.sleep(5)
        if mode == "500":
            body, status = b'{"error": {"message": "internal error"}}', 500
        elif mode == "garbage":
            body, status = b"<html>this is not JSON</html>", 200
        elif self.path.endswith("/models"):
            body, status = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode(), 200
        else:
            body, status = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                       "choices": []}).encode(), 200
        with contextlib.suppress(OSError):  # the client gave up (a --timeout case)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's names
        self._reply()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply()

    def log_message(self, *args):  # quiet
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client hanging up is part of the cases
        pass


def start_servers() -> tuple[dict, ThreadingHTTPServer]:
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nobody listens there now
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    server._busy = busy  # kept open for the port-in-use case
    return {"DEAD": f"http://127.0.0.1:{dead_port}/v1", "S500": f"{base}/500/v1", "GARBAGE": f"{base}/garbage/v1",
            "EMPTY": f"{base}/empty/v1", "SLOW": f"{base}/slow/v1", "BUSYPORT": str(busy.getsockname()[1])}, server


# -------------------------------------------------------------------------------------- data checks

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def _ids_tsv(path: str) -> list[str]:
    return [line.split("\t")[0] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl_ids(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line).get("query_id"))
    return out


def each_query_once(out: str, queries: str, complete: bool = True) -> Check:
    """The JSONL output has no query twice and (``complete``: when the last run succeeded) every query."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        path = tmp / out
        if not path.is_file():
            return None if res.exit != 0 else f"{out} missing after exit 0"
        ids = _jsonl_ids(path)
        dups = sorted({i for i in ids if ids.count(i) > 1})
        if dups:
            return f"{len(dups)} queries written twice, e.g. {dups[:3]}"
        want = set(_ids_tsv(queries.format_map(ctx)))
        if complete and res.exit == 0 and set(ids) != want:
            return f"{len(want - set(ids))} queries missing after exit 0"
        return None
    return check


def file_unchanged(rel: str) -> tuple[Setup, Check]:
    """A user's own file at ``rel`` (created by setup) must survive byte for byte."""
    content = b"my precious notes\n"

    def setup(tmp: Path, ctx: dict) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)

    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        p = tmp / rel
        return None if p.is_file() and p.read_bytes() == content else f"the user's file {rel} was deleted/replaced"
    return setup, check


def no_tmp_left(tmp: Path, ctx: dict, res: Result) -> str | None:
    left = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    return f"temporary files left: {left[:3]}" if left else None


def run_complete(rel: str, n_queries: int = 20) -> Check:
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        p = tmp / rel
        if not p.is_file():
            return None if res.exit != 0 else f"{rel} missing after exit 0"
        qids = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
        pairs = [tuple(line.split()[:3:2]) for line in p.read_text().splitlines() if line.strip()]
        if len(pairs) != len(set(pairs)):
            return f"{rel} holds a (query, doc) twice"
        if len(set(qids)) != n_queries:
            return f"{rel} has {len(set(qids))} queries, expected {n_queries}"
        return None
    return check


def both(*checks: Check) -> Check:
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        problems = [p for c in checks if (p := c(tmp, ctx, res))]
        return "; ".join(problems) or None
    return check


def write(rel: str, content: str | bytes) -> Setup:
    def setup(tmp: Path, ctx: dict) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return setup


def copy(src: str, rel: str) -> Setup:
    def setup(tmp: Path, ctx: dict) -> None:
        s = Path(src.format_map(ctx))
        (shutil.copytree if s.is_dir() else shutil.copy2)(s, tmp / rel)
    return setup


def chain(*setups: Setup) -> Setup:
    def setup(tmp: Path, ctx: dict) -> None:
        for s in setups:
            s(tmp, ctx)
    return setup


def exists(rel: str, min_bytes: int = 1) -> Callable[[Path], bool]:
    return lambda tmp: (tmp / rel).is_file() and (tmp / rel).stat().st_size >= min_bytes


def exit_message_has(text: str) -> Check:
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        return None if text in res.stdout + res.stderr else f"output does not mention {text!r}"
    return check


# ------------------------------------------------------------------------------------------------ cases

def bad_numbers(prefix: str, base: list[str], flag: str, values: list[str], **kw) -> list[Case]:
    """One case per out-of-range or malformed value of a numeric flag."""
    return [Case(f"{prefix} {flag} {v}", [*base, flag, v], **kw) for v in values]


def general_cases() -> list[Case]:
    return [
        Case("no command", []),
        Case("unknown command", ["indx"]),
        Case("help", ["--help"], expect="ok"),
        Case("version", ["--version"], expect="ok"),
        Case("unknown option", ["search", "--indx", "x"]),
    ]


def index_cases() -> list[Case]:
    base = ["index", "--index", "out-idx", "--no-progress"]
    keep_setup, keep_check = file_unchanged("out-idx/my-notes.txt")
    cases = [
        Case("index missing collection", [*base, "--collection", "nope"]),
        Case("index BEIR dir without corpus.jsonl", [*base, "--collection", "beir"],
             setup=chain(write("beir/queries.jsonl", '{"_id": "1", "text": "a question"}\n'),
                         write("beir/qrels/test.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n"))),
        Case("index corpus bad JSON", [*base, "--collection", "c.jsonl"], setup=write("c.jsonl", '{"_id": "d1", "text"\n')),
        Case("index corpus empty file", [*base, "--collection", "c.jsonl"], setup=write("c.jsonl", "")),
        Case("index corpus not UTF-8", [*base, "--collection", "c.jsonl"],
             setup=write("c.jsonl", b'{"_id": "d1", "text": "caf\xe9"}\n')),
        Case("index corpus with BOM", [*base, "--collection", "c.jsonl"], expect="ok",
             setup=write("c.jsonl", '\ufeff{"_id": "d1", "text": "hello"}\n')),
        Case("index doc id with a space", [*base, "--collection", "c.tsv"], setup=write("c.tsv", "d 1\thello\n")),
        Case("index duplicate doc ids", [*base, "--collection", "c.tsv"], setup=write("c.tsv", "d1\ta\nd1\tb\n")),
        Case("index TSV with 4 fields", [*base, "--collection", "c.tsv"], setup=write("c.tsv", "d1\ta\tb\tc\n")),
        Case("index collection is a directory of nothing", [*base, "--collection", "empty"],
             setup=lambda t, c: (t / "empty").mkdir()),
        Case("index over a user's directory", [*base, "--collection", "{W}"], setup=keep_setup, check=keep_check),
        Case("index output is a file", ["index", "--collection", "{W}", "--index", "f", "--no-progress"],
             setup=file_unchanged("f")[0], check=file_unchanged("f")[1]),
        Case("index existing index again", ["index", "--collection", "{W}", "--index", "idx", "--no-progress"],
             expect="ok", mode="twice"),
        Case("index --dense --index-type ivf", [*base, "--collection", "{W}", "--dense", "--index-type", "ivf"]),
        Case("index interrupted then rerun", ["index", "--collection", "{DEMO}", "--index", "big", "--no-progress"],
             expect="ok", mode="interrupt", kill_after=4.0, check=no_tmp_left, timeout=300),
        Case("index two writers", ["index", "--collection", "{W}", "--index", "both", "--no-progress"],
             expect="ok", mode="concurrent", check=no_tmp_left),
    ]
    cases += bad_numbers("index", [*base, "--collection", "{W}"], "--threads", ["0", "-1", "two"])
    cases += bad_numbers("index", [*base, "--collection", "{W}"], "--heap", ["lots", "-5g"])
    cases += bad_numbers("index", [*base, "--collection", "{W}", "--dense"], "--batch-size", ["0", "-3"])
    return cases


def _bom_queries(tmp: Path, ctx: dict) -> None:
    """The first three test queries, saved with a UTF-8 byte-order mark (as Windows editors do)."""
    lines = Path(ctx["Q"]).read_text(encoding="utf-8").splitlines(keepends=True)[:3]
    (tmp / "q.tsv").write_text("\ufeff" + "".join(lines), encoding="utf-8")


def search_cases() -> list[Case]:
    base = ["search", "--index", "{IDX}", "--run", "out.trec", "--no-progress"]
    ok = ["search", "--index", "{IDX}", "--queries", "{Q}", "--run", "out.trec", "--k", "10", "--no-progress"]
    keep_setup, keep_check = file_unchanged("out.trec")
    cases = [
        Case("search missing index", ["search", "--index", "nope", "--queries", "{Q}", "--run", "o.trec"]),
        Case("search index is an empty dir", ["search", "--index", "e", "--queries", "{Q}", "--run", "o.trec"],
             setup=lambda t, c: (t / "e").mkdir()),
        Case("search missing queries", [*base, "--queries", "nope.tsv"]),
        Case("search queries without tab", [*base, "--queries", "q.tsv"], setup=write("q.tsv", "1 hello world\n")),
        Case("search queries not UTF-8", [*base, "--queries", "q.tsv"], setup=write("q.tsv", b"1\tcaf\xe9\n")),
        Case("search queries with BOM", [*base, "--queries", "q.tsv"], expect="ok",
             setup=_bom_queries, check=run_complete("out.trec", 3)),
        Case("search topics unclosed <top>", [*base, "--queries", "t.txt"],
             setup=write("t.txt", "<top>\n<num> 1\n<title> a\n</top>\n<top>\n<num> 2\n<title> b\n")),
        Case("search query id with a space", [*base, "--queries", "q.jsonl"],
             setup=write("q.jsonl", '{"_id": "q 1", "text": "hello"}\n')),
        Case("search empty queries file", [*base, "--queries", "q.tsv"], setup=write("q.tsv", "")),
        Case("search duplicate query ids", [*base, "--queries", "q.tsv"], setup=write("q.tsv", "1\ta\n1\tb\n")),
        Case("search tag with a space", [*ok, "--tag", "my run"]),
        Case("search run exists (user file)", ok, setup=keep_setup, check=keep_check),
        Case("search expansions missing", [*ok, "--expansions", "nope.tsv"]),
        Case("search expansions without tab", [*ok, "--expansions", "e.tsv"], setup=write("e.tsv", "test00001 x\n")),
        Case("search expansions cover no query", [*ok, "--expansions", "e.tsv"], setup=write("e.tsv", "zz\tx\n")),
        Case("search run into a missing dir", [*ok[:5], "--run", "sub/dir/o.trec", "--k", "10", "--no-progress"],
             expect="ok", check=run_complete("sub/dir/o.trec")),
        Case("search interrupted then rerun", ok, expect="ok", mode="interrupt", kill_after=3.0,
             check=both(run_complete("out.trec"), no_tmp_left)),
        Case("search two writers", ok, expect="ok", mode="concurrent", check=run_complete("out.trec")),
    ]
    for flag, values in {"--k": ["0", "-5", "ten"], "--bm25-k1": ["-1", "nan"], "--bm25-b": ["5", "-0.1"],
                         "--rm3-fb-terms": ["0"], "--rm3-fb-docs": ["0"], "--rm3-weight": ["1.5"],
                         "--max-query-terms": ["0"], "--threads": ["0"]}.items():
        extra = ["--rm3"] if flag.startswith("--rm3") else []
        cases += bad_numbers("search", [*ok, *extra], flag, values)
    return cases


def evaluate_cases() -> list[Case]:
    ev = ["evaluate", "--qrels", "{QRELS}"]
    return [
        Case("evaluate missing qrels", ["evaluate", "--qrels", "nope", "--run", "{RUN}"]),
        Case("evaluate missing run", [*ev, "--run", "nope.trec"]),
        Case("evaluate run is a directory", [*ev, "--run", "d"], setup=lambda t, c: (t / "d").mkdir()),
        Case("evaluate run with nan score", [*ev, "--run", "r.trec"], setup=write("r.trec", "test00001 Q0 D1 1 nan t\n")),
        Case("evaluate run with 5 fields", [*ev, "--run", "r.trec"], setup=write("r.trec", "test00001 Q0 D1 1 2.0\n")),
        Case("evaluate empty run", [*ev, "--run", "r.trec"], setup=write("r.trec", "")),
        Case("evaluate run not UTF-8", [*ev, "--run", "r.trec"], setup=write("r.trec", b"test00001 Q0 D\xe9 1 2 t\n")),
        Case("evaluate run with BOM", [*ev, "--run", "r.trec"], expect="ok",
             setup=write("r.trec", "\ufefftest00001 Q0 D00001 1 2.0 t\n")),
        Case("evaluate run doc twice", [*ev, "--run", "r.trec"],
             setup=write("r.trec", "test00001 Q0 D1 1 2 t\ntest00001 Q0 D1 2 1 t\n")),
        Case("evaluate qrels bad relevance", ["evaluate", "--qrels", "q.txt", "--run", "{RUN}"],
             setup=write("q.txt", "test00001 0 D1 high\n")),
        Case("evaluate qrels empty", ["evaluate", "--qrels", "q.txt", "--run", "{RUN}"], setup=write("q.txt", "")),
        Case("evaluate qrels id with a space", ["evaluate", "--qrels", "q.tsv", "--run", "{RUN}"],
             setup=write("q.tsv", "query-id\tcorpus-id\tscore\ntest00001\tD 1\t1\n")),
        Case("evaluate unknown metric", [*ev, "--run", "{RUN}", "--metrics", "nDCG@ten"]),
        Case("evaluate wrong qrels for run", [*ev, "--run", "r.trec"], setup=write("r.trec", "301 Q0 D1 1 2.0 t\n")),
        Case("evaluate run missing judged queries", [*ev, "--run", "r.trec", "--json"], expect="ok",
             setup=write("r.trec", "test00001 Q0 D00001 1 2.0 t\n"), check=exit_message_has('"missing_from_run"')),
        Case("evaluate compare missing", [*ev, "--run", "{RUN}", "--compare", "nope.trec"]),
        Case("evaluate compare a run with itself", [*ev, "--run", "r.trec", "--compare", "r.trec"], expect="ok",
             setup=write("r.trec", "test00001 Q0 D00001 1 2.0 t\n")),
        Case("evaluate compare, one judged query", ["evaluate", "--qrels", "q.txt", "--run", "{RUN}", "--compare",
                                                    "{RUN}"], setup=write("q.txt", "test00001 0 D00001 1\n")),
        Case("evaluate valid run", [*ev, "--run", "{RUN}", "--json"], expect="ok"),
    ]


def teach_cases() -> list[Case]:
    kb = ["teach", "--backend", "kb", "--world", "{W}", "--no-progress"]
    ok = [*kb, "--queries", "{Q}", "--out", "out.jsonl"]
    oa = ["teach", "--backend", "openai", "--model", "m", "--queries", "{Q}", "--out", "out.jsonl", "--max-attempts",
          "1", "--timeout", "2", "--no-progress"]
    key = {"OPENAI_API_KEY": "sk-fault-cases"}
    keep_setup, keep_check = file_unchanged("out.jsonl")
    once = each_query_once("out.jsonl", "{Q}")
    cases = [
        Case("teach missing queries", [*kb, "--queries", "nope.tsv", "--out", "o.jsonl"]),
        Case("teach queries without tab", [*kb, "--queries", "q.tsv", "--out", "o.jsonl"], setup=write("q.tsv", "1 x\n")),
        Case("teach empty queries", [*kb, "--queries", "q.tsv", "--out", "o.jsonl"], setup=write("q.tsv", "\n")),
        Case("teach queries not UTF-8", [*kb, "--queries", "q.tsv", "--out", "o.jsonl"], setup=write("q.tsv", b"1\t\xff\n")),
        Case("teach kb world missing", ["teach", "--backend", "kb", "--world", "nope", "--queries", "{Q}", "--out", "o.jsonl"]),
        Case("teach prompt without {query}", [*ok, "--prompt", "hello"]),
        Case("teach prompt file missing", [*ok, "--prompt-file", "nope.txt"]),
        Case("teach examples missing", [*ok, "--examples", "nope.jsonl"]),
        Case("teach out is a user file", ok, setup=keep_setup, check=keep_check),
        Case("teach out is a directory", [*kb, "--queries", "{Q}", "--out", "d"], setup=lambda t, c: (t / "d").mkdir()),
        Case("teach rerun after done", ok, expect="ok", mode="twice", check=once),
        Case("teach rerun with other settings", ok, mode="twice", rerun=["--max-tokens", "7"], check=once),
        Case("teach interrupted then rerun", [*kb[:-1], "--world", "{DEMO}", "--queries", "{DEMO}/queries.train.tsv",
                                              "--out", "out.jsonl", "--no-progress"], expect="ok", mode="interrupt",
             kill_when=exists("out.jsonl", 2000), check=each_query_once("out.jsonl", "{DEMO}/queries.train.tsv")),
        Case("teach two writers", [*kb[:-1], "--world", "{DEMO}", "--queries", "{DEMO}/queries.train.tsv", "--out",
                                   "out.jsonl", "--no-progress"], expect="ok", mode="concurrent",
             check=each_query_once("out.jsonl", "{DEMO}/queries.train.tsv")),
        Case("teach openai server down", [*oa, "--base-url", "{DEAD}"], env=key, check=once),
        Case("teach openai HTTP 500", [*oa, "--base-url", "{S500}"], env=key, check=once),
        Case("teach openai not JSON", [*oa, "--base-url", "{GARBAGE}"], env=key, check=once),
        Case("teach openai no choices", [*oa, "--base-url", "{EMPTY}"], env=key, check=once),
        Case("teach openai slow server, --timeout 1", [*oa[:-5], "--max-attempts", "1", "--timeout", "1", "--limit",
                                                       "2", "--base-url", "{SLOW}"], env=key, check=once),
        Case("teach api key env unset", [*oa, "--base-url", "{DEAD}", "--api-key-env", "RADCOT_NO_SUCH_KEY"],
             env={"RADCOT_NO_SUCH_KEY": None}),
        Case("teach replay file missing", ["teach", "--backend", "replay", "--replay-file", "nope.tsv", "--queries",
                                           "{Q}", "--out", "o.jsonl"]),
        Case("teach replay covers no query", ["teach", "--backend", "replay", "--replay-file", "r.tsv", "--queries",
                                              "{Q}", "--out", "o.jsonl"], setup=write("r.tsv", "zz\tsome cot\n")),
    ]
    for flag, values in {"--limit": ["0", "-1"], "--max-tokens": ["0", "-5"], "--temperature": ["-1", "nan"],
                         "--top-p": ["1.5", "0"], "--max-examples": ["-1"]}.items():
        cases += bad_numbers("teach", ok, flag, values)
    for flag, values in {"--concurrency": ["0"], "--max-attempts": ["0"], "--timeout": ["0", "-1"]}.items():
        cases += bad_numbers("teach openai", [*oa[:-5], "--base-url", "{DEAD}", "--no-progress"], flag, values, env=key)
    return cases


def build_data_cases() -> list[Case]:
    ok = ["build-data", "--queries", "{QTRAIN}", "--teacher-out", "{COT}", "--index", "{IDX}", "--k", "2", "--out",
          "out", "--no-progress"]
    keep_setup, keep_check = file_unchanged("out/my-notes.txt")
    dup = '{"query_id": "q00021", "query": "x", "text": "a"}\n{"query_id": "q00021", "query": "x", "text": "b"}\n'
    cases = [
        Case("build-data missing queries", [*ok[:1], "--queries", "nope.tsv", *ok[3:]]),
        Case("build-data missing teacher-out", [*ok[:3], "--teacher-out", "nope.jsonl", *ok[5:]]),
        Case("build-data teacher-out bad JSON", [*ok[:3], "--teacher-out", "c.jsonl", *ok[5:]],
             setup=write("c.jsonl", '{"query_id": "q00021", "text": \n')),
        Case("build-data teacher-out duplicate ids", [*ok[:3], "--teacher-out", "c.jsonl", *ok[5:]],
             setup=write("c.jsonl", dup)),
        Case("build-data teacher-out covers no query", [*ok[:3], "--teacher-out", "c.jsonl", *ok[5:]],
             setup=write("c.jsonl", '{"query_id": "zz", "query": "x", "text": "a"}\n')),
        Case("build-data no --index without --no-context", [*ok[:5], "--k", "2", "--out", "out", "--no-progress"]),
        Case("build-data index missing", [*ok[:5], "--index", "nope", *ok[7:]]),
        Case("build-data dev-queries missing", [*ok, "--dev-queries", "nope.tsv"]),
        Case("build-data out holds a user's file", ok, setup=keep_setup, check=keep_check),
        Case("build-data out exists (own output)", ok, mode="twice", check=no_tmp_left),
        Case("build-data interrupted then rerun", ok, expect="ok", mode="interrupt", kill_after=4.0,
             rerun=["--overwrite"], check=no_tmp_left),  # the kill may land after the atomic rename
        Case("build-data two writers", ok, expect="ok", mode="concurrent", check=no_tmp_left),
    ]
    cases += bad_numbers("build-data", ok, "--k", ["0", "-1", "two"])
    cases += bad_numbers("build-data", ok, "--dev-fraction", ["1.5", "-0.1", "nan", "1"])
    cases += bad_numbers("build-data", ok, "--seed", ["x"])
    return cases


def train_cases() -> list[Case]:
    ok = ["train", "--data", "{DATA}", "--model", TINY_T5, "--out", "out", "--steps", "2", "--eval-every", "0",
          "--eval-max-new-tokens", "4", "--text-maxlength", "32", "--target-maxlength", "32", "--no-progress"]
    keep_setup, keep_check = file_unchanged("out/my-notes.txt")
    best = lambda t, c, r: None if r.exit != 0 or (t / "out" / "best").is_dir() else "no out/best after exit 0"  # noqa: E731
    cases = [
        Case("train missing data", ["train", "--data", "nope", "--model", TINY_T5, "--out", "out"]),
        Case("train data is not a dataset", ["train", "--data", "d", "--model", TINY_T5, "--out", "out"],
             setup=write("d/readme.txt", "hello\n")),
        Case("train no --data", ["train", "--model", TINY_T5, "--out", "out"]),
        Case("train unknown model offline", [*ok[:3], "--model", "google/flan-t5-nope", *ok[5:]]),
        Case("train bad tiny-t5 spec", [*ok[:3], "--model", "tiny-t5:layers=zero", *ok[5:]]),
        Case("train --resume with nothing to resume", [*ok, "--resume"]),
        Case("train config missing", [*ok, "--config", "nope.yaml"]),
        Case("train config unknown field", [*ok, "--config", "c.yaml"], setup=write("c.yaml", "max_stepz: 3\n")),
        Case("train config not YAML", [*ok, "--config", "c.yaml"], setup=write("c.yaml", "a: [1\n")),
        Case("train out holds a user's file", ok, setup=keep_setup, check=keep_check),
        Case("train out is done, run again", ok, mode="twice", check=best),
        Case("train interrupted then --resume", [*ok[:7], "--steps", "40", *ok[9:], "--save-every", "5"],
             expect="ok", mode="interrupt", rerun=["--resume"], check=best,
             kill_when=lambda t: (t / "out" / "checkpoints").is_dir() and any((t / "out" / "checkpoints").iterdir())),
        Case("train two writers", ok, expect="ok", mode="concurrent", check=best),
    ]
    for flag, values in {"--steps": ["0", "-1"], "--lr": ["nan", "-1", "0"], "--batch-size": ["0"],
                         "--grad-accum": ["0"], "--warmup-steps": ["-1"], "--eval-every": ["-1"], "--save-every": ["0"],
                         "--keep-checkpoints": ["0"], "--n-context": ["0"], "--text-maxlength": ["0"],
                         "--weight-decay": ["-0.1"], "--clip": ["-1"]}.items():
        cases += bad_numbers("train", ok, flag, values)
    return cases


def generate_cases() -> list[Case]:
    ok = ["generate", "--student", "{BEST}", "--queries", "{Q}", "--index", "{IDX}", "--out", "out.jsonl",
          "--max-new-tokens", "4", "--no-progress"]
    once = each_query_once("out.jsonl", "{Q}")
    cases = [
        Case("generate missing student", ["generate", "--student", "nope", *ok[3:]]),
        Case("generate student is not a model", ["generate", "--student", "d", *ok[3:]], setup=write("d/x.txt", "x")),
        Case("generate missing queries", [*ok[:3], "--queries", "nope.tsv", *ok[5:]]),
        Case("generate queries without tab", [*ok[:3], "--queries", "q.tsv", *ok[5:]], setup=write("q.tsv", "1 x\n")),
        Case("generate missing index", [*ok[:5], "--index", "nope", *ok[7:]]),
        Case("generate no index for a RADCoT student", [*ok[:5], *ok[7:]]),
        Case("generate out is a user file", ok, setup=file_unchanged("out.jsonl")[0], check=file_unchanged("out.jsonl")[1]),
        Case("generate rerun after done", ok, expect="ok", mode="twice", check=once),
        Case("generate interrupted then rerun", [*ok, "--batch-size", "1"], expect="ok", mode="interrupt",
             kill_when=exists("out.jsonl", 1), check=once),
        Case("generate two writers", [*ok, "--batch-size", "2"], expect="ok", mode="concurrent", check=once),
    ]
    for flag, values in {"--k": ["0", "-1"], "--max-new-tokens": ["0"], "--batch-size": ["0"], "--num-beams": ["0"],
                         "--num-return-sequences": ["0"], "--limit": ["0", "-2"], "--repetition-penalty": ["0"],
                         "--no-repeat-ngram-size": ["-1"]}.items():
        cases += bad_numbers("generate", ok, flag, values)
    cases += bad_numbers("generate --do-sample", [*ok, "--do-sample"], "--temperature", ["0", "-1"])
    cases += bad_numbers("generate --do-sample", [*ok, "--do-sample"], "--top-p", ["0", "1.5"])
    return cases


def _three_queries(tmp: Path, ctx: dict) -> None:
    lines = Path(ctx["Q"]).read_text(encoding="utf-8").splitlines(keepends=True)[:3]
    (tmp / "q3.tsv").write_text("".join(lines), encoding="utf-8")


def expand_cases() -> list[Case]:
    ok = ["expand", "--cots", "{COTT}", "--queries", "{Q}", "--out", "out.tsv"]
    keep_setup, keep_check = file_unchanged("out.tsv")
    lines = lambda t, c, r: None if r.exit != 0 or len(_ids_tsv(str(t / "out.tsv"))) == 20 else "out.tsv lacks queries"  # noqa: E731
    dup = '{"query_id": "test00001", "text": "a"}\n{"query_id": "test00001", "text": "b"}\n'
    key = {"OPENAI_API_KEY": "sk-fault-cases"}
    cases = [
        Case("expand cots missing", ["expand", "--cots", "nope.jsonl", *ok[3:]]),
        Case("expand cots bad JSON", ["expand", "--cots", "c.jsonl", *ok[3:]], setup=write("c.jsonl", "{oops\n")),
        Case("expand cots duplicate ids", ["expand", "--cots", "c.jsonl", *ok[3:]], setup=write("c.jsonl", dup)),
        Case("expand cots cover no query", ["expand", "--cots", "c.tsv", *ok[3:]], setup=write("c.tsv", "zz\tsome cot\n")),
        Case("expand cots not UTF-8", ["expand", "--cots", "c.tsv", *ok[3:]], setup=write("c.tsv", b"test00001\t\xe9\n")),
        Case("expand missing queries", [*ok[:3], "--queries", "nope.tsv", "--out", "out.tsv"]),
        Case("expand empty queries", [*ok[:3], "--queries", "q.tsv", "--out", "out.tsv"], setup=write("q.tsv", "")),
        Case("expand out exists (user file)", ok, setup=keep_setup, check=keep_check),
        Case("expand unknown formula", [*ok, "--formula", "magic"]),
        Case("expand teacher openai down", ["expand", "--teacher", "openai", "--teacher-option", "base_url={DEAD}",
                                            "--teacher-option", "model=m", "--queries", "q3.tsv", "--out", "out.tsv"],
             env=key, setup=_three_queries, timeout=60,
             check=lambda t, c, r: "exit 0 with unexpanded queries" if r.exit == 0 else None),
        Case("expand teacher openai HTTP 500", ["expand", "--teacher", "openai", "--teacher-option", "base_url={S500}",
                                                "--teacher-option", "model=m", "--queries", "q3.tsv", "--out", "out.tsv"],
             env=key, setup=_three_queries, timeout=60),
        Case("expand teacher-option without =", ["expand", "--teacher", "kb", "--teacher-option", "world", *ok[3:]]),
        Case("expand teacher kb without world", ["expand", "--teacher", "kb", "--queries", "{Q}", "--out", "out.tsv"]),
        Case("expand student missing", ["expand", "--student", "nope", *ok[3:]]),
        Case("expand valid", ok, expect="ok", check=lines),
        Case("expand two writers", ok, expect="ok", mode="concurrent", check=lines),
    ]
    cases += bad_numbers("expand", ok, "--samples", ["0", "-1"])
    cases += bad_numbers("expand --student", ["expand", "--student", "{STUDENT}", "--index", "{IDX}", *ok[3:]], "--k",
                         ["0"])
    cases += bad_numbers("expand --student", ["expand", "--student", "{STUDENT}", "--index", "{IDX}", *ok[3:]],
                         "--max-new-tokens", ["0"])
    return cases


def teacher_serve_cases() -> list[Case]:
    """A server that starts serving with a bad value is recorded as exit "served" (then stopped)."""
    base = ["teacher-serve", "--model", "{TINYLM}", "--no-chat", "--port", "0"]
    serve = dict(mode="serve", timeout=90)
    cases = [
        Case("teacher-serve model missing", ["teacher-serve", "--model", "nope/nowhere", "--port", "0"], **serve),
        Case("teacher-serve model dir is empty", ["teacher-serve", "--model", "m", "--port", "0"],
             setup=lambda t, c: (t / "m").mkdir(), **serve),
        Case("teacher-serve gguf file missing", [*base, "--gguf-file", "nope.gguf"], **serve),
        Case("teacher-serve port in use", [*base[:-2], "--port", "{BUSYPORT}"], **serve),
        Case("teacher-serve host not an address", [*base, "--host", "not a host"], **serve),
        Case("teacher-serve valid", base, expect="ok", **serve),
    ]
    for flag, values in {"--port": ["-1", "70000", "http"], "--batch-size": ["0"], "--batch-wait-ms": ["-5"],
                         "--threads": ["0"], "--max-input-tokens": ["0"], "--dtype": ["float8"]}.items():
        base_args = base[:-2] if flag == "--port" else base
        cases += bad_numbers("teacher-serve", base_args, flag, values, **serve)
    return cases


def _experiment(tmp: Path, ctx: dict) -> None:
    """A finished BM25-only experiment (world/, mini.yaml, runs/mini) copied into the case directory."""
    shutil.copytree(ctx["W"], tmp / "world")
    shutil.copy2(ctx["PIPE"], tmp / "mini.yaml")
    shutil.copytree(ctx["RUNS"], tmp / "runs")


def _truncate_run(tmp: Path, ctx: dict) -> None:
    _experiment(tmp, ctx)
    run = next((tmp / "runs" / "mini").glob("search-bm25-rm3-*/run.trec"))
    lines = run.read_text().splitlines(keepends=True)
    run.write_text("".join(lines[: len(lines) // 3]))


def _delete_run(tmp: Path, ctx: dict) -> None:
    _experiment(tmp, ctx)
    next((tmp / "runs" / "mini").glob("search-bm25-rm3-*/run.trec")).unlink()


def _rm3_run_intact(tmp: Path, ctx: dict, res: Result) -> str | None:
    run = next((tmp / "runs" / "mini").glob("search-bm25-rm3-*/run.trec"), None)
    if res.exit != 0:
        return None
    return run_complete(str(run.relative_to(tmp)))(tmp, ctx, res) if run else "the deleted run was not rebuilt"


def pipeline_yaml(text: str) -> Setup:
    return chain(copy("{W}", "world"), write("p.yaml", text))


def pipeline_run_cases() -> list[Case]:
    run = ["run", "p.yaml", "--runs-dir", "runs", "--no-report", "--no-progress"]
    good = MINI_PIPELINE
    again = ["run", "mini.yaml", "--runs-dir", "runs", "--no-report", "--no-progress"]
    return [
        Case("run pipeline missing", ["run", "nope.yaml"]),
        Case("run pipeline empty", run, setup=write("p.yaml", "")),
        Case("run pipeline YAML syntax error", run, setup=write("p.yaml", "experiment: [x\n")),
        Case("run pipeline is a list", run, setup=write("p.yaml", "- a\n- b\n")),
        Case("run misspelled top-level key", run, setup=pipeline_yaml(good.replace("retriever:", "retreiver:"))),
        Case("run unknown row field", run, setup=pipeline_yaml(good.replace("label: BM25}", "label: BM25, K1: 3.0}"))),
        Case("run wrong type evaluation.k", run, setup=pipeline_yaml(good.replace("k: 100", "k: ten"))),
        Case("run unknown metric", run, setup=pipeline_yaml(good.replace("nDCG@10,", "nDCG@ten,"))),
        Case("run dataset missing", run, setup=write("p.yaml", good.replace("{data: world}", "{data: nowhere}"))),
        Case("run no rows", run, setup=pipeline_yaml(good.split("rows:")[0] + "rows: []\n")),
        Case("run --set misspelled key", [*run, "--set", "retreiver.k1=3"], setup=pipeline_yaml(good)),
        Case("run --set without =", [*run, "--set", "retriever.k1"], setup=pipeline_yaml(good)),
        Case("run --set wrong type", [*run, "--set", "retriever.k1=high"], setup=pipeline_yaml(good)),
        Case("run --rows unknown row", [*run, "--rows", "bm26"], setup=pipeline_yaml(good)),
        Case("run cached run truncated", again, expect="ok", setup=_truncate_run, check=_rm3_run_intact),
        Case("run cached run deleted", again, expect="ok", setup=_delete_run, check=_rm3_run_intact),
        Case("run two writers", again, expect="ok", mode="concurrent", setup=_delete_run, check=_rm3_run_intact),
    ]


def table_cases() -> list[Case]:
    return [
        Case("table experiment missing", ["table", "nope"]),
        Case("table dir without manifest", ["table", "e"], setup=lambda t, c: (t / "e").mkdir()),
        Case("table unknown baseline", ["table", "runs/mini", "--baseline", "bm26", "--report", "none"], setup=_experiment),
        Case("table unknown metric", ["table", "runs/mini", "--metrics", "nDCG@ten", "--report", "none"],
             setup=_experiment),
        Case("table run file truncated", ["table", "runs/mini", "--report", "none"], setup=_truncate_run),
        Case("table run file deleted", ["table", "runs/mini", "--report", "none"], setup=_delete_run,
             check=lambda t, c, r: "exit 0 with a row missing" if r.exit == 0 else None),
        Case("table --out is a file", ["table", "runs/mini", "--out", "f"], setup=chain(_experiment, write("f", "x"))),
        Case("table valid", ["table", "runs/mini", "--report", "none"], expect="ok", setup=_experiment),
    ]


def make_world_cases() -> list[Case]:
    ok = ["make-world", "--out", "w", "--scale", "0.05", "--n-test", "5"]
    keep_setup, keep_check = file_unchanged("w/my-notes.txt")
    manifest = lambda t, c, r: None if r.exit != 0 or (t / "w" / "MANIFEST.json").is_file() else "no MANIFEST.json"  # noqa: E731
    cases = [
        Case("make-world over a user's directory", ok, setup=keep_setup, check=keep_check),
        Case("make-world --no-overwrite on existing", [*ok, "--no-overwrite"], setup=keep_setup, check=keep_check),
        Case("make-world out is a file", ["make-world", "--out", "f", "--scale", "0.05"], setup=file_unchanged("f")[0],
             check=file_unchanged("f")[1]),
        Case("make-world again (own output)", ok, mode="twice", check=both(manifest, no_tmp_left)),
        Case("make-world again --overwrite (own output)", [*ok, "--overwrite"], expect="ok", mode="twice",
             check=both(manifest, no_tmp_left)),
        Case("make-world interrupted then rerun", ["make-world", "--out", "w"], expect="ok", mode="interrupt",
             kill_after=1.5, rerun=["--overwrite"], check=both(manifest, no_tmp_left)),
        Case("make-world two writers", ok, expect="ok", mode="concurrent", check=both(manifest, no_tmp_left)),
    ]
    for flag, values in {"--scale": ["0", "-1", "nan"], "--n-test": ["0", "-1"], "--train-paraphrases": ["-1"],
                         "--seed": ["abc"]}.items():
        cases += bad_numbers("make-world", ok, flag, values)
    return cases


def all_cases() -> list[Case]:
    return (general_cases() + index_cases() + search_cases() + evaluate_cases() + teach_cases()
            + teacher_serve_cases() + build_data_cases() + train_cases() + generate_cases() + expand_cases()
            + pipeline_run_cases() + table_cases() + make_world_cases())


# ----------------------------------------------------------------------------------------------- runner

def _plain(case: Case, args: list[str], tmp: Path, env: dict) -> tuple[int | str, str, str, str]:
    return (*_run(args, tmp, env, case.timeout), "")


def _twice(case: Case, args: list[str], tmp: Path, env: dict) -> tuple[int | str, str, str, str]:
    rc1, _, err1 = _run(args, tmp, env, case.timeout)
    rc, out, err = _run(args + case.rerun, tmp, env, case.timeout)
    return rc, out, err, f"first run exit {rc1}"


def _concurrent(case: Case, args: list[str], tmp: Path, env: dict) -> tuple[int | str, str, str, str]:
    procs = [_popen(args, tmp, env), _popen(args, tmp, env)]
    results = [_wait(p, case.timeout) for p in procs]
    rc = "/".join(str(r[0]) for r in results)
    return rc, "\n".join(r[1] for r in results), "\n".join(r[2] for r in results), "two processes started together"


def _interrupt(case: Case, args: list[str], tmp: Path, env: dict) -> tuple[int | str, str, str, str]:
    proc = _popen(args, tmp, env)
    start, note = time.monotonic(), "killed mid-run"
    limit = 60.0 if case.kill_when else case.kill_after
    while time.monotonic() - start < limit and proc.poll() is None:
        if case.kill_when and case.kill_when(tmp):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        note = f"finished (exit {proc.returncode}) before the kill"
    _kill(proc)
    proc.communicate()
    rc, out, err = _run(args + case.rerun, tmp, env, case.timeout)
    return rc, out, err, note + "; rerun"


def _serve(case: Case, args: list[str], tmp: Path, env: dict) -> tuple[int | str, str, str, str]:
    """Start a server; once it says it is serving, stop it and record exit "served"."""
    out_f, err_f = open(tmp / ".stdout", "w+"), open(tmp / ".stderr", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "radcot", *args], cwd=tmp, env=env, stdout=out_f, stderr=err_f,
                            start_new_session=True)
    start, rc = time.monotonic(), None
    while rc is None:
        time.sleep(0.2)
        rc = proc.poll()
        text = (tmp / ".stderr").read_text(errors="replace") + (tmp / ".stdout").read_text(errors="replace")
        if rc is None and ("serving" in text.lower() or time.monotonic() - start > case.timeout):
            rc = "served" if "serving" in text.lower() else "timeout"
            _kill(proc)
            proc.wait()
    out_f.close(), err_f.close()
    out, err = (tmp / ".stdout").read_text(errors="replace"), (tmp / ".stderr").read_text(errors="replace")
    return rc, out, err, "stopped once serving" if rc == "served" else ""


MODES = {"serve": _serve, "plain": _plain, "twice": _twice, "concurrent": _concurrent, "interrupt": _interrupt}


def message_line(out: str, err: str) -> str:
    """The line a user reads: the error line, else a traceback's last line, else the first line of output."""
    lines = [ln.strip() for ln in (err + "\n" + out).splitlines() if ln.strip()]
    if TRACEBACK in err or TRACEBACK in out:
        tb_lines = [ln.strip() for ln in (err or out).splitlines() if ln.strip()]
        return tb_lines[-1][:200] if tb_lines else ""
    for ln in lines:
        if "error" in ln.lower() and not ln.startswith("usage:"):
            return ln[:200]
    return lines[0][:200] if lines else ""


def _exit_ok(case: Case, rc: int | str) -> bool:
    codes = [int(c) if c.lstrip("-").isdigit() else None for c in str(rc).split("/")]
    if case.expect == "ok" and rc == "served":
        return True
    if case.expect == "ok":
        return 0 in codes and all(c is not None and c >= 0 for c in codes)
    return all(c is not None and c > 0 for c in codes)


def _verdict(case: Case, rc, tb: bool, problem: str | None) -> str:
    if problem:
        return "wrong data"
    if "timeout" in str(rc):
        return "timeout"
    if tb:
        return "traceback"
    return "ok" if _exit_ok(case, rc) else "wrong exit"


def run_case(case: Case, ctx: dict, workdir: Path, keep: bool = False) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=workdir))
    args = [a.format_map(ctx) for a in case.args]
    t0 = time.monotonic()
    try:
        if case.setup:
            case.setup(tmp, ctx)
        rc, out, err, note = MODES[case.mode](case, args, tmp, _env(case.env))
    except Exception as e:  # noqa: BLE001 - a harness problem is recorded, not fatal
        return Result(case.name, case.command, " ".join(args), case.expect, "harness", f"{type(e).__name__}: {e}",
                      False, None, "", "harness error", time.monotonic() - t0)
    tb = TRACEBACK in out or TRACEBACK in err
    res = Result(case.name, case.command, "radcot " + " ".join(args), case.expect, rc, message_line(out, err), tb,
                 None, note, "", time.monotonic() - t0, out[-2000:], err[-4000:])
    problem = case.check(tmp, ctx, res) if case.check else None
    res.data_ok = None if case.check is None else problem is None
    res.data_note = "; ".join(x for x in (note, problem) if x)
    res.verdict = _verdict(case, rc, tb, problem)
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def run_cases(cases: list[Case], ctx: dict, workdir: Path, jobs: int = 2, keep: bool = False,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[Result]:
    """Run ``cases`` (``jobs`` at a time) and return their results in case order."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = [0]

    def one(case: Case) -> Result:
        res = run_case(case, ctx, workdir, keep)
        done[0] += 1
        log(f"[{done[0]}/{len(cases)}] {res.verdict:<11} {res.seconds:5.1f}s  {case.name}")
        return res

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, cases))


# ----------------------------------------------------------------------------------------------- report

VERDICTS = ("ok", "wrong data", "traceback", "wrong exit", "timeout", "harness error")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: list[Result]) -> str:
    lines = ["| # | case | command | expected | exit | first line | traceback? | data ok? | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        data = "-" if r.data_ok is None else ("yes" if r.data_ok else f"NO: {r.data_note}")
        lines.append(f"| {i} | {_cell(r.name)} | {r.command} | {r.expect} | {r.exit} | {_cell(r.message)} | "
                     f"{'YES' if r.traceback else 'no'} | {_cell(data)} | {r.verdict} |")
    return "\n".join(lines) + "\n\n" + totals(results)


def totals(results: list[Result]) -> str:
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    lines = [f"**{len(results)} cases**: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n),
             f"tracebacks printed: {sum(r.traceback for r in results)}; "
             f"data lost/duplicated/replaced: {counts['wrong data']}", "",
             "| command | cases | " + " | ".join(VERDICTS[:-1]) + " |", "|---|---|" + "---|" * (len(VERDICTS) - 1)]
    for cmd in dict.fromkeys(r.command for r in results):
        rs = [r for r in results if r.command == cmd]
        lines.append(f"| {cmd} | {len(rs)} | " + " | ".join(str(sum(r.verdict == v for r in rs))
                                                                      for v in VERDICTS[:-1]) + " |")
    return "\n".join(lines) + "\n"


def select(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    if not patterns:
        return cases
    return [c for c in cases if any(p in c.name for p in patterns)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", metavar="FILE", help="also write the results (with each case's output tails) as JSON")
    p.add_argument("-k", action="append", metavar="TEXT", help="only cases whose name contains TEXT (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="cases run at a time (default 2)")
    p.add_argument("--workdir", help="where fixtures and case directories go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep each case's directory")
    p.add_argument("--list", action="store_true", help="list the case names and exit")
    args = p.parse_args(argv)
    cases = select(all_cases(), args.k)
    if args.list:
        print("\n".join(f"{c.command}\t{c.name}" for c in cases))
        return 0
    if not cases:
        print(f"no case matches {args.k}", file=sys.stderr)
        return 2
    return _run_all(cases, args)


def _run_all(cases: list[Case], args) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="radcot-faults-")).resolve()
    t0 = time.monotonic()
    fixtures = workdir / "fixtures"
    print(f"building fixtures in {fixtures} ...", file=sys.stderr, flush=True)
    ctx = placeholders(fixtures) if (fixtures / "tinylm" / "config.json").is_file() else build_fixtures(fixtures)
    servers, server = start_servers()
    ctx.update(servers)
    print(f"fixtures ready in {time.monotonic() - t0:.0f}s; {len(cases)} cases", file=sys.stderr, flush=True)
    try:
        results = run_cases(cases, ctx, workdir / "cases", args.jobs, args.keep)
    finally:
        server.shutdown()
    print(markdown(results))
    print(f"total wall time {time.monotonic() - t0:.0f}s (jobs={args.jobs})")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": time.monotonic() - t0, "cases": [asdict(r) for r in results]},
                                              indent=1))
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
