"""The preflight, bounded network calls and teacher.concurrency end to end, against real local servers."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from radcot.net import NetworkError, get_json, network_timeout
from radcot.pipeline import Pipeline, PipelineError
from radcot.records import Query

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def silent_url():
    """A listener on 127.0.0.1 that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_network_timeout_bounds_a_download_from_a_server_that_never_answers(silent_url):
    before = socket.getdefaulttimeout()
    t0 = time.perf_counter()
    with pytest.raises((TimeoutError, socket.timeout, OSError)):
        with network_timeout(1.0):
            urllib.request.urlopen(f"{silent_url}/index.tar.gz")  # noqa: S310 - as pyserini calls it: no timeout
    assert time.perf_counter() - t0 < 10
    assert socket.getdefaulttimeout() == before
    with pytest.raises(NetworkError, match=r"no answer within 1 s"):
        get_json(f"{silent_url}/v1/models", timeout=1.0)
    with pytest.raises(ValueError, match="> 0"):
        with network_timeout(0):
            pass


def _mistakes_config(demo_world: Path, tmp_path: Path, teacher_url: str) -> dict:
    no_config = tmp_path / "half-model"
    no_config.mkdir()
    (no_config / "tokenizer.json").write_text("{}")
    return {
        "experiment": "mistakes", "dataset": {"path": str(demo_world)},
        "teacher": {"backend": "openai", "args": {"base_url": f"{teacher_url}/v1", "model": "m"}},
        "teacher_eval": {"backend": "replay", "args": {"path": str(tmp_path / "davinci.tsv")}},
        "training_queries": {"mode": "split", "queries": str(tmp_path / "queries.train.tsv")},
        "rows": [{"name": "bm25"}, {"name": "llm", "cots": "teacher"},
                 {"name": "file-cots", "cots": str(tmp_path / "cots.jsonl")},
                 {"name": "half", "student": {"model": str(no_config)}},
                 {"name": "gone", "student": {"model": str(tmp_path / "no" / "model")}},
                 {"name": "hub", "student": {"model": "google/flan-t5-small"}},
                 {"name": "tiny", "student": {"model": "tiny-t5:d_model=32"}}],
    }


