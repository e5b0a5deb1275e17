"""``radcot teacher-serve`` for real: the CLI in a subprocess on 127.0.0.1 (``--port 0``) serving the demo world's
``kb`` teacher (answers instantly) on the shared serving stack, called over HTTP and by the ``openai`` backend.

Expected answers come from the same :class:`KBTeacher` in-process. The slow HF model path is in
test_teacher_hf.py (``-m slow -k teacher_serve``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
parser = pytest.importorskip("prometheus_client.parser")

REPO = Path(__file__).resolve().parents[1]
WORLD = REPO / "data" / "demo"
KEY_VAR, KEY = "RADCOT_TEST_TEACHER_KEY", "teacher-s3cret"
START_S = 120


class TeacherServe:
    """A ``radcot teacher-serve --backend kb`` subprocess: its base URL (from its stdout line) and output."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "radcot", "-q", "teacher-serve", "--backend", "kb", "--backend-arg",
               f"world={WORLD}", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_S) or not self.lines:
            self.stop()
            pytest.fail(f"teacher-serve printed nothing; stderr: {self.proc.stderr.read()[-3000:]}")
        first = self.lines[0]
        assert first.startswith("radcot teacher-serve: serving kb:demo at http://127.0.0.1:"), first
        self.url = first.split(" at ")[-1].strip()
        self.root = self.url[: -len("/v1")]

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    s = TeacherServe("--batch-size", "8", "--batch-wait-ms", "300", "--max-body-bytes", "4096")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def kb():
    from radcot.demo.kb import KBTeacher

    return KBTeacher(WORLD)


@pytest.fixture(scope="module")
def queries() -> list[str]:
    lines = (WORLD / "queries.train.tsv").read_text(encoding="utf-8").splitlines()
    return [ln.split("\t")[1] for ln in lines[:16]]


def chat_body(query: str, **kw) -> dict:
    from radcot.teacher.prompts import get_prompt

    return {"model": "kb:demo", "messages": [{"role": "user", "content": get_prompt("radcot").render(query)}],
            "temperature": 0, "max_tokens": 100, **kw}


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# ------------------------------------------------------------------------------------------------- API


def test_models_health_and_metrics(server):
    models = httpx.get(f"{server.url}/models", timeout=10).json()
    assert models == {"object": "list", "data": [{"id": "kb:demo", "object": "model", "created": 0,
                                                  "owned_by": "radcot"}]}
    assert httpx.get(f"{server.root}/models", timeout=10).json() == models  # also without /v1
    assert httpx.get(f"{server.root}/health", timeout=10).json() == {"status": "ok", "model": "kb:demo"}
    assert metric(server.root, "radcot_model_loaded") == 1.0
    assert metric(server.root, "radcot_requests_total", path="/v1/models", status="200") >= 1


def test_chat_and_completions_answer_like_the_backend(server, kb, queries):
    from radcot.teacher.prompts import get_prompt

    r = httpx.post(f"{server.url}/chat/completions", json=chat_body(queries[0]), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "kb:demo" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": kb.answer(queries[0])}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    r = httpx.post(f"{server.url}/completions", json={"prompt": [get_prompt("radcot").render(queries[1])]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion" and r.json()["choices"][0]["text"] == kb.answer(queries[1])


def test_the_openai_backend_and_teach_use_it(server, kb, queries, tmp_path):
    from radcot.records import Query
    from radcot.teacher import GenerationParams, get_backend, read_teacher_output, teach

    qs = [Query(f"q{i}", q) for i, q in enumerate(queries[:6])]
    out = tmp_path / "cots.jsonl"
    with get_backend("openai", base_url=server.url, timeout=30, max_attempts=1, concurrency=3) as be:
        s = teach(be, qs, out, params=GenerationParams(max_tokens=100, temperature=0.0), concurrency=3,
                  show_progress=False)
    assert (s.done, s.failed) == (6, 0), s.errors
    recs = read_teacher_output(out)
    assert {q.query_id: recs[q.query_id]["text"] for q in qs} == {q.query_id: kb.answer(q.text) for q in qs}


@pytest.mark.parametrize("path, body, status, type_, words", [
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400,
     "invalid_request_error", "stream"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "invalid_request_error",
     "n > 1"),
    ("/chat/completions", {"model": "gpt-9", "messages": []}, 404, "model_not_found", "kb:demo"),
    ("/chat/completions", {"messages": []}, 400, "invalid_request_error", "messages"),
    ("/completions", {"prompt": 3}, 400, "invalid_request_error", "prompt"),
    ("/completions", {"prompt": "x", "max_tokens": 5000}, 400, "invalid_request_error", "limit 4096"),
    ("/completions", {"prompt": "x", "temperature": "hot"}, 400, "invalid_request_error", "temperature"),
    ("/completions", {"prompt": "x", "seed": [1]}, 400, "invalid_request_error", "seed"),
    ("/completions", {"prompt": "x", "top_p": 0}, 400, "invalid_request_error", "top_p"),
    ("/completions", [1, 2], 400, "invalid_request_error", "JSON object"),
])
def test_bad_requests_get_openai_errors(server, path, body, status, type_, words):
    r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == type_ and err["code"] == status and words in err["message"], err


