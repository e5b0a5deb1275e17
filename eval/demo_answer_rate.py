"""How often CoTs for the demo world's test queries contain the right answer (the fact's object).

The demo's nDCG numbers say whether an expansion helps BM25; this says why: a CoT that names the answer
pulls up the passages stating the fact. Usage::

    python eval/demo_answer_rate.py runs/demo/teacher-eval-*/cot.jsonl runs/demo/generate-*/cot.jsonl

Prints, per file, the fraction of its CoTs that contain the answer (case-insensitive substring).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cots", nargs="+", help="teacher-format CoT files (JSONL) for the world's test queries")
    p.add_argument("--world", default=str(REPO / "data" / "demo"), help="the world directory (default data/demo)")
    args = p.parse_args(argv)

    from radcot.data.world import KnowledgeBase
    from radcot.teacher.runner import read_teacher_output
    from radcot.utils import read_jsonl

    kb = KnowledgeBase.load(args.world)
    answer = {f["fact_id"]: f["object_name"].lower() for f in kb.facts}
    fact_of = {q["_id"]: q["metadata"]["fact_id"] for q in read_jsonl(Path(args.world) / "queries.jsonl")}
    for path in args.cots:
        recs = read_teacher_output(path)
        hits = sum(answer[fact_of[qid]] in (r.get("text") or "").lower() for qid, r in recs.items())
        print(f"{path}: {hits}/{len(recs)} CoTs contain the answer ({hits / max(len(recs), 1):.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
