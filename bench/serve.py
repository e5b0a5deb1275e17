"""Benchmark: ``radcot serve`` under load -- one client vs concurrent clients, with and without batching.

A bounded load test on 127.0.0.1 (a fixed number of requests per run; it stops by itself). Each request is
``POST /v1/expand`` with one query (the demo world's queries, cycled); the LRU cache is off, so every
query is generated. Runs, on two real ``radcot serve`` processes:

- ``batched``: ``--max-batch 32 --batch-wait-ms 5`` with 1 client (sequential), then with each of ``--clients``;
- ``unbatched``: ``--max-batch 1`` with the largest client count (concurrency without batching).

Prints throughput (queries/s), latency p50/p95/p99 per request, each run's throughput as a multiple of
the sequential one, the mean batch size (from ``/metrics``), the server's RSS after each run and the
batched server's before (after a warm-up at the largest concurrency, ``--warmup``; RSS right after loading is
printed too) and after all its requests, and whether every query got the same CoT in every run (greedy output must not depend on
batching). Usage::

    python bench/serve.py [--student RUN --index IDX] [--requests 240] [--clients 8] [--threads N]

Without ``--student`` it builds the tests' tiny demo student (``tests/_demo_student.py``, ~30 s on 2 idle
cores) in a temporary directory.
"""
from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------- the server


class Server:
    """``radcot serve --port 0`` in a subprocess, ready (``/health`` 200) when the constructor returns."""

    def __init__(self, student: str, index: str, extra: list[str], log: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "radcot", "serve", "--student", student, "--index", index,
                                      "--port", "0", "--device", "cpu", "--cache-size", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env)
        if not select.select([self.proc.stdout], [], [], 120)[0]:
            self.stop()
            raise SystemExit(f"radcot serve did not start; see {log}")
        self.url = self.proc.stdout.readline().split()[-1]
        self._wait_ready(log)

    def _wait_ready(self, log: Path) -> None:
        import httpx

        deadline = time.monotonic() + 300
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while time.monotonic() < deadline and self.proc.poll() is None:
                if c.get("/health").status_code == 200:
                    return
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"radcot serve did not get ready; see {log}")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def batch_sizes(self) -> tuple[float, float]:
        """(generate calls, queries) so far, from ``/metrics``."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        values = {s.name: s.value for fam in text_string_to_metric_families(httpx.get(self.url + "/metrics").text)
                  for s in fam.samples}
        return values.get("radcot_batch_size_count", 0.0), values.get("radcot_batch_size_sum", 0.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


# ----------------------------------------------------------------------------------------------- the load


def load(url: str, texts: list[str], clients: int) -> tuple[float, list[float], dict[str, str]]:
    """``len(texts)`` requests from ``clients`` threads; returns (seconds, latencies, {text: cot})."""
    import httpx

    todo = list(enumerate(texts))
    lock, latencies, cots, errors = threading.Lock(), [], {}, []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    i, text = todo.pop()
                t0 = time.perf_counter()
                r = c.post("/v1/expand", json={"queries": [{"id": str(i), "text": text}]})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        return
                    latencies.append(dt)
                    cots[text] = r.json()["results"][0]["cot"]

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return time.perf_counter() - t0, latencies, cots


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def measure(server: Server, name: str, texts: list[str], clients: int) -> dict:
    calls0, queries0 = server.batch_sizes()
    seconds, lat, cots = load(server.url, texts, clients)
    calls, queries = server.batch_sizes()
    return {"name": name, "clients": clients, "requests": len(lat), "qps": len(lat) / seconds,
            "p50": pct(lat, 50) * 1000, "p95": pct(lat, 95) * 1000, "p99": pct(lat, 99) * 1000,
            "batch": (queries - queries0) / max(1.0, calls - calls0), "rss": server.rss_mib(), "cots": cots}


# ---------------------------------------------------------------------------------------------- the report


def report(rows: list[dict], rss: tuple[float, float, int]) -> None:
    base = rows[0]["qps"]
    print(f"{'run':<28} {'clients':>7} {'requests':>8} {'q/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'mean batch':>10} {'x seq':>6} {'RSS MiB':>8}")
    for r in rows:
        print(f"{r['name']:<28} {r['clients']:>7} {r['requests']:>8} {r['qps']:>7.1f} {r['p50']:>8.0f} "
              f"{r['p95']:>8.0f} {r['p99']:>8.0f} {r['batch']:>10.1f} {r['qps'] / base:>6.2f} {r['rss']:>8.0f}")
    before, after, n = rss
    print(f"RSS of the batched server: {before:.0f} MiB before, {after:.0f} MiB after {n} requests "
          f"({(after - before) / before:+.1%})")
    same = all(r["cots"] == rows[0]["cots"] for r in rows)
    print(f"every query got the same CoT in every run: {'yes' if same else 'NO'}")


def demo_student(tmp: Path) -> tuple[str, str]:
    print(f"building the tiny demo student in {tmp} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(REPO / "tests" / "_demo_student.py"), str(tmp)], check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(tmp / "run"), str(tmp / "demo-bm25")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", help="a trained student (RUN_DIR); default: build the tiny demo student")
    p.add_argument("--index", help="its BM25 index (with --student)")
    p.add_argument("--requests", type=int, default=240, help="requests per run (one query each)")
    p.add_argument("--clients", default="8", help="concurrent client counts, comma-separated (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--warmup", type=int, default=128,
                   help="requests sent at the largest concurrency before RSS 'before' is read (0: none; default 128)")
    p.add_argument("--threads", type=int, default=None, help="server torch threads (default: torch's)")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="radcot-bench-serve-"))
    student, index = (args.student, args.index) if args.student else demo_student(tmp)
    world = REPO / "data" / "demo"
    texts = [ln.split("\t", 1)[1] for f in ("queries.test.tsv", "queries.train.tsv")
             for ln in (world / f).read_text(encoding="utf-8").splitlines()][:args.requests]
    common = ["--max-new-tokens", str(args.max_new_tokens)] + (["--threads", str(args.threads)] if args.threads else [])

    server = Server(student, index, common + ["--max-batch", "32", "--batch-wait-ms", "5"], tmp / "batched.log")
    try:
        loaded = server.rss_mib()
        if args.warmup:  # one pass at the largest concurrency: allocator pools for full batches, lazy inits
            measure(server, "warm-up", texts[:args.warmup], max(clients))
        rss0 = server.rss_mib()
        print(f"RSS after loading {loaded:.0f} MiB, after a {args.warmup}-request warm-up at {max(clients)} clients "
              f"{rss0:.0f} MiB", flush=True)
        rows = [measure(server, "batched (max-batch 32)", texts, c) for c in [1, *clients]]
        rss = (rss0, server.rss_mib(), sum(r["requests"] for r in rows))
    finally:
        server.stop()
    server = Server(student, index, common + ["--max-batch", "1"], tmp / "unbatched.log")
    try:
        rows.append(measure(server, "unbatched (max-batch 1)", texts, max(clients)))
    finally:
        server.stop()
    report(rows, rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