def test_preflight_lists_every_problem_in_seconds(demo_world, tmp_path, silent_url, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # a cache without the model
    p = Pipeline(_mistakes_config(demo_world, tmp_path, silent_url), runs_dir=tmp_path / "runs")
    t0 = time.perf_counter()
    problems = p.check()
    took = time.perf_counter() - t0
    text = "\n".join(problems)
    assert len(problems) == 7, text
    assert "teacher: the teacher endpoint does not answer: GET " in text and "no answer within 5 s" in text
    assert f"teacher_eval.args.path: {tmp_path / 'davinci.tsv'} does not exist" in text
    assert f"training_queries.queries: {tmp_path / 'queries.train.tsv'} does not exist" in text
    assert f"rows.file-cots.cots: CoT file {tmp_path / 'cots.jsonl'} does not exist" in text
    assert "rows.half.student.model: model directory" in text and "lacks config.json" in text
    assert f"rows.gone.student.model: model directory {tmp_path / 'no' / 'model'} does not exist" in text
    assert "rows.hub.student.model: google/flan-t5-small is not in the local Hugging Face cache and HF_HUB_OFFLINE" \
           " is set; download it (`hf download google/flan-t5-small --local-dir DIR`) and pass --set " \
           "rows.hub.student.model=DIR" in text
    assert took < 15, took
    # run() stops before any stage, with the same list
    with pytest.raises(PipelineError, match=r"preflight found 7 problems"):
        p.run()
    assert not (tmp_path / "runs" / "mistakes").exists() and not (tmp_path / "runs" / "_shared").exists()


@pytest.mark.fast
def test_the_model_in_the_cache_or_a_complete_directory_passes(demo_world, tmp_path, monkeypatch):
    from radcot.experiment.preflight import _model_problem

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf-cache"
    snap = cache / "models--google--flan-t5-small" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (cache / "models--google--flan-t5-small" / "refs").mkdir()
    (cache / "models--google--flan-t5-small" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    assert _model_problem("rows.x.student.model", "google/flan-t5-small") is None
    assert "not in the local Hugging Face cache" in _model_problem("rows.x.student.model", "google/flan-t5-base")
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "spiece.model").write_text("x")
    assert _model_problem("student.model", str(full)) is None


def test_check_cli_exit_codes(demo_world, tmp_path, silent_url):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    ok = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / "demo.yaml"), "--check",
                         "--set", f"params.data={demo_world}", "--runs-dir", str(tmp_path)],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "config valid, preflight passed" in ok.stdout
    bad = tmp_path / "bad.yaml"
    import yaml

    bad.write_text(yaml.safe_dump(_mistakes_config(demo_world, tmp_path, silent_url)))
    out = subprocess.run([sys.executable, "-m", "radcot", "run", str(bad), "--check", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "preflight found 7 problems" in out.stderr and "Traceback" not in out.stderr
    typo = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / "demo.yaml"), "--check",
                           "--set", "retreiver.k1=3"], capture_output=True, text=True, env=env, timeout=120)
    assert typo.returncode == 1 and "did you mean 'retriever'" in typo.stderr and "Traceback" not in typo.stderr
    typo = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / "demo.yaml"),
                           "--set", "rows.radcot.studnt.model=x"], capture_output=True, text=True, env=env, timeout=120)
    assert typo.returncode == 2 and "rows[4](radcot).studnt: unknown key; did you mean 'student'?" in typo.stderr
    schema = subprocess.run([sys.executable, "-m", "radcot", "run", "--schema"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert schema.returncode == 0 and "| `n_context` |" in schema.stdout


@pytest.mark.fast
def test_rows_without_the_baseline_and_teacher_rows_get_them(caplog):
    """--rows R brings the table's reference rows along (the table of an experiment with an
    evaluation.teacher_row failed after every stage had run when the teacher row was not selected)."""
    p = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml")
    with caplog.at_level(logging.INFO, logger="radcot.pipeline"):
        assert p.select_rows(["radcot"]) == ["bm25", "teacher-cot", "radcot"]
    assert "adding the baseline row 'bm25'" in caplog.text and "adding the teacher row 'teacher-cot'" in caplog.text
    assert p.select_rows(["bm25", "teacher-cot", "radcot"]) == ["bm25", "teacher-cot", "radcot"]
    assert p.select_rows(None) is None
    no_teacher = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", ["evaluation.teacher_row=null"])
    assert no_teacher.select_rows(["radcot"]) == ["bm25", "radcot"]
    with pytest.raises(PipelineError, match="unknown rows"):
        p.select_rows(["radcott"])


class _CountingHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that sleeps per request and counts requests in flight."""

    lock = threading.Lock()
    in_flight = 0
    peak = 0

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        try:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(0.4)
        finally:  # no longer in flight once answered: the client may send its next request before write() returns
            with cls.lock:
                cls.in_flight -= 1
        body = json.dumps({"choices": [{"message": {"content": "Rationale: r. Answer: a."},
                                        "finish_reason": "stop"}], "usage": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_teacher_concurrency_reaches_the_openai_connection_pool(tmp_path):
    """teacher.concurrency: 12 gives 12 requests in flight (the backend's own pool default is 8)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = {"experiment": "conc", "dataset": {"path": str(tmp_path)}, "rows": [{"name": "bm25"}],
               "teacher": {"backend": "openai", "concurrency": 12,
                           "args": {"base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "m"}}}
        p = Pipeline(cfg, runs_dir=tmp_path / "runs", show_progress=False)
        out = p._teacher("teacher", [Query(str(i), f"question {i}") for i in range(36)], "train")
        assert len((out.dir / "cot.jsonl").read_text().splitlines()) == 36
        assert _CountingHandler.peak == 12
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.java
def test_network_timeout_bounds_pyserinis_own_download(silent_url, tmp_path):
    """pyserini's download_url calls urlopen without a timeout; inside network_timeout it gives up in seconds."""
    from radcot.java import start_jvm

    start_jvm()
    from pyserini.util import download_url

    t0 = time.perf_counter()
    with pytest.raises(Exception) as e, network_timeout(1.0):  # noqa: PT011 - pyserini wraps errors its own way
        download_url(f"{silent_url}/lucene-index.tar.gz", str(tmp_path), verbose=False)
    assert time.perf_counter() - t0 < 15
    assert "timed out" in str(e.value).lower() or isinstance(e.value, (TimeoutError, socket.timeout))


class _ModelsHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible server's model list."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"object": "list", "data": [{"id": "teacher-model", "object": "model"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_dl_config_made_ready_from_the_command_line_only(msmarco_dir, tmp_path):
    """trec-dl-2019.yaml, unchanged: offline it fails the preflight; --set alone (per-row models, params) fixes it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelsHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    models = tmp_path / "models"
    for name in ("google/flan-t5-base", "google/flan-t5-large", "small-student"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
        (models / name / "spiece.model").write_text("x")
    (tmp_path / "index").mkdir()
    (tmp_path / "queries.train.tsv").write_text("1\twhat is a test\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    base = [sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / "trec-dl-2019.yaml"), "--check",
            "--runs-dir", str(tmp_path / "runs"), "--set", f"params.msmarco_dir={msmarco_dir}"]
    try:
        before = subprocess.run(base, capture_output=True, text=True, env=env, timeout=180)
        assert before.returncode == 1 and "rows.radcot-small.student.model: google/flan-t5-small" in before.stderr
        sets = [f"params.index={tmp_path / 'index'}", f"params.models_dir={models}",
                f"rows.radcot-small.student.model={models / 'small-student'}",
                f"params.davinci_cots={msmarco_dir / 'teacher-cot-davinci003' / 'dl19.tsv'}",
                f"params.train_queries={tmp_path / 'queries.train.tsv'}",
                f"params.teacher_url=http://127.0.0.1:{server.server_port}/v1"]
        after = subprocess.run(base + [a for s in sets for a in ("--set", s)], capture_output=True, text=True,
                               env=env, timeout=180)
        assert after.returncode == 0, after.stderr
        assert "preflight passed" in after.stdout
        assert f"student model google/flan-t5-base -> {models / 'google' / 'flan-t5-base'}" in after.stderr
        # --rows: only what the selected rows (and the baseline) need is checked: no models_dir for base/large
        only = subprocess.run(base + ["--rows", "radcot-small"] + [a for s in sets if "models_dir" not in s
                                                                    for a in ("--set", s)],
                              capture_output=True, text=True, env=env, timeout=180)
        assert only.returncode == 0, only.stderr
    finally:
        server.shutdown()
        server.server_close()
