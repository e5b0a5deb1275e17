"""The in-memory Expander against the real `radcot generate` CLI, on a small student trained on the demo world."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from _demo_student import demo_build, demo_index, demo_student  # noqa: F401 - session fixtures
from radcot.records import RadcotError

pytestmark = pytest.mark.java

MAX_NEW = 48  # shorter CoTs keep the test fast; both sides get the same setting
#: one torch thread here and in the CLI: 2 shared cores, and OpenMP threads stall each other under load
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def test_texts(demo_world) -> list[tuple[str, str]]:
    lines = (demo_world / "queries.test.tsv").read_text(encoding="utf-8").splitlines()[:24]
    return [tuple(line.split("\t", 1)) for line in lines]


@pytest.fixture(scope="module")
def expander(demo_student, demo_index):
    from radcot.serving import Expander

    return Expander.load(demo_student, index=demo_index, max_new_tokens=MAX_NEW, device="cpu")


@pytest.fixture(scope="module")
def cli_cots(demo_student, demo_world, demo_index, test_texts, tmp_path_factory) -> dict[str, str]:
    """``radcot generate`` (the real CLI, another process) on the same queries: ``{query_id: text}``."""
    d = tmp_path_factory.mktemp("gen")
    (d / "q.tsv").write_text("".join(f"{qid}\t{t}\n" for qid, t in test_texts), encoding="utf-8")
    out = d / "cot.jsonl"
    subprocess.run([sys.executable, "-m", "radcot", "generate", "--student", str(demo_student / "best"),
                    "--queries", str(d / "q.tsv"), "--index", str(demo_index), "--out", str(out),
                    "--max-new-tokens", str(MAX_NEW), "--device", "cpu", "--no-progress"], check=True, timeout=300,
                   env=dict(os.environ, **ONE_THREAD))
    return {r["query_id"]: r["text"] for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}


def test_greedy_output_identical_to_radcot_generate(expander, cli_cots, test_texts):
    from radcot.expansion import expand_text

    exps = expander.expand_batch([t for _, t in test_texts])
    assert [e.cot for e in exps] == [cli_cots[qid] for qid, _ in test_texts]
    assert len({e.cot for e in exps}) > len(exps) // 3  # the CoTs depend on the query: the check means something
    for (_, t), e in zip(test_texts, exps):
        assert e.query == t and e.expanded == expand_text(t, e.cot, "radcot")
    # one at a time (other padding, other batch) gives the same greedy text
    for qid, t in test_texts[:6]:
        assert expander.expand(t).cot == cli_cots[qid]


def test_two_queries_in_a_row_get_their_own_cots(expander, test_texts):
    """No state leaks from one call into the next (a cache keyed wrongly, a reused buffer)."""
    a, b = test_texts[1][1], test_texts[2][1]
    first, second = expander.expand(a), expander.expand(b)
    assert first.query == a and second.query == b
    assert first.cot != second.cot and first.expanded != second.expanded
    assert expander.expand(a) == first  # and back again


def test_thread_safe_under_concurrent_callers(expander, cli_cots, test_texts):
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(pairs):
        try:
            for qid, t in pairs:
                results[qid] = expander.expand(t).cot
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(test_texts[i:12:4],), daemon=True) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not [th for th in threads if th.is_alive()], "an expand call did not return within 120 s"
    assert not errors and results == {qid: cli_cots[qid] for qid, _ in test_texts[:12]}


def test_formulas_and_fallback(expander, test_texts):
    from radcot.expansion import expand_text

    t = test_texts[0][1]
    e = expander.expand(t, formula="query2doc")
    assert e.expanded == expand_text(t, e.cot, "query2doc")
    assert expander.expand(t, formula="none").expanded == t
    blank = expander.apply(t, "   ")
    assert blank.expanded == t and blank.cot == "" and blank.fallback == "no_cot"
    with pytest.raises(RadcotError, match="unknown expansion formula 'bogus'"):
        expander.expand(t, formula="bogus")


def test_search_uses_the_index(expander, test_texts):
    e = expander.expand(test_texts[0][1])
    hits = expander.search(e.expanded, k=5)
    assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_load_errors_name_the_fix(demo_student, tmp_path):
    import shutil

    from radcot.serving import Expander

    with pytest.raises(RadcotError, match="does not exist"):
        Expander.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RadcotError, match="holds no trained student"):
        Expander.load(tmp_path / "empty")
    old = shutil.copytree(demo_student / "best", tmp_path / "old")  # a checkpoint without a profile
    (old / "radcot_student.json").unlink(missing_ok=True)
    with pytest.raises(RadcotError, match=r"trained with 3 retrieved passages .* index="):
        Expander.load(old)  # a retrieval-augmented student without its index


def test_typed_boundary_of_the_loaded_expander(expander, test_texts):
    texts = [t for _, t in test_texts[:2]]
    assert expander.expand_batch(t for t in texts) == expander.expand_batch(texts)
    with pytest.raises(TypeError, match="got one str"):
        expander.expand_batch(texts[0])
    with pytest.raises(TypeError, match="query 1 is NoneType"):
        expander.expand_batch([texts[0], None])
    with pytest.raises(TypeError, match="one query string"):
        expander.expand(None)


def test_public_exports():
    import radcot

    assert radcot.Expander.__module__ == "radcot.serving.expander"
    assert radcot.Expansion.__module__ == "radcot.expansion"  # the one expansion record
    assert radcot.Expansion("q", "c", "e").to_dict() == {"query": "q", "cot": "c", "expanded": "e", "fallback": None}
