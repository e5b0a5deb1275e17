"""The ``openai`` teacher backend and the resumable runner against a real HTTP server on 127.0.0.1.

The server (stdlib ``ThreadingHTTPServer``) speaks the OpenAI chat API and injects faults chosen by
tags in the query text: ``[429]`` (first attempt: 429 with ``Retry-After: 1``), ``[500]`` (two 500s),
``[hang]`` (first attempt sleeps past the client timeout), ``[badjson]`` (200 with a broken body),
``[noshape]`` (200 JSON without choices), ``[drop]`` (connection closed without a response) and
``[dead]`` (503 for as long as ``server.dead`` is set); ``[bye]`` is answered with ``Connection: close``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from radcot.records import Query, RadcotError
from radcot.teacher import GenerationParams, TeacherConfigMismatch, TeacherError, read_teacher_output, teach
from radcot.teacher.runner import TeacherFailed
from radcot.teacher.openai import OpenAIBackend, parse_retry_after
from radcot.teacher.runner import config_path, failed_path

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "RADCOT_TEST_TEACHER_KEY"
KEY = "sk-radcot-test-4f1c9e7a2b-SECRET"
PROMPT = "Q: {query}"
MODEL = "fault-model"


def answer_for(query: str) -> str:
    return f"ANSWER({query})\nsecond line"


class FaultServer:
    """An OpenAI-compatible test server that injects faults by query tag; counts every attempt."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.dead = True
        self.lock = threading.Lock()
        self.attempts: dict[str, list[float]] = defaultdict(list)  # query -> attempt timestamps
        self.answered: Counter = Counter()  # query -> 200 answers sent
        self.bad_auth = 0
        self.held = 0  # requests being held for ``delay`` seconds right now (the client is inside its work)
        self.changed = threading.Condition(self.lock)
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, status, obj, headers=()):
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "no route"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    with srv.lock:
                        srv.bad_auth += 1
                    return self._json(401, {"error": {"message": "bad key"}})
                if body.get("model") != MODEL:
                    return self._json(404, {"error": {"message": f"model {body.get('model')} not found"}})
                query = body["messages"][-1]["content"].removeprefix("Q: ")
                with srv.lock:
                    srv.attempts[query].append(time.monotonic())
                    n = len(srv.attempts[query])
                if "[429]" in query and n == 1:
                    return self._json(429, {"error": {"message": "slow down"}}, [("Retry-After", "1")])
                if "[500]" in query and n <= 2:
                    return self._json(500, {"error": {"message": "boom"}})
                if "[dead]" in query and srv.dead:
                    return self._json(503, {"error": {"message": "overloaded"}})
                if "[hang]" in query and n == 1:
                    time.sleep(2.5)  # the client gives up after 1 s
                    return
                if "[badjson]" in query and n == 1:
                    return self._json(200, b'{"choices": [{"message": {"content": "trunc')
                if "[noshape]" in query and n == 1:
                    return self._json(200, {"object": "chat.completion", "choices": []})
                if "[drop]" in query and n == 1:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if srv.delay:
                    with srv.lock:
                        srv.held += 1
                        srv.changed.notify_all()
                    time.sleep(srv.delay)
                with srv.lock:
                    srv.held -= bool(srv.delay)
                    srv.answered[query] += 1
                    srv.changed.notify_all()
                bye = "[bye]" in query  # answer, then close the connection (no keep-alive to reuse)
                self.close_connection = self.close_connection or bye
                self._json(200, {
                    "id": "x", "object": "chat.completion", "model": MODEL,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_for(query)},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
                }, [("Connection", "close")] if bye else ())

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # broken pipes after hangs/drops are expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, condition, timeout: float = 120.0) -> bool:
        """Block until ``condition(self)`` holds (checked whenever a request starts or ends)."""
        with self.changed:
            return self.changed.wait_for(lambda: condition(self), timeout)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FaultServer()
    yield s
    s.close()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def backend(server, **kw) -> OpenAIBackend:
    opts = dict(base_url=server.base_url, model=MODEL, api_key_env=KEY_ENV, timeout=1.0, max_attempts=4,
                backoff_base=0.01, backoff_max=0.05, concurrency=4)
    opts.update(kw)
    return OpenAIBackend(**opts)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_no_key(directory: Path, *texts: str) -> None:
    for p in directory.rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text(encoding="utf-8", errors="replace"), f"API key leaked into {p}"
    for t in texts:
        assert KEY not in t


FAULTS = ["[429]", "[500]", "[hang]", "[badjson]", "[noshape]", "[drop]"]


