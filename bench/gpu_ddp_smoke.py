"""Smoke check of student training under torchrun: NCCL DDP, bf16 autocast, checkpoint save/resume, generation.

One command on a machine with a GPU (nothing is downloaded; about a minute)::

    python bench/gpu_ddp_smoke.py

It prints one PASS/FAIL line per check and exits 0 only when every check passes:

1. ``train``: ``torchrun --nproc_per_node=N -m radcot train`` trains a flan-t5-small-shaped stand-in (the real
   flan-t5-small dimensions, random weights, a SentencePiece tokenizer trained on the embedded demo corpus, all
   built offline) with bf16 autocast for 2 of 4 steps and stops (``--stop-after 2``);
2. ``checkpoint``: ``checkpoints/step-2`` was written by N processes; ``device.json`` names the GPU and bf16;
3. ``resume``: ``--resume`` continues from step 2 to step 4 (each step logged once, finite losses, ``best/``);
4. ``generate``: ``best/`` loads on the GPU; greedy decoding (radcot's KV-cache loop) returns transformers'
   ``generate()`` ids, and bf16-autocast generation writes text.

Ranks: one per GPU, at most ``--nproc`` (default 2). With a single GPU it runs ONE rank, still a real NCCL process
group (every collective of the trainer goes through NCCL): NCCL >= 2.5 refuses two ranks on one GPU ("Duplicate
GPU detected", NVIDIA/nccl#418). ``--cpu`` runs the same checks with gloo on CPU (2 ranks, fp32: bf16 autocast is
for GPUs and falls back, as ``radcot train`` logs), to test this script on any machine.

Usage::

    python bench/gpu_ddp_smoke.py [--nproc 2] [--size small] [--cpu] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

#: model shapes: the published flan-t5 dimensions (gpu_student.FLAN_T5) and a tiny one for --cpu
TINY = dict(d_model=64, d_ff=128, num_heads=4, d_kv=16, num_layers=2, num_decoder_layers=2)
STEPS, STOP_AT, K = 4, 2, 3


def _shapes() -> dict:
    from gpu_student import FLAN_T5

    return {"tiny": TINY, **FLAN_T5}


def _texts(n: int = 3000) -> list[dict]:
    """Documents of the embedded demo corpus (``data/demo/corpus.jsonl``)."""
    docs = []
    with open(REPO / "data" / "demo" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line))
            if len(docs) >= n:
                break
    return docs


def build_data(out: Path, docs: list[dict], n_queries: int = 48) -> Path:
    """A distillation dataset in radcot's layout (``radcot build-data``'s columns): each query is a document's first
    words, its ``K`` passages that document and its neighbours, its target the document's first sentence."""
    import datasets

    datasets.disable_progress_bars()

    def rows(lo: int, hi: int) -> dict:
        out = {"query_id": [], "query": [], "target": [], "passages": []}
        for i in range(lo, hi):
            d = docs[i]
            out["query_id"].append(f"q{i}")
            out["query"].append("who is " + " ".join(d["text"].split()[:4]))
            out["target"].append(d["text"].split(". ")[0])
            out["passages"].append([{"doc_id": docs[j]["_id"], "title": "", "text": docs[j]["text"],
                                     "score": float(K - n)} for n, j in enumerate(range(i, i + K))])
        return out

    dev = n_queries // 6
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(0, n_queries - dev)),
                          "dev": datasets.Dataset.from_dict(rows(n_queries - dev, n_queries))}).save_to_disk(str(out))
    (out / "radcot_data.json").write_text(json.dumps({"k": K, "no_context": False, "note": "gpu_ddp_smoke"}))
    return out


def _sentencepiece():
    try:
        from radcot.student.standin import train_sentencepiece_tokenizer
    except ImportError:  # before the stand-in builders moved
        from radcot.student.standin import train_sentencepiece_tokenizer
    return train_sentencepiece_tokenizer