def test_malformed_json_unknown_route_and_oversize_body(server):
    r = httpx.post(f"{server.url}/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{server.url}/completions", json={"prompt": "x" * 5000}, timeout=30)
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]


def test_concurrent_clients_share_batches_with_identical_answers(server, kb, queries):
    before_calls = metric(server.root, "radcot_batch_size_count")
    before_inputs = metric(server.root, "radcot_batch_size_sum")
    with httpx.Client(timeout=60) as c, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(
            lambda q: c.post(f"{server.url}/chat/completions", json=chat_body(q)).json()["choices"][0]["message"]
            ["content"], queries))
    assert answers == [kb.answer(q) for q in queries]
    calls = metric(server.root, "radcot_batch_size_count") - before_calls
    assert metric(server.root, "radcot_batch_size_sum") - before_inputs == len(queries)
    assert calls < len(queries) / 2, f"{len(queries)} concurrent requests took {calls} generate calls"


# ------------------------------------------------------------------------------------ key, queue, SIGTERM


def test_api_key_is_required_when_configured(kb, queries):
    s = TeacherServe("--api-key-env", KEY_VAR, env={**os.environ, KEY_VAR: KEY})
    try:
        r = httpx.post(f"{s.url}/chat/completions", json=chat_body(queries[0]), timeout=30)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        r = httpx.get(f"{s.url}/models", headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert r.status_code == 401
        from radcot.records import Query
        from radcot.teacher import GenerationParams, TeachItem, get_backend
        from radcot.teacher.prompts import get_prompt

        os.environ["RADCOT_TEST_CLIENT_KEY"] = KEY
        try:
            be = get_backend("openai", base_url=s.url, api_key_env="RADCOT_TEST_CLIENT_KEY", max_attempts=1)
            with be:
                (gen,) = be.generate([TeachItem(Query("q", queries[0]), get_prompt("radcot").render(queries[0]))],
                                     GenerationParams(max_tokens=100, temperature=0.0))
        finally:
            del os.environ["RADCOT_TEST_CLIENT_KEY"]
        assert gen.text == kb.answer(queries[0])
        assert s.stop() == 0
        assert KEY not in s.proc.stderr.read()
    finally:
        s.stop()


def test_unset_api_key_variable_is_a_start_up_error():
    env = {k: v for k, v in os.environ.items() if k != KEY_VAR}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    p = subprocess.run([sys.executable, "-m", "radcot", "teacher-serve", "--backend", "kb", "--backend-arg",
                        f"world={WORLD}", "--port", "0", "--api-key-env", KEY_VAR],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and KEY_VAR in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_full_queue_is_503_and_sigterm_drains_requests_in_flight(kb, queries):
    s = TeacherServe("--batch-wait-ms", "3000", "--max-queue", "1")
    out: dict = {}

    def post():
        out["r"] = httpx.post(f"{s.url}/chat/completions", json=chat_body(queries[0]), timeout=60)

    t = threading.Thread(target=post)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while metric(s.root, "radcot_queue_depth") < 1:  # the first request sits in the batcher
            assert time.monotonic() < deadline, "the first request never reached the batcher"
            time.sleep(0.05)
        r = httpx.post(f"{s.url}/chat/completions", json=chat_body(queries[1]), timeout=30)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)  # while the first request is still waiting for its batch
        assert s.proc.wait(10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        t.join(30)
        s.stop()
    assert out["r"].status_code == 200 and out["r"].json()["choices"][0]["message"]["content"] == kb.answer(queries[0])
    assert s.lines[-1].startswith("radcot teacher-serve: stopped after 2 requests in 1 batches"), s.lines