def test_every_fault_retried_and_each_query_answered_once(server, key_env, tmp_path):
    queries = [Query(f"q{i}", f"query {i} {FAULTS[i % len(FAULTS)] if i < 12 else ''}".strip()) for i in range(30)]
    out = tmp_path / "cots.jsonl"
    with backend(server) as be:
        summary = teach(be, queries, out, prompt=PROMPT, concurrency=4, show_progress=False)
    assert (summary.done, summary.failed, summary.total) == (30, 0, 30), summary.errors
    recs = lines_of(out)
    assert Counter(r["query_id"] for r in recs) == Counter(q.query_id for q in queries)  # exactly once each
    by_id = {r["query_id"]: r for r in recs}
    for q in queries:
        r = by_id[q.query_id]
        # the paper's post-processing: newlines replaced by a space
        assert r["text"] == answer_for(q.text).replace("\n", " ")
        assert r["error"] is None and r["empty"] is False and r["model"] == MODEL and r["prompt_name"] == "custom"
        expected_attempts = 3 if "[500]" in q.text else 2 if any(f in q.text for f in FAULTS) else 1
        assert r["attempts"] == expected_attempts, (q, r)
        assert server.answered[q.text] == 1
        assert r["params"] == GenerationParams().to_dict()
    # Retry-After: 1 was honoured (the second attempt came at least ~1 s after the 429)
    for q in queries:
        if "[429]" in q.text:
            t = server.attempts[q.text]
            assert t[1] - t[0] >= 0.95, t
    assert server.bad_auth == 0
    assert not failed_path(out).exists()
    cfg = json.loads(config_path(out).read_text())
    assert cfg["backend"] == "openai" and cfg["backend_config"]["api_key_env"] == KEY_ENV
    assert cfg["last_summary"]["done"] == 30
    assert_no_key(tmp_path)
    assert len(read_teacher_output(out)) == 30


@pytest.mark.fast
def test_failed_queries_recorded_then_retried_next_run(server, key_env, tmp_path):
    queries = [Query("a", "alpha"), Query("b", "beta [dead]"), Query("c", "gamma"), Query("d", "delta [dead]")]
    out = tmp_path / "cots.jsonl"
    with backend(server, max_attempts=3) as be:
        s1 = teach(be, queries, out, prompt=PROMPT, concurrency=2, show_progress=False)
    assert (s1.done, s1.failed) == (2, 2)
    failed = {r["query_id"]: r for r in lines_of(failed_path(out))}
    assert set(failed) == {"b", "d"}
    assert all("HTTP 503" in r["error"] and r["attempts"] == 3 and r["text"] is None for r in failed.values())
    assert sorted(r["query_id"] for r in lines_of(out)) == ["a", "c"]
    got = read_teacher_output(out)
    assert set(got) == {"a", "b", "c", "d"} and got["b"]["error"] and got["a"]["error"] is None

    server.dead = False  # the endpoint recovers; rerunning the same command retries only the failures
    with backend(server, max_attempts=3) as be:
        s2 = teach(be, queries, out, prompt=PROMPT, concurrency=2, show_progress=False)
    assert (s2.skipped, s2.done, s2.failed) == (2, 2, 0)
    assert Counter(r["query_id"] for r in lines_of(out)) == Counter("abcd")
    assert not failed_path(out).exists()
    assert all(server.answered[q.text] == 1 for q in queries)
    assert_no_key(tmp_path)


@pytest.mark.fast
def test_non_retryable_error_fails_at_once_and_model_discovery(server, key_env, tmp_path):
    with backend(server, model=None) as be:
        assert be.model == MODEL  # discovered from GET /v1/models
    out = tmp_path / "wrong.jsonl"
    with backend(server, model="no-such-model") as be:  # every query fails: the run stops, naming the error
        with pytest.raises(TeacherFailed, match="failed for 2 of the 2 .*HTTP 404.*rerun the same command"):
            teach(be, [Query("1", "one"), Query("2", "two")], out, prompt=PROMPT, show_progress=False)
    recs = lines_of(failed_path(out))
    assert all(r["attempts"] == 1 and "HTTP 404" in r["error"] and "--model no-such-model" in r["error"] for r in recs)


@pytest.mark.fast
def test_wrong_key_is_reported_without_leaking_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY + "-wrong")
    out = tmp_path / "k.jsonl"
    with backend(server) as be:
        s = teach(be, [Query("1", "one")], out, prompt=PROMPT, show_progress=False, max_failed_fraction=1.0)
    assert s.failed == 1 and f"${KEY_ENV}" in s.errors["1"]
    assert_no_key(tmp_path)
    assert KEY not in failed_path(out).read_text()