def build_model(out: Path, docs: list[dict], size: str) -> Path:
    """A flan-t5-shaped T5 v1.1 (gated-gelu, own ``lm_head``) with a SentencePiece tokenizer, saved as a student."""
    import torch
    import transformers

    from radcot.student.model import FiDStudent, untie_lm_head

    tok = _sentencepiece()([d["text"] for d in docs], out / "tokenizer", vocab_size=2000)
    cfg = transformers.T5Config(vocab_size=len(tok), feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                **_shapes()[size])
    torch.manual_seed(0)
    t5 = untie_lm_head(transformers.T5ForConditionalGeneration(cfg), std=cfg.d_model ** -0.5)
    for key, value in (("decoder_start_token_id", 0), ("eos_token_id", 1), ("pad_token_id", 0)):
        setattr(t5.generation_config, key, value)
    FiDStudent(t5, tok).save_pretrained(out / "model")
    return out / "model"


class Checks:
    """PASS/FAIL lines, one per check."""

    def __init__(self):
        self.failed = 0

    def report(self, name: str, ok: bool, detail: str, t0: float) -> bool:
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name:<10} {detail}  ({time.time() - t0:.1f} s)", flush=True)
        return ok

    def guard(self, name: str, check, *args) -> bool:
        """Run ``check(self, *args)``; an exception is that check's FAIL line (with its type and message)."""
        t0 = time.time()
        try:
            return check(self, *args)
        except Exception as e:  # noqa: BLE001 - a smoke check reports every failure as FAIL and goes on
            return self.report(name, False, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                               t0)


def torchrun(nproc: int, config: Path, out: Path, extra: list[str], log: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "radcot",
           "train", "--config", str(config), "--out", str(out), "--no-progress", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}", encoding="utf-8")
    return proc


def _tail(proc: subprocess.CompletedProcess, log: Path) -> str:
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    return f"exit {proc.returncode}: {' | '.join(lines[-3:])[:600]} (full output: {log})"


def check_train(checks: Checks, nproc: int, config: Path, run: Path, work: Path) -> bool:
    t0 = time.time()
    proc = torchrun(nproc, config, run, ["--stop-after", str(STOP_AT)], work / "train.log")
    ok = proc.returncode == 0 and (run / "checkpoints" / f"step-{STOP_AT}").is_dir()
    return checks.report("train", ok, f"{nproc} rank(s), stopped after step {STOP_AT}" if ok
                         else _tail(proc, work / "train.log"), t0)


def check_checkpoint(checks: Checks, nproc: int, run: Path, cpu: bool) -> bool:
    t0 = time.time()
    state = json.loads((run / "checkpoints" / f"step-{STOP_AT}" / "trainer_state.json").read_text())
    device = json.loads((run / "device.json").read_text())
    want = ("cpu", "fp32") if cpu else ("cuda:0", "bf16")
    ok = state["world_size"] == nproc and state["step"] == STOP_AT and (device["device"], device["precision"]) == want
    return checks.report("checkpoint", ok, f"world_size {state['world_size']}, step {state['step']}, device "
                         f"{device['device']}, precision {device['precision']} ({device['precision_reason']})", t0)


def check_resume(checks: Checks, nproc: int, config: Path, run: Path, work: Path) -> bool:
    t0 = time.time()
    proc = torchrun(nproc, config, run, ["--resume"], work / "resume.log")
    if proc.returncode != 0:
        return checks.report("resume", False, _tail(proc, work / "resume.log"), t0)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    finite = all(math.isfinite(r["loss"]) for r in rows if r["kind"] == "train")
    ok = steps == list(range(1, STEPS + 1)) and finite and (run / "best" / "model.safetensors").is_file()
    return checks.report("resume", ok, f"train steps logged {steps}, losses finite: {finite}, best/: "
                         f"{(run / 'best').is_dir()}", t0)


