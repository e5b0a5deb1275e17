"""``radcot serve`` for real: the CLI in a subprocess on 127.0.0.1 (``--port 0``), a tiny trained student and a
real BM25 index, called over HTTP. Expected expansions come from an in-process :class:`radcot.Expander` on the
same student (itself checked against ``radcot generate`` in test_expander.py).

Two servers per module: ``server`` (cache on, small limits, short batch wait) and ``strict`` (an API key, no
cache, a 2 s batch wait and a queue of 4 so that requests sit in the batcher long enough to be observed; its
last test stops it with SIGTERM).
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _demo_student import REPO, demo_build, demo_index, demo_student  # noqa: F401 - session fixtures

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
parser = pytest.importorskip("prometheus_client.parser")

pytestmark = pytest.mark.java

MAX_NEW = 48
KEY_VAR, KEY = "RADCOT_TEST_SERVE_KEY", "s3cret-key-for-tests"
COMMON = ["--max-new-tokens", str(MAX_NEW), "--device", "cpu", "--threads", "1"]
START_S, READY_S = 60, 240  # to the first stdout line; to /health 200 (torch + JVM + student + warm-up)


# ------------------------------------------------------------------------------------------------ servers


class Server:
    """A ``radcot serve`` subprocess: its port (from the first stdout line), an HTTP client, its stderr log."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "radcot", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env)
        self.lines: list[str] = []
        line = self._first_line()
        if not line.startswith("radcot serve: listening on http://127.0.0.1:"):
            self.stop()
            pytest.fail(f"radcot serve's first line is {line!r}; stderr: {self.stderr()[-3000:]}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def _first_line(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], START_S)
        if not ready:
            self.stop()
            pytest.fail(f"radcot serve printed nothing in {START_S} s; stderr: {self.stderr()[-3000:]}")
        return self.proc.stdout.readline().strip()

    def client(self, **headers) -> "httpx.Client":
        return httpx.Client(base_url=self.url, timeout=120, headers=headers)

    def wait_ready(self, **headers) -> list:
        """Poll ``/health`` until 200; returns every status seen."""
        seen: list[int] = []
        deadline = time.monotonic() + READY_S
        with self.client(**headers) as c:
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    seen.append(c.get("/health").status_code)
                except httpx.TransportError as e:  # reported below if it never gets ready
                    seen.append(type(e).__name__)
                if seen[-1] == 200:
                    return seen
                time.sleep(0.05)
        pytest.fail(f"radcot serve not ready in {READY_S} s (answers {sorted(set(map(str, seen)))}); "
                    f"stderr: {self.stderr()[-3000:]}")

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def out(self, timeout: float = 5.0) -> str:
        """stdout so far (the lines printed after the first one, read as they come)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and select.select([self.proc.stdout], [], [], 0.05)[0]:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.strip())
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def _args(student: Path, index: Path, *extra: str) -> list[str]:
    return ["--student", str(student), "--index", str(index), *COMMON, *extra]


@pytest.fixture(scope="module")
def server(demo_student, demo_index, tmp_path_factory):
    s = Server(_args(demo_student, demo_index, "--max-batch", "16", "--batch-wait-ms", "50", "--cache-size", "100",
                     "--max-body-bytes", "4096", "--max-queries", "8", "--max-query-chars", "200", "--max-k", "50"),
               tmp_path_factory.mktemp("serve") / "stderr.log")
    try:
        s.health_seen = s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def strict(demo_student, demo_index, tmp_path_factory):
    s = Server(_args(demo_student, demo_index, "--api-key-env", KEY_VAR, "--cache-size", "0", "--max-queue", "4",
                     "--batch-wait-ms", "2000"),
               tmp_path_factory.mktemp("serve-strict") / "stderr.log", env=dict(os.environ, **{KEY_VAR: KEY}))
    try:
        s.wait_ready(authorization=f"Bearer {KEY}")
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def expander(demo_student, demo_index):
    """The same student in this process: the expected results."""
    import torch

    from radcot.serving import Expander

    torch.set_num_threads(1)
    return Expander.load(demo_student, index=demo_index, max_new_tokens=MAX_NEW, device="cpu")


@pytest.fixture(scope="module")
def texts(demo_world) -> list[str]:
    return [line.split("\t", 1)[1] for line in (demo_world / "queries.test.tsv").read_text().splitlines()[:40]]


def metrics(c: "httpx.Client") -> dict[tuple[str, tuple], float]:
    """``/metrics`` parsed: ``{(sample name, sorted labels): value}``."""
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in parser.text_string_to_metric_families(r.text) for s in fam.samples}


def expand_body(*pairs: tuple[str, str]) -> dict:
    return {"queries": [{"id": i, "text": t} for i, t in pairs]}


# ------------------------------------------------------------------------------------------------ the API


def test_health_is_503_until_the_student_is_loaded(server):
    assert server.health_seen[0] == 503 and server.health_seen[-1] == 200
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"


def test_expand_results_in_request_order_equal_the_expander(server, expander, texts):
    pairs = [(f"q{i}", t) for i, t in zip((5, 1, 4, 0, 3, 2), texts[:6])] + [("dup", texts[0])]
    with server.client() as c:
        r = c.post("/v1/expand", json=expand_body(*pairs))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == [i for i, _ in pairs]
    for (_, t), x in zip(pairs, results):
        assert {k: x[k] for k in ("query", "cot", "expanded", "fallback")} == expander.expand(t).to_dict()
    assert len({x["cot"] for x in results}) > 2  # the outputs depend on the query


def test_expand_formula_per_request(server, expander, texts):
    with server.client() as c:
        r = c.post("/v1/expand", json={**expand_body(("a", texts[0])), "formula": "query2doc"})
    assert r.json()["results"][0]["expanded"] == expander.expand(texts[0], formula="query2doc").expanded


def test_search_returns_ranked_hits_of_the_expansion(server, expander, texts):
    with server.client() as c:
        r = c.post("/v1/search", json={"query": texts[1], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    exp = expander.expand(texts[1])
    assert (body["query"], body["cot"], body["expanded"]) == (exp.query, exp.cot, exp.expanded)
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert [h["docid"] for h in hits] == [d.doc_id for d in expander.search(exp.expanded, k=5)]


def test_repeated_query_is_a_cache_hit(server, texts):
    with server.client() as c:
        before = metrics(c)
        first = c.post("/v1/expand", json=expand_body(("a", texts[7]))).json()
        second = c.post("/v1/expand", json=expand_body(("b", texts[7]))).json()
        after = metrics(c)
    assert first["results"][0]["cot"] == second["results"][0]["cot"]
    hits = after[("radcot_cache_hits_total", ())] - before[("radcot_cache_hits_total", ())]
    misses = after[("radcot_cache_misses_total", ())] - before[("radcot_cache_misses_total", ())]
    assert (hits, misses) == (1, 1)


def test_concurrent_clients_are_batched_with_identical_outputs(server, expander, texts):
    fresh = texts[20:36]  # not asked before in this module: none is cached
    expected = [expander.expand(t).to_dict() for t in fresh]  # one at a time
    got: dict[int, dict] = {}
    start = threading.Barrier(len(fresh))

    def client(i: int) -> None:
        with server.client() as c:
            start.wait(timeout=60)
            r = c.post("/v1/expand", json=expand_body((str(i), fresh[i])))
            got[i] = r.json()["results"][0] if r.status_code == 200 else {"status": r.status_code}

    with server.client() as c:
        before = metrics(c)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(fresh))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=180)
        after = metrics(c)
    assert [{k: got[i][k] for k in ("query", "cot", "expanded", "fallback")} for i in range(len(fresh))] == expected

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    batches, queries = delta("radcot_batch_size_count"), delta("radcot_batch_size_sum")
    assert queries == len(fresh) and batches < len(fresh)  # some generate call served several requests
    assert delta("radcot_batch_size_bucket", le="1.0") < batches  # ... i.e. a batch of more than one query


def test_metrics_exposes_the_counters(server):
    with server.client() as c:
        c.get("/health")
        m = metrics(c)
    names = {name for name, _ in m}
    for name in ("radcot_requests_total", "radcot_request_seconds_bucket", "radcot_batch_size_bucket",
                 "radcot_batch_seconds_count", "radcot_queue_depth", "radcot_cache_hits_total",
                 "radcot_cache_misses_total", "radcot_model_loaded"):
        assert name in names, name
    assert m[("radcot_requests_total", (("path", "/health"), ("status", "200")))] >= 1
    assert m[("radcot_model_loaded", ())] == 1 and m[("radcot_queue_depth", ())] == 0


# ------------------------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("path, body, status, field", [
    ("/v1/expand", b'{"queries": [', 400, None),
    ("/v1/expand", b"", 400, None),
    ("/v1/expand", b"{}", 422, "queries"),
    ("/v1/expand", b'{"queries": []}', 422, "queries"),
    ("/v1/expand", b'{"queries": "where"}', 422, "queries"),
    ("/v1/expand", b'{"queries": [{"id": "q1"}]}', 422, "queries.0.text"),
    ("/v1/expand", b'{"queries": [{"text": "x"}]}', 422, "queries.0.id"),
    ("/v1/expand", b'{"queries": [{"id": 7, "text": "x"}]}', 422, "queries.0.id"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": ["x"]}]}', 422, "queries.0.text"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": "x"}], "formula": "bogus"}', 422, "formula"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": "x"}], "extra": 1}', 422, "extra"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": "x"}, {"id": "b", "text": ""}]}', 400, "queries.1.text"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": "   "}]}', 400, "queries.0.text"),
    ("/v1/expand", json.dumps(expand_body(("a", "x" * 201))).encode(), 400, "queries.0.text"),
    ("/v1/expand", json.dumps(expand_body(*[(str(i), "x") for i in range(9)])).encode(), 400, "queries"),
    ("/v1/search", b'{"k": 3}', 422, "query"),
    ("/v1/search", b'{"query": "x", "k": "ten"}', 422, "k"),
    ("/v1/search", b'{"query": "x", "k": 0}', 422, "k"),
    ("/v1/search", b'{"query": "x", "k": 51}', 400, "k"),
    ("/v1/search", b'{"query": ""}', 400, "query"),
    # strict types (issue 26: k: true was taken as 1, "10" as 10)
    ("/v1/search", b'{"query": "x", "k": true}', 422, "k"),
    ("/v1/search", b'{"query": "x", "k": "10"}', 422, "k"),
    ("/v1/search", b'{"query": "x", "k": 10.5}', 422, "k"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": "x"}], "deadline_ms": "x"}', 422, "deadline_ms"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": "x"}], "deadline_ms": true}', 422, "deadline_ms"),
    ("/v1/expand", b'{"queries": [{"id": "a", "text": "x"}], "deadline_ms": 0}', 422, "deadline_ms"),
    ("/v1/search", b'{"query": "x", "deadline_ms": NaN}', 422, "deadline_ms"),
])
def test_bad_request_names_the_field(server, path, body, status, field):
    with server.client() as c:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"]
    assert err.get("field") == field
    if field:
        assert field in err["message"]


def test_oversize_body_is_413(server):
    big = json.dumps(expand_body(*[(str(i), "x" * 150) for i in range(30)])).encode()
    assert len(big) > 4096
    with server.client() as c:
        r = c.post("/v1/expand", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "4096" in r.json()["error"]["message"]
        chunked = c.post("/v1/expand", content=iter([big[:3000], big[3000:]]))  # no Content-Length
        assert chunked.status_code == 413 and "4096" in chunked.json()["error"]["message"]


def test_oversize_body_is_refused_before_it_is_sent(server):
    """A Content-Length over the limit is answered at once: the client never sends the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/expand HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        head = s.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head


def test_unknown_route_is_404(server):
    with server.client() as c:
        assert c.get("/v1/nothing").status_code == 404
        assert c.get("/v1/expand").status_code == 405


# ------------------------------------------------------------------------------------- API key, queue, stop


def test_api_key_is_required_and_never_logged(strict, texts):
    with strict.client() as c:
        r = c.get("/health")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "API key" in r.json()["error"]["message"]
        assert c.post("/v1/expand", json=expand_body(("a", texts[0]))).status_code == 401
    with strict.client(authorization="Bearer wrong-key") as c:
        assert c.get("/health").status_code == 401
    with strict.client(**{"x-api-key": KEY + "x"}) as c:
        assert c.get("/health").status_code == 401
    with strict.client(**{"x-api-key": KEY}) as c:
        assert c.get("/health").status_code == 200
    with strict.client(authorization=f"Bearer {KEY}") as c:
        r = c.post("/v1/expand", json=expand_body(("a", texts[0])))
        assert r.status_code == 200 and r.json()["results"][0]["query"] == texts[0]
        r = c.post("/v1/search", json={"query": texts[0], "k": 3})  # the JVM from a server thread (then: SIGTERM)
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
    assert KEY not in strict.stderr()


def _wait_queued(c: "httpx.Client", n: int) -> None:
    deadline = time.monotonic() + 30
    while metrics(c)[("radcot_queue_depth", ())] < n:
        assert time.monotonic() < deadline, f"never saw {n} queries waiting in the batcher"
        time.sleep(0.02)


def _post_in_thread(server: Server, body: dict, out: dict) -> threading.Thread:
    def run():
        with server.client(authorization=f"Bearer {KEY}") as c:
            r = c.post("/v1/expand", json=body)
            out["status"], out["body"] = r.status_code, r.json()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_full_queue_is_503_with_retry_after(strict, expander, texts):
    first: dict = {}
    with strict.client(authorization=f"Bearer {KEY}") as c:
        th = _post_in_thread(strict, expand_body(*[(str(i), t) for i, t in enumerate(texts[10:13])]), first)
        _wait_queued(c, 3)  # 3 of the 4 places taken, for the 2 s the batch waits
        r = c.post("/v1/expand", json=expand_body(("x", texts[13]), ("y", texts[14])))
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert "limit 4" in r.json()["error"]["message"]
        th.join(timeout=120)
    assert first["status"] == 200
    assert [x["cot"] for x in first["body"]["results"]] == [expander.expand(t).cot for t in texts[10:13]]


def test_client_gone_mid_request_does_not_stall_the_batcher(strict, texts):
    body = json.dumps(expand_body(("gone", texts[15]))).encode()
    with strict.client(authorization=f"Bearer {KEY}") as c:
        with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as s:  # sends all, then leaves
            s.sendall(b"POST /v1/expand HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                      b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            _wait_queued(c, 1)
        with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as s:  # half a body, then leaves
            s.sendall(b"POST /v1/expand HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                      b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        r = c.post("/v1/expand", json=expand_body(("next", texts[16])))
        assert r.status_code == 200 and r.json()["results"][0]["query"] == texts[16]
    assert strict.proc.poll() is None and "Traceback" not in strict.stderr()


def test_clients_that_leave_free_their_queue_places(strict, texts):
    """Issue 26: requests whose clients went away kept their places in the queue (and were generated), so the
    next clients got 503s. Four clients fill the queue of 4 and leave; the next client is served at once, and
    only its query is generated."""
    auth = b"Authorization: Bearer " + KEY.encode()
    with strict.client(authorization=f"Bearer {KEY}") as c:
        before = metrics(c)
        socks = []
        for i in range(4):
            body = json.dumps(expand_body((f"gone{i}", texts[30 + i]))).encode()
            s = socket.create_connection(("127.0.0.1", strict.port), timeout=30)
            s.sendall(b"POST /v1/expand HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            socks.append(s)
        _wait_queued(c, 4)  # the queue is full (the batch waits 2 s for company)
        for s in socks:
            s.close()
        deadline = time.monotonic() + 1.5  # well within the 2 s the batch waits
        while metrics(c)[("radcot_queue_depth", ())] > 0:
            assert time.monotonic() < deadline, "the queue still holds the work of clients that left"
            time.sleep(0.02)
        r = c.post("/v1/expand", json=expand_body(("next", texts[34])))
        assert r.status_code == 200, r.text
        after = metrics(c)
    gone = after[("radcot_jobs_total", (("event", "dropped_gone"),))] - before.get(
        ("radcot_jobs_total", (("event", "dropped_gone"),)), 0)
    generated = after[("radcot_batch_size_sum", ())] - before[("radcot_batch_size_sum", ())]
    assert (gone, generated) == (4, 1)


def test_sigterm_drains_requests_in_flight_and_exits_0(strict, expander, texts):
    out: dict = {}
    with strict.client(authorization=f"Bearer {KEY}") as c:
        th = _post_in_thread(strict, expand_body(("last", texts[17])), out)
        _wait_queued(c, 1)  # in flight: waiting in the batcher
    t0 = time.monotonic()
    strict.proc.send_signal(signal.SIGTERM)
    rc = strict.proc.wait(timeout=15)
    elapsed = time.monotonic() - t0
    th.join(timeout=10)
    assert rc == 0 and elapsed < 10, (rc, elapsed, strict.stderr()[-2000:])
    assert out["status"] == 200 and out["body"]["results"][0]["cot"] == expander.expand(texts[17]).cot
    assert "Traceback" not in strict.stderr()


# ---------------------------------------------------------------------------------------- start-up errors


def _start_error(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "radcot", "serve", "--port", "0", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_unset_api_key_variable_is_a_start_up_error(demo_student, demo_index):
    env = {k: v for k, v in os.environ.items() if k != KEY_VAR}
    p = _start_error(_args(demo_student, demo_index, "--api-key-env", KEY_VAR), env)
    assert p.returncode == 2 and p.stdout == ""
    assert f"--api-key-env {KEY_VAR}: that environment variable is empty or unset" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--student", "/nonexistent/run"], "does not exist"),
    (["--port", "99999"], "must be a TCP port in [0, 65535]"),
    (["--port", "http"], "expected an integer"),
    (["--workers", "0"], "must be an integer >= 1"),
    (["--deadline-ms", "0"], "must be a number > 0"),
    (["--deadline-ms", "nan"], "expected a finite number"),
    (["--batch-wait-ms", "nan"], "expected a finite number"),
    (["--threads", "0"], "must be an integer >= 1"),
    (["--precision", "int8", "--device", "cuda"], "int8 runs on the CPU only"),
    (["--precision", "fp8"], "invalid choice"),
    (["--max-batch", "0"], "argument --max-batch: must be an integer >= 1"),
    (["--index", "/nonexistent/index"], "is not a directory"),
])
def test_usage_errors_exit_2_with_one_line(demo_student, args, message):
    base = ["--student", str(demo_student)] if "--student" not in args else []
    p = _start_error(base + args)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # one line


def test_sigterm_while_loading_exits_0_at_once(demo_student, demo_index, tmp_path):
    s = Server(_args(demo_student, demo_index), tmp_path / "stderr.log")
    try:
        with s.client() as c:
            assert c.get("/health").status_code == 503  # still loading (torch, the student, the JVM)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        rc = s.proc.wait(timeout=15)
        assert rc == 0 and time.monotonic() - t0 < 5, (rc, s.stderr()[-2000:])  # not after the load (~6 s)
        assert "stopped before the student finished loading" in s.stderr()
    finally:
        s.stop()


# ------------------------------------------------------------------------------- what is served, leaving


def test_info_and_health_say_what_is_served(server, demo_student, demo_index):
    with server.client() as c:
        health = c.get("/health")
        info = c.get("/v1/info").json()
    student = info["student"]
    assert health.json()["student"] == student["fingerprint"] and len(student["fingerprint"]) == 16
    assert int(health.headers["x-radcot-worker"]) == server.proc.pid == info["pid"]
    assert (student["n_context"], student["decoding"]["max_new_tokens"], student["formula"]) == (3, MAX_NEW, "radcot")
    assert student["retriever"]["kind"] == "bm25"
    assert student["retriever"]["indexes"][0]["path"] == str(Path(demo_index).resolve())
    assert student["cpu_path"] == {"precision": "fp32", "stop_at_answer": False}
    assert info["serve"]["max_batch"] == 16 and info["serve"]["api_key"] is False
    assert f"serving student {Path(demo_student) / 'best'} (fingerprint {student['fingerprint']})" in server.out()