@pytest.mark.fast
def test_config_mismatch_refuses_to_mix_outputs(server, key_env, tmp_path):
    out = tmp_path / "cots.jsonl"
    qs = [Query("1", "one")]
    with backend(server) as be:
        teach(be, qs, out, prompt=PROMPT, show_progress=False)
        with pytest.raises(TeacherConfigMismatch, match="max_tokens"):
            teach(be, qs, out, prompt=PROMPT, params=GenerationParams(max_tokens=20), show_progress=False)
        s = teach(be, qs, out, prompt=PROMPT, params=GenerationParams(max_tokens=20), show_progress=False, force=True)
        assert s.skipped == 1 and s.done == 0
        s = teach(be, qs, out, prompt=PROMPT, show_progress=False, overwrite=True)
        assert s.done == 1


@pytest.mark.fast
def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_text('{"query_id": "1", "text": "x", "error": null}\nGARBAGE\n{"query_id": "2", "text": "y", "error": null}\n')
    from radcot.records import DataFormatError

    with pytest.raises(DataFormatError, match="line 2"):
        read_teacher_output(out)


@pytest.mark.fast
def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(http_date) <= 31


def _teach_cmd(server, queries: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "radcot", "teach", "--backend", "openai", "--base-url", server.base_url,
            "--model", MODEL, "--api-key-env", KEY_ENV, "--queries", str(queries), "--out", str(out),
            "--prompt", PROMPT, "--concurrency", "4", "--timeout", "5", "--no-progress"]


