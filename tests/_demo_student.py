"""Session fixtures for the serving tests: the demo world's BM25 index and a small trained RADCoT student.

The student follows ``pipelines/demo.yaml`` (kb teacher on the training queries, BM25 passages, a tiny T5
from scratch, ``question: {query} context: {passage}``) at reduced size and steps, so that it trains in
well under a minute on 2 idle cores. It is weak, but its greedy CoTs depend on the query (checked by the
tests that rely on it), which is what the identity tests of the serving path need.

Why the build runs in a child process with a deadline: in-process, the build once "hung" 15 minutes on a
loaded machine. It was torch training with one OpenMP thread per core while other processes used those
cores: OpenMP's threads spin and wait for each other at every operator, and a descheduled one stalls the
step (0.1 s/step idle, 0.8 s/step at load 5, minutes at higher load), and nothing said where it was. The
child trains with one torch thread (no barrier to wait on), prints each step's time, and dumps every
thread's stack shortly before its deadline; the fixture kills it at the deadline and fails with that log.
The test process itself never holds the training's threads (torch pool, tensorboard writer) or state.

Run by hand: ``python tests/_demo_student.py OUT_DIR [DEADLINE_S]`` (writes ``OUT_DIR/demo-bm25`` and ``OUT_DIR/run``).
"""
from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parents[1]
WORLD = REPO / "data" / "demo"
K = 3
#: training steps: enough for greedy CoTs that depend on the query (22 distinct of the 24 test queries that
#: tests/test_expander.py reads; it asks for more than 8), which is all the tests that use the student need
STEPS = 100
#: the whole build (index + teacher + data + STEPS training steps); under 30 s on idle cores
BUILD_TIMEOUT_S = 600
#: the child dumps every thread's stack this long before the deadline (the failure message shows it)
DUMP_BEFORE_S = 20


# --------------------------------------------------------------------------------------------- the build


def _log(msg: str) -> None:
    print(f"[demo-student {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed(name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    _log(f"{name} ...")
    out = fn(*args, **kwargs)
    _log(f"{name} done in {time.perf_counter() - t0:.1f} s")
    return out


def build_index(out: Path) -> None:
    from radcot.retrieval.bm25 import BM25Retriever

    BM25Retriever.build(WORLD, out, show_progress=False)


def build_student(index: Path, base: Path) -> Path:
    """kb CoTs -> distillation data (BM25 top-3) -> ``STEPS`` training steps of a tiny T5: ``base/run``."""
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.student.data import build_distillation_data
    from radcot.student.train import TrainConfig, train
    from radcot.demo.kb import KBTeacher
    from radcot.teacher.runner import teach

    queries, cots, distill, run = WORLD / "queries.train.tsv", base / "kb-cots.jsonl", base / "distill", base / "run"
    _timed("teach (kb)", teach, KBTeacher(WORLD), queries, cots, concurrency=1, show_progress=False)
    _timed("distillation data", build_distillation_data, queries, cots, BM25Retriever(index), k=K, out_dir=distill,
           dev_fraction=0.02, seed=0, show_progress=False)
    config = TrainConfig(data=str(distill), model="tiny-t5:d_model=64,layers=2,heads=4,d_ff=256,vocab_size=2000,"
                         "dropout=0", out=str(run), n_context=K, max_steps=STEPS, batch_size=8, lr=3e-3,
                         text_maxlength=48, target_maxlength=48, eval_every=STEPS, eval_max_new_tokens=16,
                         eval_max_examples=8, save_every=STEPS, log_every=25, template="question: {query} context: "
                         "{passage}", seed=13)
    _timed("training", train, config, show_progress=False)
    return run


def main(out: Path, deadline_s: float = BUILD_TIMEOUT_S) -> None:
    """The child: build ``out/demo-bm25`` and ``out/run`` with one torch thread, stacks dumped before the deadline."""
    import logging

    import torch

    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(max(1.0, deadline_s - DUMP_BEFORE_S), exit=False)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    _timed("BM25 index", build_index, out / "demo-bm25")
    build_student(out / "demo-bm25", out)
    (out / "DONE").write_text("ok\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------- the fixture


def _build_in_child(out: Path) -> None:
    """Run :func:`main` in a child process; a failure or the deadline fails the session with the child's log."""
    log = out.with_name(out.name + ".log")
    shutil.rmtree(out, ignore_errors=True)  # a half-built one from an earlier attempt
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with open(log, "w", encoding="utf-8") as f:
        try:
            rc = subprocess.run([sys.executable, __file__, str(out), str(BUILD_TIMEOUT_S)], stdout=f, stderr=subprocess.STDOUT, env=env,
                                timeout=BUILD_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0:
        why = f"did not finish in {BUILD_TIMEOUT_S} s" if rc is None else f"exited with status {rc}"
        tail = log.read_text(encoding="utf-8", errors="replace")[-6000:]
        pytest.fail(f"building the demo student {why}; its log ({log}) ends:\n{tail}", pytrace=False)


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """The built index and student, once per session (a directory holding ``demo-bm25`` and ``run``)."""
    out = tmp_path_factory.getbasetemp() / "serve-shared"
    if not (out / "DONE").is_file():
        _build_in_child(out)
    return out


@pytest.fixture(scope="session")
def demo_index(demo_build) -> Path:
    """A Lucene index of the demo corpus (title+text, stored contents)."""
    return demo_build / "demo-bm25"


@pytest.fixture(scope="session")
def demo_student(demo_build) -> Path:
    """A tiny FiD student (k=3 BM25 passages) trained ``STEPS`` steps on the demo world: ``RUN_DIR``."""
    return demo_build / "run"


if __name__ == "__main__":
    main(Path(sys.argv[1]), *map(float, sys.argv[2:3]))
