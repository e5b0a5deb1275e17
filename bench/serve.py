"""Benchmark: ``radcot serve`` inside a latency budget -- closed and open loop, deadlines, cache, CPU path.

Students (``--student``):

- ``demo``: the tests' tiny demo student (``tests/_demo_student.py``: a 0.4M-parameter FiD T5 reading 3 BM25
  passages of the demo world), built in a temporary directory (~40 s on 2 idle cores).
- ``small``: a flan-t5-small-shaped student with random weights: T5 v1.1 (gated-gelu, untied ``lm_head``),
  d_model 512, 8 + 8 layers, 6 heads, d_kv 64, d_ff 1024, vocabulary 32128 (a tokenizer of 32100 pieces built
  offline), reading 10 BM25 passages of up to 300 tokens each (the demo world's documents joined into ~300-token
  passages) and writing 150 tokens (random weights never stop early: every query costs the full length).
- a path: a trained student (its profile's index and settings; ``--index`` when it records none).

Scenarios, on one ``radcot serve`` (``--workers``, ``--threads`` per worker, in-memory cache):

1. ``sequential``: one client, one query per request, every query new (closed loop) -- the unloaded latency;
2. ``closed-N``: N clients (closed loop), every query new -- throughput (the capacity) and latency under load;
3. ``open-R``: Poisson arrivals at R requests/s (default ``--overload`` x the measured capacity), every query
   new, each request with ``--deadline-ms``: latency from the scheduled arrival (no coordinated omission),
   fallback rate, expanded answers per second;
4. ``zipf``: the same arrivals drawn from a pool of ``--pool`` queries with Zipf(1.1) popularity: cache hit ratio;
5. ``cache-hit``: one client asking ``--hit-queries`` queries already cached, 100 requests -- the cache's own
   latency through HTTP.

Reported per scenario: p50/p95/p99 (ms, measured by the client, whose garbage collector is off during a run),
the server's own p99 (the upper bound of its histogram bucket) and share of requests answered within the
deadline + 10%, requests/s, expanded answers/s, fallback rate, cache hit ratio; the RSS of each worker.
``--cpu-path`` adds an offline comparison of bf16 / int8 / stop-at-answer with fp32 on the same examples:
exact-match rate of the greedy token ids, token agreement (positions equal to fp32's, over fp32's tokens;
and the mean share before the first difference) and the speed-up.

Usage::

    python bench/serve.py --student small --threads 2 --deadline-ms 200 --cpu-path
    python bench/serve.py --student demo --threads 2 --deadline-ms 200 --cpu-path

Every line of output says the load average when it was measured (2 shared cores: compare runs with care).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORLD = REPO / "data" / "demo"

#: flan-t5-small's shapes (google/flan-t5-small config.json)
SMALL = dict(d_model=512, num_layers=8, num_decoder_layers=8, num_heads=6, d_kv=64, d_ff=1024, vocab_size=32128,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False)
SMALL_TOKENIZER_PIECES = 32100


def load_avg() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} {load_avg()}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- students


def demo_student(tmp: Path) -> tuple[str, str | None]:
    log(f"building the tiny demo student in {tmp} ...")
    subprocess.run([sys.executable, str(REPO / "tests" / "_demo_student.py"), str(tmp)], check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(tmp / "run"), str(tmp / "demo-bm25")


def _long_passages(out: Path, words: int = 230) -> Path:
    """The demo world's documents joined into passages of ~``words`` words (~300 T5 tokens), BEIR layout."""
    docs = [json.loads(line) for line in (WORLD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        buf, n, i = [], 0, 0
        for d in docs:
            buf.append(d["text"])
            n += len(d["text"].split())
            if n >= words:
                f.write(json.dumps({"_id": f"P{i:05d}", "title": "", "text": " ".join(buf)}) + "\n")
                buf, n, i = [], 0, i + 1
    return out


def small_student(tmp: Path) -> tuple[str, str | None]:
    """The flan-t5-small-shaped random student, its long-passage BM25 index and a profile recording both."""
    import torch
    import transformers

    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.student.model import FiDConfig, FiDStudent, untie_lm_head
    from radcot.demo.tiny import train_t5_tokenizer
    from radcot.student.profile import Decoding, Inference, RetrieverRecord, StudentProfile

    log(f"building the flan-t5-small-shaped student in {tmp} ...")
    corpus = _long_passages(tmp / "passages")
    index = BM25Retriever.build(corpus, tmp / "passages-bm25", show_progress=False)
    texts = [json.loads(line)["text"] for line in (corpus / "corpus.jsonl").read_text().splitlines()]
    tok = train_t5_tokenizer(texts, vocab_size=SMALL_TOKENIZER_PIECES - 100)
    tok.add_tokens([f"<extra_id_{i}>" for i in range(SMALL_TOKENIZER_PIECES - len(tok))], special_tokens=True)
    config = transformers.T5Config(**SMALL, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        t5 = untie_lm_head(transformers.T5ForConditionalGeneration(config), std=SMALL["d_model"] ** -0.5)
    t5.generation_config.decoder_start_token_id = 0
    student = FiDStudent(t5, tok, FiDConfig(n_context=10, text_maxlength=300))
    student.save_pretrained(tmp / "small")
    profile = StudentProfile.load(tmp / "small")
    profile.replace(inference=Inference(10, Decoding(max_new_tokens=150)),
                    retriever=RetrieverRecord.of(index)).save()
    log(f"flan-t5-small-shaped student: {sum(p.numel() for p in t5.parameters()) / 1e6:.1f}M parameters, "
        f"tokenizer {len(tok)} pieces, {len(texts)} passages")
    return str(tmp / "small"), None


# ------------------------------------------------------------------------------------------------ server


class Server:
    """``radcot serve --port 0`` in a subprocess, ready (``/health`` 200) when the constructor returns."""

    def __init__(self, args: list[str], log_path: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "radcot", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True, env=env)
        if not select.select([self.proc.stdout], [], [], 120)[0]:
            self.stop()
            raise SystemExit(f"radcot serve did not start; see {log_path}")
        self.url = self.proc.stdout.readline().split()[-1]
        self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path) -> None:
        import httpx

        deadline = time.monotonic() + 600
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while time.monotonic() < deadline and self.proc.poll() is None:
                if c.get("/health").status_code == 200 and self.loaded(c) >= self.workers:
                    self.info = c.get("/v1/info").json()
                    return
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"radcot serve did not get ready; see {log_path}")

    workers = 1

    def loaded(self, c) -> float:
        return self.metric(c, "radcot_model_loaded")

    def metric(self, c, name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(c.get("/metrics").text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def worker_pids(self) -> list[int]:
        if self.workers == 1:
            return [self.proc.pid]
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def rss_mib(self) -> list[float]:
        out = []
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------------------------ load


async def _post(client, text: str, deadline_ms: float | None) -> tuple[float, dict]:
    body = {"queries": [{"id": "q", "text": text}]}
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    r = await client.post("/v1/expand", json=body)
    if r.status_code != 200:
        return 0.0, {"status": r.status_code}
    return 0.0, r.json()["results"][0]


async def closed_loop(url: str, texts: list[str], clients: int, deadline_ms: float | None = None) -> tuple[float, list]:
    """``len(texts)`` requests from ``clients`` concurrent clients; (seconds, [(latency, result)])."""
    import httpx

    todo, out = list(texts), []

    async def client(c):
        while todo:
            text = todo.pop()
            t0 = time.perf_counter()
            _, res = await _post(c, text, deadline_ms)
            out.append((time.perf_counter() - t0, res))

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        return time.perf_counter() - t0, out


async def open_loop(url: str, texts: list[str], rate: float, deadline_ms: float | None, seed: int = 0) -> tuple[float, list]:
    """One request per text at Poisson arrivals of ``rate``/s; latency counts from the scheduled arrival."""
    import httpx

    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for _ in texts:
        t += rng.expovariate(rate)
        arrivals.append(t)
    out = []

    async def one(c, at: float, text: str, start: float):
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        _, res = await _post(c, text, deadline_ms)
        out.append((time.perf_counter() - (start + at), res))

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=2000)) as c:
        start = time.perf_counter()
        await asyncio.gather(*(one(c, at, text, start) for at, text in zip(arrivals, texts)))
        return time.perf_counter() - start, out


def zipf_stream(pool: list[str], n: int, s: float = 1.1, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** s for i in range(len(pool))]
    return rng.choices(pool, weights=weights, k=n)


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarize(name: str, seconds: float, results: list, **extra) -> dict:
    ok = [(lat, r) for lat, r in results if "status" not in r]
    lat = [x * 1000 for x, _ in ok]
    fallbacks = sum(1 for _, r in ok if r.get("fallback") in ("deadline", "overloaded"))
    row = {"scenario": name, "requests": len(results), "errors": len(results) - len(ok),
           "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99), "max_ms": max(lat, default=0),
           "req_per_s": len(results) / seconds, "expanded_per_s": (len(ok) - fallbacks) / seconds,
           "fallback_rate": fallbacks / max(1, len(ok)), "hit_ratio": sum(1 for _, r in ok if r.get("cached")) /
           max(1, len(ok)), "load": load_avg(), **extra}
    log(f"{name}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                if k not in ("scenario", "load")))
    return row


def server_hist(server: Server) -> dict[float, float]:
    """The server's own latency histogram of ``/v1/expand`` (cumulative counts by bucket bound, seconds)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(httpx.get(server.url + "/metrics").text):
        for s in fam.samples:
            if s.name == "radcot_request_seconds_bucket" and s.labels.get("path") == "/v1/expand":
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value  # summed over workers
    return out


def server_side(before: dict, after: dict, deadline_ms: float) -> dict:
    """From the server's histogram: the p99 bucket (its upper bound, ms) and the share within deadline + 10%."""
    n = after[float("inf")] - before.get(float("inf"), 0.0)
    if not n:
        return {}
    share = {le: (after[le] - before.get(le, 0.0)) / n for le in sorted(after)}
    p99 = next(le for le, v in share.items() if v >= 0.99)
    limit = max((le for le in share if le <= deadline_ms * 1.1 / 1000 + 1e-9), default=None)
    return {"server_p99_le_ms": p99 * 1000, "server_within_deadline_10pct": share[limit] if limit else None}


def measured(server: Server, args, name: str, run, **extra) -> dict:
    """Run one scenario (the client's garbage collector off: its pauses would count as latency) and summarise it
    with the server's own view."""
    import gc

    before = server_hist(server)
    gc.collect()
    gc.disable()
    try:
        seconds, results = asyncio.run(run)
    finally:
        gc.enable()
    return summarize(name, seconds, results, **extra, **server_side(before, server_hist(server), args.deadline_ms))


def run_scenarios(server: Server, args, texts: list[str], pool: list[str]) -> list[dict]:
    fresh = iter(texts)

    def take(n: int) -> list[str]:
        got = list(itertools.islice(fresh, n))
        if len(got) < n:  # a fast student at 2x its capacity for --duration s can ask more than the world has
            log(f"only {len(got)} new queries left of the {n} asked for: this run is shorter (lower --duration)")
        return got

    rows = []
    asyncio.run(closed_loop(server.url, take(2), 1))  # warm-up
    rows.append(measured(server, args, "sequential", closed_loop(server.url, take(args.sequential), 1)))
    capacity = rows[0]["req_per_s"]
    for n in args.clients:
        row = measured(server, args, f"closed-{n}", closed_loop(server.url, take(args.per_client * n), n))
        rows.append(row)
        capacity = max(capacity, row["req_per_s"])
    rate = args.rate or args.overload * capacity
    n_open = max(20, int(rate * args.duration))
    rows.append(measured(server, args, f"open-{rate:.2g}/s deadline {args.deadline_ms:g} ms",
                         open_loop(server.url, take(n_open), rate, args.deadline_ms), rate=rate, capacity=capacity))
    stream = zipf_stream(pool, n_open, seed=1)
    rows.append(measured(server, args, f"zipf-{rate:.2g}/s deadline {args.deadline_ms:g} ms (pool {len(pool)})",
                         open_loop(server.url, stream, rate, args.deadline_ms, seed=1), rate=rate))
    hot = take(args.hit_queries)
    asyncio.run(_warm(server.url, hot))  # one request of all of them, no deadline: generated and cached
    rows.append(measured(server, args, "cache-hit", closed_loop(server.url, hot * (100 // len(hot) + 1), 1)))
    return rows


async def _warm(url: str, texts: list[str]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=3600) as c:
        r = await c.post("/v1/expand", json={"queries": [{"id": str(i), "text": t} for i, t in enumerate(texts)],
                                             "deadline_ms": 3_600_000})
        assert all(x["fallback"] in (None, "no_cot") for x in r.json()["results"]), r.text[:300]


# --------------------------------------------------------------------------------------------- CPU path


def _trim(ids: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for t in ids[1:]:  # the decoder start token first
        if t == pad:
            break
        out.append(t)
        if t == eos:
            break
    return out


def cpu_path_report(student_dir: str, index: str | None, queries: list[str], batch: int, threads: int) -> list[dict]:
    """fp32 vs bf16 / int8 / stop-at-answer on the same examples: ids agreement and speed (in this process)."""
    import copy

    import torch

    from radcot.records import Query
    from radcot.serving.cpu import CpuPath, answer_stop, prepare
    from radcot.student.generate import examples_from_queries
    from radcot.student.model import FiDStudent
    from radcot.student.profile import StudentProfile

    torch.set_num_threads(threads)
    profile = StudentProfile.load(student_dir)
    retriever = profile.open_retriever(index)
    base = FiDStudent.from_pretrained(profile.checkpoint).eval()
    k, dec = profile.inference.n_context, profile.inference.decoding
    examples = examples_from_queries([Query(str(i), q) for i, q in enumerate(queries)], retriever, k,
                                     base.fid_config.no_context, 64)
    eos, pad = base.t5.generation_config.eos_token_id, base.tokenizer.pad_token_id
    kwargs = dict(dec.generate_kwargs(), do_sample=False, num_return_sequences=1, use_cache=True)

    def run(student, stop: bool, limit: int | None = None) -> tuple[float, list[list[int]]]:
        ids, t0 = [], time.perf_counter()
        for i in range(0, min(len(examples), limit or len(examples)), batch):
            chunk = [dict(ex, passages=list(ex["passages"])[:k]) for ex in examples[i:i + batch]]
            kw = dict(kwargs, stopping_criteria=answer_stop(student.tokenizer)) if stop else kwargs
            out = student.generate(*student.collator.encode_inputs(chunk), **kw)
            ids.extend(_trim(row, eos, pad) for row in out.tolist())
        return time.perf_counter() - t0, ids

    paths = [CpuPath("fp32"), CpuPath("bf16"), CpuPath("int8"), CpuPath("fp32", True), CpuPath("int8", True)]
    rows, ref = [], None
    for path in paths:
        student = prepare(copy.deepcopy(base), path, "cpu")
        run(student, path.stop_at_answer, limit=batch)  # warm-up: one batch (kernels, allocator)
        seconds, ids = run(student, path.stop_at_answer)
        if ref is None:
            ref_s, ref = seconds, ids
        exact = sum(a == b for a, b in zip(ids, ref)) / len(ref)
        same = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(ids, ref)) / max(1, sum(map(len, ref)))
        prefix = statistics.mean(_first_diff(a, b) / max(1, len(b)) for a, b in zip(ids, ref))
        row = {"path": path.label, "seconds": seconds, "speedup": ref_s / seconds, "exact_match": exact,
               "token_agreement": same, "prefix_agreement": prefix,
               "mean_tokens": statistics.mean(map(len, ids)), "load": load_avg()}
        log(f"cpu path {path.label}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in row.items() if k != "load"))
        rows.append(row)
    return rows


def _first_diff(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ------------------------------------------------------------------------------------------------- main


def report(student: str, info: dict, rows: list[dict], rss: list[float], cpu: list[dict] | None) -> None:
    print(f"\n## {student}: {info['student'].get('n_context')} passages, decoding {info['student']['decoding']}, "
          f"workers {info['serve']['workers']}")
    print(f"{'scenario':<40} {'req':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'srv p99<=':>9} {'srv<=D+10%':>10} "
          f"{'req/s':>7} {'exp/s':>7} {'fallback':>8} {'hits':>6}  load")
    for r in rows:
        within = r.get("server_within_deadline_10pct")
        print(f"{r['scenario']:<40} {r['requests']:>5} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r.get('server_p99_le_ms', float('nan')):>9.0f} {'' if within is None else f'{within:.1%}':>10} "
              f"{r['req_per_s']:>7.2f} {r['expanded_per_s']:>7.2f} {r['fallback_rate']:>8.1%} {r['hit_ratio']:>6.1%}"
              f"  {r['load']}")
    print("RSS per worker (MiB): " + ", ".join(f"{x:.0f}" for x in rss))
    if cpu:
        print(f"\n{'CPU path':<26} {'seconds':>8} {'speed-up':>8} {'exact ids':>9} {'token agr.':>10} "
              f"{'prefix agr.':>11} {'tokens':>7}  load")
        for r in cpu:
            print(f"{r['path']:<26} {r['seconds']:>8.2f} {r['speedup']:>8.2f} {r['exact_match']:>9.1%} "
                  f"{r['token_agreement']:>10.1%} {r['prefix_agreement']:>11.1%} {r['mean_tokens']:>7.1f}  {r['load']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", default="demo", help="demo, small, or a trained student's directory")
    p.add_argument("--index", help="its index (a student without a recorded one)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker (default 2)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--deadline-ms", type=float, default=200.0)
    p.add_argument("--sequential", type=int, default=20, help="requests of the sequential run (default 20)")
    p.add_argument("--clients", default="4,16", help="closed-loop client counts (default 4,16)")
    p.add_argument("--per-client", type=int, default=4, help="requests per closed-loop client (default 4)")
    p.add_argument("--rate", type=float, default=None, help="open-loop arrivals/s (default: --overload x capacity)")
    p.add_argument("--overload", type=float, default=2.0, help="open-loop rate as a multiple of the capacity")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of open-loop arrivals (default 30)")
    p.add_argument("--pool", type=int, default=200, help="distinct queries of the Zipf run (default 200)")
    p.add_argument("--hit-queries", type=int, default=8, help="queries cached for the cache-hit run (default 8)")
    p.add_argument("--cpu-path", action="store_true", help="also compare bf16/int8/stop-at-answer with fp32")
    p.add_argument("--cpu-queries", type=int, default=32, help="queries of the CPU-path comparison (default 32)")
    p.add_argument("--cpu-batch", type=int, default=8, help="batch size of the CPU-path comparison (default 8)")
    p.add_argument("--work-dir", default=None, help="keep the built student here (default: a temporary directory)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    tmp = Path(args.work_dir or tempfile.mkdtemp(prefix="radcot-bench-serve-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if args.student == "demo":
        student, index = demo_student(tmp) if not (tmp / "run" / "best").is_dir() else (str(tmp / "run"), str(tmp / "demo-bm25"))
    elif args.student == "small":
        student, index = small_student(tmp) if not (tmp / "small").is_dir() else (str(tmp / "small"), None)
    else:
        student, index = args.student, args.index
    queries = [ln.split("\t", 1)[1] for f in ("queries.test.tsv", "queries.train.tsv")
               for ln in (WORLD / f).read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(queries)
    pool, texts = queries[:args.pool], queries[args.pool:]

    cpu = cpu_path_report(student, index, texts[-args.cpu_queries:], args.cpu_batch, args.threads) \
        if args.cpu_path else None
    flags = ["--student", student, "--threads", str(args.threads), "--workers", str(args.workers), "--device", "cpu",
             "--cache-size", "100000", "--max-queue", "100000"] + (["--index", index] if index else [])
    Server.workers = args.workers
    server = Server(flags, tmp / "serve.log")
    try:
        log(f"serving {server.info['student']['student']} (fingerprint {server.info['student']['fingerprint']})")
        rows = run_scenarios(server, args, texts[:-args.cpu_queries], pool)
        rss = server.rss_mib()
    finally:
        server.stop()
    report(args.student, server.info, rows, rss, cpu)
    if args.json:
        Path(args.json).write_text(json.dumps({"student": args.student, "info": server.info, "rows": rows,
                                               "rss_mib": rss, "cpu_path": cpu}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