def test_sigkill_mid_run_then_restart_each_query_once(tmp_path):
    server = FaultServer(delay=0.05)
    try:
        n = 300
        qfile = tmp_path / "queries.tsv"
        qfile.write_text("".join(f"{i}\tkill test query number {i}\n" for i in range(n)))
        out = tmp_path / "cots.jsonl"
        env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(_teach_cmd(server, qfile, out), env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 40:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"teach ended before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # also simulate a write torn by the kill: half a record of a query not yet done, no newline
        data = out.read_bytes()
        if not data.endswith(b"\n"):  # the kill itself tore a line: keep it (it must be repaired too)
            data = data[: data.rfind(b"\n") + 1]
        done_before = {json.loads(x)["query_id"] for x in data.decode().splitlines()}
        assert 40 <= len(done_before) < n
        torn_id = next(str(i) for i in range(n) if str(i) not in done_before)
        with open(out, "ab") as f:
            f.write(json.dumps({"query_id": torn_id, "query": "kill test", "text": "half"}).encode()[:35])

        res = subprocess.run(_teach_cmd(server, qfile, out), env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        recs = lines_of(out)  # every line parses: the torn one was cut off
        counts = Counter(r["query_id"] for r in recs)
        assert set(counts) == {str(i) for i in range(n)} and max(counts.values()) == 1
        by_id = {r["query_id"]: r for r in recs}
        assert by_id[torn_id]["text"] == answer_for(f"kill test query number {torn_id}").replace("\n", " ")
        summary = json.loads(config_path(out).read_text())["last_summary"]
        assert summary["skipped"] == len(done_before) and summary["done"] == n - len(done_before)
        assert f"{n - len(done_before)} done" in res.stdout
        assert_no_key(tmp_path, res.stdout, res.stderr)
    finally:
        server.close()


def test_cli_exit_status_and_failed_listing(tmp_path):
    server = FaultServer()
    try:
        qfile = tmp_path / "q.tsv"
        qfile.write_text("1\tfine\n2\tbroken [dead]\n")
        out = tmp_path / "o.jsonl"
        env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(REPO)}
        cmd = _teach_cmd(server, qfile, out) + ["--max-attempts", "2"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1
        assert "1 of 2 queries failed (last error:" in res.stderr and "HTTP 503" in res.stderr and "rerun the same command" in res.stderr
        assert_no_key(tmp_path, res.stdout, res.stderr)
    finally:
        server.close()


def test_ctrl_c_stops_promptly_and_resumes(tmp_path):
    """SIGINT while requests are in flight: exit 130 once they end; the 4 queued chunks are dropped, not run.

    The signal is sent on an event, not after a sleep: the server has answered 4 queries and holds all 4 requests
    of the child's next round (so the child is inside its work, 4 chunks queued, 52 queries to go). Whether the
    queued chunks ran is counted by the server, not guessed from a wall-clock time."""
    hold = 3.0
    server = FaultServer(delay=hold)
    try:
        n = 60
        qfile = tmp_path / "queries.tsv"
        qfile.write_text("".join(f"{i}\tinterrupt query {i}\n" for i in range(n)))
        out = tmp_path / "cots.jsonl"
        env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(_teach_cmd(server, qfile, out), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        inside = server.wait_for(lambda s: sum(s.answered.values()) >= 4 and s.held == 4)
        assert inside and proc.poll() is None, f"teach is not inside its work: {proc.poll()} {server.answered}"
        with server.lock:
            started = sum(len(v) for v in server.attempts.values())
        proc.send_signal(signal.SIGINT)
        t = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t
        assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
        with server.lock:  # the 4 requests in flight were finished; not one queued chunk was sent after the signal
            assert sum(len(v) for v in server.attempts.values()) == started
        assert took < 15, took  # the in-flight requests (3 s), not the 52 queries left (~40 s); loose for loaded CI
        done_before = len(lines_of(out))
        assert done_before < n
        server.delay = 0.0
        res = subprocess.run(_teach_cmd(server, qfile, out) + ["--concurrency", "16"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        counts = Counter(r["query_id"] for r in lines_of(out))
        assert len(counts) == n and max(counts.values()) == 1
    finally:
        server.close()


# ------------------------------------------------------------------------------------ an endpoint that is not there


def _closed_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.fast
def test_a_closed_port_stops_the_run_at_once_naming_url_error_and_fix(tmp_path):
    from radcot.teacher.base import TeacherUnreachable

    url = _closed_url()
    queries = [Query(str(i), f"query {i}") for i in range(30)]
    out = tmp_path / "cots.jsonl"
    t0 = time.monotonic()
    with OpenAIBackend(base_url=url, model=MODEL, concurrency=4) as be:  # the default backoff (1 s base)
        with pytest.raises(TeacherUnreachable) as e:
            teach(be, queries, out, concurrency=4, show_progress=False)
    assert time.monotonic() - t0 < 5  # before: 6 attempts with backoff per query, ~37 s for 10 queries
    msg = str(e.value)
    assert msg.startswith(f"cannot connect to the teacher endpoint {url}: ") and "Connection refused" in msg
    assert f"`radcot teacher-serve --port {url.split(':')[2].split('/')[0]}`" in msg and "--base-url" in msg
    assert "\n" not in msg
    assert not lines_of(out)  # nothing answered, and (see test_teacher_cot_files) nothing pinned


@pytest.mark.fast
def test_an_expander_over_a_closed_port_fails_in_seconds(tmp_path):
    from radcot.expansion import QueryExpander

    queries = [Query(str(i), f"query {i}") for i in range(30)]
    with OpenAIBackend(base_url=_closed_url(), model=MODEL, backoff_base=0.05, concurrency=1) as be:
        t0 = time.monotonic()
        with pytest.raises(RadcotError, match="cannot connect to the teacher endpoint"):
            QueryExpander(be).expand_all(queries)
    assert time.monotonic() - t0 < 3  # before: 30 queries x 6 attempts (~23 s here, 431 s with the default backoff)


def test_once_the_endpoint_answered_connection_failures_are_retried(tmp_path, key_env):
    server = FaultServer()
    with backend(server, max_attempts=3, concurrency=1) as be:
        assert be.generate_one("Q: first [bye]", GenerationParams()).text  # the endpoint answered
        server.close()  # then it goes away: transient, so each query keeps its retries
        with pytest.raises(TeacherError, match="gave up after 3 attempts") as e:
            be.generate_one("Q: second", GenerationParams())
    assert type(e.value) is TeacherError and "connection failed" in str(e.value)


def test_retries_are_one_warning_each_and_http_requests_are_not_logged(tmp_path):
    """At the default log level: a WARNING per retry (attempt i/n, reason, wait), no per-request INFO lines."""
    server = FaultServer()
    try:
        qfile = tmp_path / "q.tsv"
        qfile.write_text("1\tfine\n2\tflaky [500]\n3\tokay\n")
        out = tmp_path / "o.jsonl"
        env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(REPO)}
        res = subprocess.run(_teach_cmd(server, qfile, out) + ["--concurrency", "1"], env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        server.close()
    assert res.returncode == 0, res.stderr
    assert "HTTP Request:" not in res.stderr and "httpx" not in res.stderr
    retries = [ln for ln in res.stderr.splitlines() if " WARNING " in ln and "attempt" in ln]
    assert len(retries) == 2, res.stderr
    for i, ln in enumerate(retries, 1):
        assert f"attempt {i}/6 failed (HTTP 500" in ln and "retrying in " in ln, ln


@pytest.mark.fast
def test_model_discovery_on_a_closed_port_says_the_server_is_not_there():
    from radcot.teacher.base import TeacherUnreachable

    url = _closed_url()
    with pytest.raises(TeacherUnreachable, match=rf"cannot connect to the teacher endpoint {url}: .*Is a server"):
        OpenAIBackend(base_url=url)  # no model: it asks GET /models (before: 'pass --model NAME', the wrong fix)


@pytest.mark.fast
def test_an_unknown_remote_host_is_reported_without_the_local_server_hint():
    from radcot.teacher.base import TeacherUnreachable

    with OpenAIBackend(base_url="http://no-such-host.invalid/v1", model=MODEL, backoff_base=0.01) as be:
        with pytest.raises(TeacherUnreachable, match=r"no-such-host.invalid/v1: .*Is this machine online") as e:
            be.generate_one("hello", GenerationParams())
    assert "teacher-serve" not in str(e.value)
