"""Library code leaves process-global state as it found it (issue 13): JAVA_HOME, the OPENAI_API_KEY
placeholder for pyserini's import, torch's thread count and global RNG (hf teacher)."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "OPENAI_API_KEY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**base, "PYTHONPATH": str(REPO), "RADCOT_JAVA_HEAP": "256m", **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


START = ("import os; from radcot.java import start_jvm, autoclass, java_home; start_jvm(); "
         "print(repr(os.environ.get('JAVA_HOME')), autoclass('java.lang.System').getProperty('java.home') "
         "== str(java_home().resolve()) or autoclass('java.lang.System').getProperty('java.home'))")


@pytest.mark.java
def test_java_home_restored_after_the_jvm_starts():
    """The JVM runs from radcot's Java 21 while the caller's JAVA_HOME (set or not) is what it was."""
    assert _python(START, JAVA_HOME="/opt/callers-java") == "'/opt/callers-java' True"
    assert _python(START) == "None True"


#: the child starts the JVM, says so from inside its work and works (short sleeps: Python sees a signal after
#: each one, whichever thread the kernel gave it to) until Ctrl-C or a deadline no test run comes near
SIGINT_CHILD = """
import time
from radcot.java import start_jvm
start_jvm()
try:
    print("working", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print("no interrupt in 120 s", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


@pytest.mark.java
def test_jvm_leaves_sigint_to_python():
    """-Xrs: after the JVM starts, Ctrl-C is still Python's KeyboardInterrupt (not the JVM's exit).

    The parent signals once the child reports that it is inside its work, not after a guessed delay: a loaded
    machine makes the test slower, never wrong (issue #26).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "OPENAI_API_KEY")}
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "PYTHONPATH": str(REPO), "RADCOT_JAVA_HEAP": "256m"})
    try:
        ready = proc.stdout.readline().strip()  # until the child is inside its work (or has died)
        assert ready == "working", f"the child did not start the JVM: {ready!r} {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (out.strip(), proc.returncode) == ("KeyboardInterrupt", 0), (out, proc.returncode, err[-2000:])


@pytest.mark.fast
def test_openai_placeholder_never_touches_a_callers_key(monkeypatch):
    from radcot.java import _placeholder_openai_key

    monkeypatch.setenv("OPENAI_API_KEY", "sk-callers")
    with _placeholder_openai_key():
        assert os.environ["OPENAI_API_KEY"] == "sk-callers"
    assert os.environ["OPENAI_API_KEY"] == "sk-callers"
    monkeypatch.delenv("OPENAI_API_KEY")
    with _placeholder_openai_key():
        assert os.environ["OPENAI_API_KEY"].startswith("placeholder")
    assert "OPENAI_API_KEY" not in os.environ


@pytest.mark.java
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("pyserini") is None, reason="needs pyserini")
def test_pyserini_import_leaves_no_placeholder_key():
    """The real pyserini.search.lucene import (its OpenAI client needs a key) with no key set: none after."""
    code = ("import os; from radcot.java import import_pyserini_lucene; m = import_pyserini_lucene(); "
            "print(hasattr(m, 'LuceneSearcher'), repr(os.environ.get('OPENAI_API_KEY')))")
    assert _python(code) == "True None"


@pytest.mark.fast
def test_hub_offline_one_reading(monkeypatch):
    from radcot._deps import hub_offline, hub_reachable

    for value, offline in (("1", True), ("TRUE", True), ("yes", True), ("On", True), ("0", False),
                           ("false", False), ("no", False), ("off", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is offline, value
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable(timeout=0.1) is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub_offline() is False


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer GPT-2 with a tokenizer trained here (offline, seconds)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch

    from radcot.demo.tiny import train_t5_tokenizer

    out = tmp_path_factory.mktemp("lm") / "tiny-gpt2"
    tok = train_t5_tokenizer(["name a colour such as red green or blue", "the sky is blue and grass is green"] * 20,
                             vocab_size=200)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_hf_teacher_restores_torch_threads_and_rng(tiny_causal_lm):
    import torch

    from radcot.teacher.base import GenerationParams
    from radcot.teacher.hf import HFBackend

    threads_before = torch.get_num_threads()
    wanted = 1 if threads_before != 1 else 2
    be = HFBackend(model=tiny_causal_lm, batch_size=2, threads=wanted)
    try:
        assert torch.get_num_threads() == wanted
        torch.manual_seed(123)
        rng_before = torch.get_rng_state()
        params = GenerationParams(max_tokens=8, temperature=1.0, seed=7)
        first = be.complete(["name a colour"], params)[0].text
        assert torch.equal(torch.get_rng_state(), rng_before)  # the seed did not leak into torch's global RNG
        assert be.complete(["name a colour"], params)[0].text == first  # and still makes sampling reproducible
        others = {be.complete(["name a colour"], GenerationParams(max_tokens=8, temperature=1.0, seed=s))[0].text
                  for s in range(8, 14)}
        assert len(others | {first}) > 1  # the seed does reach the sampler
    finally:
        be.close()
    assert torch.get_num_threads() == threads_before
