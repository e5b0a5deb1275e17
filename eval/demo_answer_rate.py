"""How often CoTs for the demo world's test queries contain the right answer (the fact's object).

A thin wrapper over :mod:`radcot.demo.answers` (``radcot table runs/demo --answers --world data/demo`` gives
the same for every row of an experiment). Usage::

    python eval/demo_answer_rate.py runs/demo/teacher-eval-*/cot.jsonl runs/demo/generate-*/cot.jsonl

Prints, per file, the fraction of its CoTs that contain the answer (case-insensitive, whole words).
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

    from radcot.demo.answers import answer_rate, world_answers

    answers = world_answers(args.world)
    for path in args.cots:
        r = answer_rate(answers, path, name=path)
        print(f"{path}: {r.hits}/{r.n} CoTs contain the answer ({r.rate:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
