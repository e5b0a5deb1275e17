"""The knowledge-base teacher: matches query text to the world's facts and writes a RADCoT-style CoT."""
from __future__ import annotations

import json
import re

import pytest

from radcot.demo.world import make_world
from radcot.records import Query
from radcot.teacher import get_backend, read_teacher_output, teach
from radcot.teacher.base import GenerationParams, TeacherError, TeachItem
from radcot.demo.kb import KBTeacher

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "tiny"
    make_world(out, seed=21, scale=0.1, n_test=20)
    return out


def _queries_with_facts(world):
    meta = [json.loads(l) for l in open(world / "queries.jsonl", encoding="utf-8")]
    kb = [json.loads(l) for l in open(world / "kb.jsonl", encoding="utf-8")]
    facts = {f["fact_id"]: f for f in kb if f["kind"] == "fact"}
    entities = {e["id"]: e for e in kb if e["kind"] == "entity"}
    return [(Query(m["_id"], m["text"]), facts[m["metadata"]["fact_id"]]) for m in meta], entities


def test_matches_every_demo_query_to_its_fact(demo_world):
    """From the text alone (never the id): the entity and relation of all 2,195 shipped queries."""
    teacher = KBTeacher(demo_world)
    pairs, _ = _queries_with_facts(demo_world)
    assert len(pairs) > 2000
    wrong = [(q.text, teacher.match(q.text)) for q, f in pairs if teacher.match(q.text) != (f["subject"], f["relation"])]
    assert not wrong, wrong[:5]


def test_answers_are_correct_styled_and_deterministic(tiny_world):
    teacher = KBTeacher(tiny_world)
    pairs, _ = _queries_with_facts(tiny_world)
    for q, fact in pairs:
        text = teacher.answer(q.text)
        assert text.startswith("Rationale: ") and " Answer: " in text
        assert _says(text, fact["object_name"]), (q.text, text)
        assert teacher.answer(q.text) == text
    # a second instance (fresh process state) writes the same bytes
    again = KBTeacher(tiny_world)
    assert [again.answer(q.text) for q, _ in pairs] == [teacher.answer(q.text) for q, _ in pairs]


def test_paraphrases_and_case(tiny_world):
    teacher = KBTeacher(tiny_world)
    pairs, entities = _queries_with_facts(tiny_world)
    q, fact = next((q, f) for q, f in pairs if f["relation"] == "born_in")
    name = entities[fact["subject"]]["name"]
    for text in (f"In WHICH village was {name.upper()} born?", f"birth town of {name}", f"{name}: place of birth"):
        assert teacher.match(text) == (fact["subject"], "born_in"), text
        assert fact["object_name"] in teacher.answer(text)
    # a known entity with an unrecognised question: rationale about it, answer unknown
    text = teacher.answer(f"what colour are the eyes of {name}")
    assert name in text and text.endswith("Answer: unknown.")


def test_unknown_queries(tiny_world):
    teacher = KBTeacher(tiny_world)
    items = [TeachItem(Query("x", "what is the capital of France"), "p")]
    [gen] = teacher.generate(items, GenerationParams())
    assert "Answer: unknown" in gen.text
    strict = KBTeacher(tiny_world, unknown="error")
    [err] = strict.generate(items, GenerationParams())
    assert isinstance(err, TeacherError) and "names no entity" in str(err)


def _says(answer_text: str, obj: str) -> bool:
    answer = answer_text.split(" Answer: ", 1)[1]
    return re.search(rf"\b{re.escape(obj)}\b", answer) is not None


def test_error_rate_swaps_answers_deterministically(tiny_world):
    pairs, _ = _queries_with_facts(tiny_world)
    always = KBTeacher(tiny_world, error_rate=1.0)
    assert not any(_says(always.answer(q.text), fact["object_name"]) for q, fact in pairs)
    some = KBTeacher(tiny_world, error_rate=0.3)
    wrong = sum(not _says(some.answer(q.text), fact["object_name"]) for q, fact in pairs)
    assert 0.15 < wrong / len(pairs) < 0.45
    again = KBTeacher(tiny_world, error_rate=0.3)
    assert [some.answer(q.text) for q, _ in pairs] == [again.answer(q.text) for q, _ in pairs]
    with pytest.raises(ValueError, match="error_rate"):
        KBTeacher(tiny_world, error_rate=1.5)


def test_max_tokens_truncates(tiny_world):
    teacher = KBTeacher(tiny_world)
    pairs, _ = _queries_with_facts(tiny_world)
    [gen] = teacher.generate([TeachItem(pairs[0][0], "p")], GenerationParams(max_tokens=5))
    assert gen.finish_reason == "length" and len(gen.text.split()) == 5


def test_runs_through_the_resumable_teacher_runner(tiny_world, tmp_path):
    backend = get_backend("kb", world=tiny_world)
    assert isinstance(backend, KBTeacher)
    out = tmp_path / "cots.jsonl"
    s1 = teach(backend, tiny_world / "queries.test.tsv", out, limit=12, show_progress=False)
    assert (s1.done, s1.failed) == (12, 0)
    s2 = teach(backend, tiny_world / "queries.test.tsv", out, show_progress=False)
    assert s2.skipped == 12 and s2.done == 20 - 12
    records = read_teacher_output(out)
    assert len(records) == 20 and all(r["text"].startswith("Rationale:") for r in records.values())
    cfg = json.loads(out.with_name("cots.config.json").read_text())
    assert cfg["backend"] == "kb" and "not an LLM" in cfg["backend_config"]["note"]


def test_missing_kb_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make-world"):
        KBTeacher(tmp_path)
