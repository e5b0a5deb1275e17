"""``radcot serve`` inside a latency budget, for real: servers in subprocesses on 127.0.0.1, real students, real
BM25 indexes, real SQLite cache files.

- A served student answers as the pipeline's generate stage did (its profile, no other flags).
- Deadlines are honoured under load with a slow student (a random flan-t5-like model that never stops early),
  fallbacks are marked and counted, and the unfinished work fills the cache in the background.
- Two worker processes share one cache; the PyTerrier transformer and ``radcot cache warm`` fill the same
  entries; a changed student never reads its predecessor's entries.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _demo_student import REPO, demo_build, demo_index, demo_student  # noqa: F401 - session fixtures
from test_serve import Server, expand_body, metrics

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.java

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _env() -> dict[str, str]:
    return dict(os.environ, **ONE_THREAD,
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def texts(demo_world) -> list[str]:
    return [line.split("\t", 1)[1] for line in (demo_world / "queries.test.tsv").read_text().splitlines()[:60]]


def _start(args: list[str], tmp: Path, name: str) -> Server:
    s = Server(args, tmp / f"{name}.log", env=_env())
    s.wait_ready()
    return s


def _profile(checkpoint: Path, index: Path, out: Path, max_new_tokens: int, formula: str = "radcot",
             no_repeat_ngram_size: int = 0) -> Path:
    """A profile directory as the pipeline writes one per table row (its checkpoint elsewhere)."""
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.student.profile import Decoding, Inference, RetrieverRecord, StudentProfile

    inference = Inference(3, Decoding(max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size),
                          formula)
    StudentProfile.load(checkpoint).replace(inference=inference,
                                            retriever=RetrieverRecord.of(BM25Retriever(index))).save(out)
    return out


# ------------------------------------------------------------------------------ the evaluated student


def test_served_profile_answers_as_the_pipeline_generate_stage(demo_student, demo_index, texts, tmp_path):
    """Issue 22: ``radcot serve --student ROW_DIR`` (no other flags) reads the recorded index and applies the
    recorded n_context, decoding (no_repeat_ngram_size too) and formula: the pipeline's generate stage, exactly.
    So does ``radcot expand --student ROW_DIR``."""
    from radcot.expansion import expand_query
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.records import Query
    from radcot.student.generate import generate_cots

    row = _profile(demo_student / "best", demo_index, tmp_path / "students" / "radcot", max_new_tokens=40,
                   formula="query2doc", no_repeat_ngram_size=3)
    queries = [Query(f"t{i}", t) for i, t in enumerate(texts[:16])]
    out = generate_cots(demo_student / "best", tmp_path / "gen.jsonl", queries=queries,
                        retriever=BM25Retriever(demo_index), k=3, max_new_tokens=40, no_repeat_ngram_size=3,
                        device="cpu", show_progress=False)
    expected = {r["query_id"]: r["text"] for r in map(json.loads, out.read_text().splitlines())}
    server = _start(["--student", str(row)], tmp_path, "profile")  # no other flags
    try:
        with server.client() as c:
            results = c.post("/v1/expand", json=expand_body(*[(q.query_id, q.text) for q in queries])).json()["results"]
            info = c.get("/v1/info").json()["student"]
    finally:
        server.stop()
    assert [r["cot"] for r in results] == [expected[q.query_id] for q in queries]
    assert [r["expanded"] for r in results] == [expand_query(q.text, expected[q.query_id], "query2doc").expanded
                                                for q in queries]
    assert len(set(expected.values())) > 4  # the CoTs depend on the query: the comparison means something
    assert info["decoding"]["no_repeat_ngram_size"] == 3 and info["formula"] == "query2doc"
    assert info["profile_recorded"] is True

    # radcot expand --student ROW_DIR (no --index, no --formula): the same expansions, written to a TSV
    (tmp_path / "q.tsv").write_text("".join(f"{q.query_id}\t{q.text}\n" for q in queries))
    p = subprocess.run([sys.executable, "-m", "radcot", "expand", "--student", str(row), "--queries",
                        str(tmp_path / "q.tsv"), "--out", str(tmp_path / "exp.tsv")], capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    from radcot.expansion import read_expansions

    assert read_expansions(tmp_path / "exp.tsv") == {r["id"]: r["expanded"] for r in results}


def test_another_index_is_refused_unless_forced(demo_student, demo_index, cranfield_bm25_index, tmp_path):
    row = _profile(demo_student / "best", demo_index, tmp_path / "row", max_new_tokens=8)
    base = [sys.executable, "-m", "radcot", "serve", "--student", str(row), "--port", "0"]
    p = subprocess.run([*base, "--index", str(cranfield_bm25_index)], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert p.returncode == 2 and "is not the one the student" in p.stderr and "--force-index" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    server = _start(["--student", str(row), "--index", str(cranfield_bm25_index), "--force-index"], tmp_path, "forced")
    try:
        with server.client() as c:
            info = c.get("/v1/info").json()["student"]
    finally:
        server.stop()
    assert info["retriever"]["indexes"][0]["path"] == str(Path(cranfield_bm25_index).resolve())


# -------------------------------------------------------------------------------------------- deadlines


@pytest.fixture(scope="module")
def slow_student(demo_world, demo_index, tmp_path_factory) -> Path:
    """A random T5 (d_model 256, 4+4 layers) as a FiD student of 3 BM25 passages writing 400 tokens: random
    weights rarely emit ``</s>``, so every query costs the full length (120 tokens took 0.45 s on one idle thread,
    under the test's 2 x 300 ms premise: CI on a fresh clone failed on it)."""
    from radcot.student.model import FiDStudent
    from radcot.demo.tiny import build_tiny_t5

    d = tmp_path_factory.mktemp("slow")
    texts = [json.loads(line)["text"] for line in (demo_world / "corpus.jsonl").read_text().splitlines()[:2000]]
    build_tiny_t5(texts, d / "t5", vocab_size=2000, d_model=256, layers=4, heads=4, d_ff=1024, seed=3, dropout=0.0)
    student = FiDStudent.from_pretrained(d / "t5", n_context=3, text_maxlength=64)
    student.t5.generation_config.suppress_tokens = [0, 2]  # random weights favour <pad>: write words, to the end
    student.save_pretrained(d / "ckpt")
    return _profile(d / "ckpt", demo_index, d / "row", max_new_tokens=400)


def test_deadlines_hold_under_load_with_a_slow_student(slow_student, texts, tmp_path):
    """12 clients at once, each query with a 300 ms deadline, against a student that needs far longer: every
    answer comes in time, unexpanded and marked; the metrics count each fallback; the work goes on in the
    background and later requests find it in the cache."""
    deadline_ms, slack_ms = 300, 250  # slack: HTTP on 2 loaded cores
    server = _start(["--student", str(slow_student), "--threads", "1", "--max-batch", "4", "--deadline-ms",
                     str(deadline_ms)], tmp_path, "slow")
    try:
        with server.client() as c:
            t0 = time.perf_counter()
            r = c.post("/v1/expand", json={**expand_body(("slow", "probe query")), "deadline_ms": 60_000})
            one_query_s = time.perf_counter() - t0  # a request's own deadline overrides --deadline-ms
            assert r.json()["results"][0]["fallback"] is None
            before = metrics(c)
        fresh = texts[:12]
        got: dict[int, tuple[float, dict]] = {}
        start = threading.Barrier(len(fresh))

        def client(i: int) -> None:
            with server.client() as cl:
                start.wait(timeout=60)
                t = time.perf_counter()
                resp = cl.post("/v1/expand", json=expand_body((str(i), fresh[i])))
                got[i] = (time.perf_counter() - t, resp.json()["results"][0] if resp.status_code == 200 else
                          {"status": resp.status_code})

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(fresh))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        latencies = sorted(ms for ms, _ in got.values())
        results = [got[i][1] for i in range(len(fresh))]
        with server.client() as c:
            after = metrics(c)
            deadline = time.monotonic() + 300  # the background work: all 12, in batches of 4
            while True:
                done = after.get(("radcot_jobs_total", (("event", "background_done"),)), 0) - \
                    before.get(("radcot_jobs_total", (("event", "background_done"),)), 0)
                if done >= len(fresh) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
                after = metrics(c)
            again = c.post("/v1/expand", json=expand_body(*[(str(i), t) for i, t in enumerate(fresh)])).json()
    finally:
        server.stop()
    assert one_query_s > 2 * deadline_ms / 1000, f"the student is not slow enough ({one_query_s:.2f} s) for this test"
    assert max(latencies) <= deadline_ms / 1000 + slack_ms / 1000, latencies
    assert all(r.get("fallback") == "deadline" and r["expanded"] == r["query"] and r["cot"] == "" for r in results)
    fell_back = after[("radcot_fallbacks_total", (("reason", "deadline"),))] - \
        before.get(("radcot_fallbacks_total", (("reason", "deadline"),)), 0)
    assert fell_back == len(fresh)
    assert done == len(fresh)  # every query finished in the background ...
    assert all(r["cached"] and r["fallback"] is None and r["cot"] for r in again["results"]), again  # ... into the cache