def check_generate(checks: Checks, run: Path, data: Path, cpu: bool) -> bool:
    import torch

    from radcot.student.data import load_distillation_data
    from radcot.student.model import FiDStudent

    t0 = time.time()
    device = torch.device("cpu" if cpu else "cuda:0")
    student = FiDStudent.from_pretrained(run / "best").to(device).eval()
    dd, _ = load_distillation_data(data)
    rows = [dd["dev"][i] for i in range(min(4, len(dd["dev"])))]
    ii, am, pm = (t.to(device) for t in student.collator.encode_inputs(rows))
    fast = student.generate(ii, am, pm, max_new_tokens=16)
    reference = student.generate(ii, am, pm, max_new_tokens=16, repetition_penalty=1.0)  # transformers' generate()
    width = min(fast.shape[1], reference.shape[1])
    same = torch.equal(fast[:, :width], reference[:, :width])
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=not cpu):
        texts = student.generate_text(rows, max_new_tokens=16)
    ok = same and all(isinstance(t, str) for t in texts) and any(t.strip() for t in texts)
    return checks.report("generate", ok, f"greedy ids equal generate(): {same}; {len(texts)} texts on {device}, "
                         f"e.g. {texts[0][:60]!r}", t0)


def _ranks(args, torch) -> tuple[int, str]:
    """How many ranks, and why."""
    if args.cpu:
        return args.nproc, f"--cpu: {args.nproc} gloo ranks on CPU"
    gpus = torch.cuda.device_count()
    if gpus >= args.nproc:
        return args.nproc, f"{gpus} GPU(s): {args.nproc} NCCL ranks, one GPU each"
    return gpus, (f"{gpus} GPU(s): {gpus} NCCL rank(s); NCCL refuses two ranks on one GPU (Duplicate GPU detected), "
                  f"so {args.nproc} ranks need {args.nproc} GPUs")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="ranks (at most one per GPU; default 2)")
    p.add_argument("--size", choices=["tiny", "small", "base", "large"], default=None,
                   help="stand-in shape (default: small on GPU, tiny with --cpu)")
    p.add_argument("--cpu", action="store_true", help="gloo on CPU (tests this script without a GPU)")
    p.add_argument("--keep", help="work directory to keep (default: a temp dir, removed)")
    args = p.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(f"bench/gpu_ddp_smoke.py needs a CUDA GPU: this torch ({torch.__version__}) sees none. Run it on a GPU "
              f"machine, or pass --cpu to check the script with gloo on CPU.", file=sys.stderr)
        return 2
    size = args.size or ("tiny" if args.cpu else "small")
    nproc, why = _ranks(args, torch)
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "n/a"
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if not args.cpu else ["cpu"]
    print(f"torch {torch.__version__}, NCCL {nccl}, devices {devices}; {why}; stand-in {size}", flush=True)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="radcot-ddp-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run_checks(args, nproc, size, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run_checks(args, nproc: int, size: str, work: Path) -> int:
    docs = _texts()
    data = build_data(work / "data", docs)
    model = build_model(work, docs, size)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    config = work / "train.json"
    config.write_text(json.dumps({
        "data": str(data), "model": str(model), "out": str(run), "max_steps": STEPS, "batch_size": 2,
        "text_maxlength": 64, "target_maxlength": 32, "lr": 1e-3, "eval_every": STEPS, "eval_max_examples": 4,
        "eval_max_new_tokens": 8, "save_every": STOP_AT, "log_every": 1, "precision": "bf16",
        "device": "cpu" if args.cpu else "auto"}))
    checks = Checks()
    if checks.guard("train", check_train, nproc, config, run, work):
        checks.guard("checkpoint", check_checkpoint, nproc, run, args.cpu)
        if checks.guard("resume", check_resume, nproc, config, run, work):
            checks.guard("generate", check_generate, run, data, args.cpu)
    print(f"{'ALL PASS' if not checks.failed else f'{checks.failed} FAILED'} (work dir {work}"
          f"{', kept' if args.keep else ', removed'})", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
