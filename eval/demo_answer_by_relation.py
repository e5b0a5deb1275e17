"""Where a demo-world student loses the answer, per relation: is an answer-bearing passage in its context, does
its CoT name the answer, and does its ``Answer:`` name the query's own subject instead?

Reads either a student's ``radcot generate`` output (its records keep the ``doc_ids`` of the passages it read)
or a training evaluation file ``RUN/eval/step-N.jsonl`` (the CoTs of the held-out *training* queries; their
passages come from the distillation data, ``--data``), and a demo world (``radcot make-world``: exact answers
from the world's facts). Relations are told apart by the query's words, which only the demo world's query
templates make reliable.

    python eval/demo_answer_by_relation.py --world data/demo runs/demo/generate-radcot-f0-*/cot.jsonl
    python eval/demo_answer_by_relation.py --world data/demo --data runs/_shared/data-<hash>/data \\
        runs/_shared/train-<hash>/run/eval/step-1500.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radcot.demo.answers import contains_answer, world_answers  # noqa: E402
from radcot.data.readers import read_corpus  # noqa: E402

RELATIONS = [("teacher", ("taught", "instruct", "teacher", "mentor", "pupil")), ("birthplace", ("born", "birth")),
             ("occupation", ("job", "profession", "occupation", "living")),
             ("employer", ("employ", "company", "work"))]
COLUMNS = ("queries", "answer in context", "CoT names it", "Answer: names the subject")


def relation(query: str) -> str:
    q = query.lower()
    return next((name for name, words in RELATIONS if any(w in q for w in words)), "other")


def names_subject(cot: str, query: str, answer: str) -> bool:
    """Whether the CoT's ``Answer:`` part misses the answer but repeats a capitalised word of the query (the
    person or place the query is about)."""
    part = cot.rpartition("Answer:")[2] if "Answer:" in cot else ""
    if not part or contains_answer(part, answer):
        return False
    names = {w for w in re.findall(r"[A-Z]\w{3,}", query)}
    return bool(names & set(re.findall(r"\w+", part)))


def context_texts(args) -> tuple[callable, str]:
    """``(record -> passage texts, key of the CoT)`` for generate output (doc_ids) or a training eval file."""
    if args.data:
        from radcot.student.data import load_distillation_data, passage_text

        dd, _ = load_distillation_data(args.data)
        ctx = {ex["query_id"]: [passage_text(p) for p in ex["passages"]] for ex in dd["dev"]}
        return (lambda r: ctx.get(r["query_id"], [])), "prediction"
    corpus = {d.doc_id: d.text for d in read_corpus(Path(args.world) / "corpus.jsonl")}
    return (lambda r: [corpus[d] for d in r.get("doc_ids") or [] if d in corpus]), "text"


def count(args) -> dict[str, list[int]]:
    """Per relation: [queries, answer in context, CoT names it, Answer: names the subject]."""
    answers = world_answers(args.world)
    texts, key = context_texts(args)
    rows = collections.defaultdict(lambda: [0, 0, 0, 0])
    with open(args.cots, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            ans, cot = answers[r["query_id"]], r[key]
            counts = rows[relation(r["query"])]
            counts[0] += 1
            counts[1] += any(contains_answer(t, ans) for t in texts(r))
            counts[2] += contains_answer(cot, ans)
            counts[3] += names_subject(cot, r["query"], ans)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cots", help="a student's radcot generate output (JSONL with doc_ids), or RUN/eval/step-N.jsonl")
    ap.add_argument("--world", required=True, help="the demo world directory (data/demo)")
    ap.add_argument("--data", help="the distillation data of a training eval file (its dev split's passages)")
    rows = count(ap.parse_args(argv))
    print("| relation | " + " | ".join(COLUMNS) + " |\n|---|---|---|---|---|")
    for name in [n for n, _ in RELATIONS] + ["other", "all"]:
        c = [sum(v[i] for v in rows.values()) for i in range(4)] if name == "all" else rows.get(name, [0] * 4)
        if c[0]:
            print(f"| {name} | {c[0]} | " + " | ".join(f"{x / c[0]:.0%}" for x in c[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
