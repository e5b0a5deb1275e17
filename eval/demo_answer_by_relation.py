"""Where a demo-world student loses the answer, per relation: is an answer-bearing passage in its context, and
does its CoT name the answer?

Reads a student's ``radcot generate`` output (its records keep the ``doc_ids`` of the passages it read) and a
demo world (``radcot make-world``: exact answers from the world's facts). Relations are told apart by the
query's words, which only the demo world's query templates make reliable.

    python eval/demo_answer_by_relation.py --world data/demo runs/demo/generate-radcot-f0-*/cot.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radcot.analysis import contains_answer, world_answers  # noqa: E402
from radcot.data.readers import read_corpus  # noqa: E402

RELATIONS = [("teacher", ("taught", "instruct", "teacher", "mentor", "pupil")), ("birthplace", ("born", "birth")),
             ("occupation", ("job", "profession", "occupation", "living")),
             ("employer", ("employ", "company", "work"))]


def relation(query: str) -> str:
    q = query.lower()
    return next((name for name, words in RELATIONS if any(w in q for w in words)), "other")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cots", help="a student's radcot generate output (JSONL with doc_ids)")
    ap.add_argument("--world", required=True, help="the demo world directory (data/demo)")
    args = ap.parse_args(argv)
    corpus = {d.doc_id: d.text for d in read_corpus(Path(args.world) / "corpus.jsonl")}
    answers = world_answers(args.world)
    rows = collections.defaultdict(lambda: [0, 0, 0])  # n, answer in context, CoT names it
    with open(args.cots, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            ans = answers[r["query_id"]]
            counts = rows[relation(r["query"])]
            counts[0] += 1
            counts[1] += any(contains_answer(corpus[d], ans) for d in r.get("doc_ids") or [] if d in corpus)
            counts[2] += contains_answer(r["text"], ans)
    print("| relation | queries | answer in context | CoT names it |\n|---|---|---|---|")
    for name in [n for n, _ in RELATIONS] + ["other", "all"]:
        n, ctx, named = ([sum(c[i] for c in rows.values()) for i in range(3)] if name == "all" else rows.get(name, [0, 0, 0]))
        if n:
            print(f"| {name} | {n} | {ctx / n:.0%} | {named / n:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
