"""Teacher-forced reading test of a demo-world student: fed the teacher's CoT up to the first token of the answer,
which token does the student put there: the answer, the query's subject, or something else?

Free-running CoTs mix two failures (the student writes another sentence than the teacher; it picks the wrong
name where it does write the answer's sentence). Forcing the teacher's prefix isolates the second: it reads
the held-out *training* queries (the ``dev`` split of the distillation data, never test queries) of a demo
world (``radcot make-world``: exact answers from the world's facts) and counts, at the answer's first token,
argmax == answer, argmax == a token of the query's subject, and whether the answer's token is in the input.

    python eval/demo_answer_slot.py --world data/demo --data runs/_shared/data-<hash>/data \\
        runs/_shared/train-<hash>/run/best [more student dirs]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_answer_by_relation import relation  # noqa: E402


def world_facts(world: Path) -> tuple[dict, dict]:
    """``({query_id: fact}, {entity_id: entity})`` of a demo world."""
    kb = [json.loads(line) for line in (world / "kb.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    facts = {f["fact_id"]: f for f in kb if f.get("kind") == "fact"}
    entities = {e["id"]: e for e in kb if e.get("kind") == "entity"}
    by_query = {}
    for line in (world / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            fact = facts.get((q.get("metadata") or {}).get("fact_id"))
            if fact is not None:
                by_query[q["_id"]] = fact
    return by_query, entities


def first_token(tok, text: str) -> int | None:
    ids = tok(" " + text, add_special_tokens=False)["input_ids"]
    return ids[0] if ids else None


def answer_slots(student, rows, facts, entities, batch_size: int = 32):
    """Yield ``(relation, in_input, predicted == answer, predicted in subject)`` per row whose target names
    the answer."""
    import torch

    tok = student.tokenizer
    for i in range(0, len(rows), batch_size):
        chunk = [r for r in rows[i:i + batch_size] if r["query_id"] in facts]
        if not chunk:
            continue
        batch = student.collator(chunk)
        with torch.no_grad():
            predicted = student(**batch).logits.argmax(-1)  # (B, T)
        for j, row in enumerate(chunk):
            fact = facts[row["query_id"]]
            answer = first_token(tok, fact["object_name"])
            labels = batch["labels"][j].tolist()
            if answer is None or answer not in labels:
                continue
            at = labels.index(answer)
            subject = entities.get(fact["subject"], {})
            subject_ids = {first_token(tok, subject[k]) for k in ("name", "short", "first") if subject.get(k)}
            pred = int(predicted[j, at])
            yield (relation(row["query"]), answer in batch["input_ids"][j].flatten().tolist(), pred == answer,
                   pred in subject_ids)


def report(model_dir: str, rows, facts, entities) -> str:
    from radcot.student.model import FiDStudent

    student = FiDStudent.from_pretrained(model_dir).eval()
    counts = collections.defaultdict(lambda: [0, 0, 0, 0])
    for rel, in_input, right, subject in answer_slots(student, rows, facts, entities):
        for key in (rel, "all"):
            c = counts[key]
            c[0] += 1
            c[1] += in_input
            c[2] += right
            c[3] += subject
    lines = [f"{model_dir}", "", "| relation | answer slots | answer in input | argmax = answer | argmax = subject |",
             "|---|---|---|---|---|"]
    for key in sorted(counts, key=lambda k: (k == "all", k)):
        n, inp, right, subj = counts[key]
        lines.append(f"| {key} | {n} | {inp / n:.0%} | {right / n:.0%} | {subj / n:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="student directories (RUN/best)")
    ap.add_argument("--world", required=True, help="the demo world (data/demo or a `radcot make-world` output)")
    ap.add_argument("--data", required=True, help="the distillation data the students trained on (its dev split)")
    args = ap.parse_args(argv)
    from radcot.student.data import load_distillation_data

    facts, entities = world_facts(Path(args.world))
    data, _ = load_distillation_data(args.data)
    if "dev" not in data:
        ap.error(f"{args.data} has no dev split (held-out training queries)")
    rows = list(data["dev"])
    for model in args.models:
        print(report(model, rows, facts, entities), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