# ------------------------------------------------------------------------------------- workers and cache


def _until_two_workers(server: Server) -> dict[int, float]:
    """Open new connections until two worker pids have answered /health (returns pid -> time seen)."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while len(seen) < 2 and time.monotonic() < deadline:
        with server.client() as c:
            r = c.get("/health")
        if r.status_code == 200:
            seen.setdefault(int(r.headers["x-radcot-worker"]), time.monotonic())
    return seen


def test_two_workers_share_one_cache_with_pyterrier(demo_student, demo_index, texts, tmp_path):
    """``--workers 2 --cache FILE``: what one worker generated, the other answers from the cache; the PyTerrier
    transformer with the same student fills the same entries; metrics are summed over the workers."""
    pytest.importorskip("pyterrier")
    import pandas as pd

    from radcot.integrations.pyterrier import RADCoTExpander

    cache = tmp_path / "expansions.sqlite"
    server = _start(["--student", str(demo_student), "--index", str(demo_index), "--max-new-tokens", "48",
                     "--threads", "1", "--workers", "2", "--cache", str(cache)], tmp_path, "workers")
    try:
        pids = _until_two_workers(server)
        assert len(pids) == 2, f"only worker(s) {sorted(pids)} answered"
        q = texts[40]
        with server.client() as c:
            first = c.post("/v1/expand", json=expand_body(("a", q)))
            info = c.get("/v1/info").json()
        by = int(first.headers["x-radcot-worker"])
        assert first.json()["results"][0]["cached"] is False
        other = None
        for _ in range(200):  # new connections until the other worker answers
            with server.client() as c:
                r = c.post("/v1/expand", json=expand_body(("b", q)))
            if int(r.headers["x-radcot-worker"]) != by:
                other = r.json()["results"][0]
                break
        assert other is not None, "the other worker never answered"
        assert other["cached"] is True and other["cot"] == first.json()["results"][0]["cot"]

        rewriter = RADCoTExpander.load(demo_student, index=demo_index, max_new_tokens=48, device="cpu", cache=cache)
        assert rewriter.expander.settings.fingerprint == info["student"]["fingerprint"]
        topics = pd.DataFrame({"qid": ["p1", "p2"], "query": texts[41:43]})
        expanded = rewriter(topics)
        with server.client() as c:
            served = c.post("/v1/expand", json=expand_body(("p1", texts[41]), ("p2", texts[42]))).json()["results"]
            m = metrics(c)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=30)
    assert [r["cached"] for r in served] == [True, True]
    assert [r["expanded"] for r in served] == list(expanded["query"])
    assert m[("radcot_model_loaded", ())] == 2  # summed over the workers
    assert rc == 0 and "Traceback" not in server.stderr()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_answer_only_once_loaded_so_health_200_is_honest(demo_student, demo_index, tmp_path):
    """``--workers 2``: a worker loads its student before it accepts connections, at start and when the parent
    restarts a killed one, so no connection ever meets a loading worker (no 503 on /health or /v1/info after
    another worker said 200)."""
    server = Server(["--student", str(demo_student), "--index", str(demo_index), "--max-new-tokens", "48",
                     "--threads", "1", "--workers", "2"], tmp_path / "honest.log", env=_env())
    statuses: list[tuple[str, int, int]] = []  # (path, status, worker pid) of every answer
    try:
        assert set(server.wait_ready()) == {200}  # the first answer waits for a loaded worker: no 503 'loading'
        pids = _until_two_workers(server)
        assert len(pids) == 2, f"only worker(s) {sorted(pids)} answered"
        killed = min(pids)
        os.kill(killed, signal.SIGKILL)  # the parent starts another, which loads while the survivor answers
        deadline, restarted = time.monotonic() + 120, None
        while restarted is None and time.monotonic() < deadline:
            for path in ("/health", "/v1/info"):
                with server.client() as c:  # a new connection each time: either worker may take it
                    r = c.get(path)
                worker = int(r.headers["x-radcot-worker"])
                statuses.append((path, r.status_code, worker))
                if r.status_code == 200 and worker not in pids:
                    restarted = worker
        assert restarted is not None, f"the restarted worker never answered; stderr: {server.stderr()[-2000:]}"
    finally:
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=30)
    assert [s for s in statuses if s[1] != 200] == [], "a loading worker answered"
    assert killed not in {w for _, _, w in statuses}
    assert rc == 0 and "Traceback" not in server.stderr()


def test_a_changed_student_never_reads_old_entries(demo_student, demo_index, texts, tmp_path):
    """``radcot cache warm`` fills the cache as the server would read it; after the student is retrained in
    place (same directory, new weights) the same cache file gives it none of the old entries."""
    import torch

    from radcot.serving import Expander
    from radcot.student.model import FiDStudent

    student = shutil.copytree(demo_student / "best", tmp_path / "student")
    (student / "radcot_student.json").unlink(missing_ok=True)
    cache, log = tmp_path / "expansions.sqlite", tmp_path / "queries.log"
    log.write_text("\n".join([texts[50]] * 3 + [texts[51]] * 2 + [texts[52]]) + "\n")
    flags = ["--student", str(student), "--index", str(demo_index), "--max-new-tokens", "48", "--threads", "1"]
    warm = subprocess.run([sys.executable, "-m", "radcot", "cache", "warm", "--cache", str(cache), "--log", str(log),
                           "--top", "2", *flags], capture_output=True, text=True, env=_env(), timeout=300)
    assert warm.returncode == 0, warm.stderr[-2000:]
    summary = json.loads(warm.stdout.strip().splitlines()[-1])
    assert (summary["queries"], summary["generated"]) == (2, 2)  # the two most frequent

    server = _start(flags + ["--cache", str(cache)], tmp_path, "before")
    try:
        with server.client() as c:
            old = c.post("/v1/expand", json=expand_body(("a", texts[50]), ("b", texts[51]))).json()["results"]
            assert c.get("/v1/info").json()["student"]["fingerprint"] == summary["fingerprint"]
    finally:
        server.stop()
    assert [r["cached"] for r in old] == [True, True]

    retrained = FiDStudent.from_pretrained(student)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        for p in retrained.t5.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    retrained.save_pretrained(student)  # same directory: only the weights changed
    expected = Expander.load(student, index=demo_index, max_new_tokens=48, device="cpu").expand_batch(texts[50:52])

    server = _start(flags + ["--cache", str(cache)], tmp_path, "after")
    try:
        with server.client() as c:
            new = c.post("/v1/expand", json=expand_body(("a", texts[50]), ("b", texts[51]))).json()["results"]
    finally:
        server.stop()
    assert [r["cached"] for r in new] == [False, False]
    assert [r["cot"] for r in new] == [e.cot for e in expected]
    assert [r["cot"] for r in new] != [r["cot"] for r in old]
