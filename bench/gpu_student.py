"""Benchmark (CUDA only): flan-t5-shaped FiD students at the paper's settings, fp32 vs bf16.

For flan-t5-small/base/large-SHAPED students (the real flan-t5 configs written out below: d_model, d_ff,
heads, layers, vocabulary 32,128, gated-gelu, separate ``lm_head``; random weights, nothing downloaded):

- training: optimizer steps/s and input tokens/s in fp32 and in bf16 autocast, peak GPU memory, and loss
  parity: the same 50 steps (same seed, same random token batches) in both precisions; the bf16 losses must
  stay within ``--loss-rtol`` (default 5%) of the fp32 losses at every step;
- generation: batched FiD greedy generation (encoder once, KV cache) in queries/s at n_context 10 and 50.

Usage::

    python bench/gpu_student.py [--sizes small,base,large] [--batch-size 4] [--steps 50]

Settings (paper / RADCoT code): n_context 10, 300 tokens per (query, passage), targets of 256 tokens,
AdamW lr 1e-4. On a machine without CUDA it prints why and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the published google/flan-t5-* config.json values (T5 v1.1 architecture)
FLAN_T5 = {
    "small": dict(d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8, num_decoder_layers=8),
    "base": dict(d_model=768, d_ff=2048, num_heads=12, d_kv=64, num_layers=12, num_decoder_layers=12),
    "large": dict(d_model=1024, d_ff=2816, num_heads=16, d_kv=64, num_layers=24, num_decoder_layers=24),
}


def build(size: str, torch, transformers):
    from radcot.student.model import untie_lm_head

    cfg = transformers.T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                **FLAN_T5[size])
    torch.manual_seed(0)
    t5 = untie_lm_head(transformers.T5ForConditionalGeneration(cfg), std=cfg.d_model ** -0.5)
    t5.generation_config.decoder_start_token_id = 0
    t5.generation_config.eos_token_id = 1
    t5.generation_config.pad_token_id = 0
    return t5


def fid_forward(t5, ids, labels, transformers):
    B, N, L = ids.shape
    enc = t5.get_encoder()(input_ids=ids.reshape(B * N, L)).last_hidden_state  # (B * N, L, H)
    enc = enc.reshape(B, N * L, -1)  # (B, N * L, H)
    out = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=enc)
    return t5(encoder_outputs=out, labels=labels).loss


def train_run(size, precision, args, torch, transformers) -> dict:
    t5 = build(size, torch, transformers).cuda().train()
    opt = torch.optim.AdamW(t5.parameters(), lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    dtype = torch.bfloat16 if precision == "bf16" else None
    torch.cuda.reset_peak_memory_stats()
    losses, t0 = [], None
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        ids = torch.randint(3, 32128, (args.batch_size, args.n_context, args.text_maxlength), generator=g).cuda()
        labels = torch.randint(3, 32128, (args.batch_size, args.target_maxlength), generator=g).cuda()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = fid_forward(t5, ids, labels, transformers)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t5.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            losses.append(float(loss))
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = args.steps * args.batch_size * args.n_context * args.text_maxlength
    return {"steps_per_s": args.steps / dt, "input_tokens_per_s": tokens / dt,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "losses": losses}


def generation_qps(size, n_context, args, torch, transformers) -> float:
    t5 = build(size, torch, transformers).cuda().eval()
    g = torch.Generator().manual_seed(2)
    B, L = args.gen_batch_size, args.text_maxlength
    ids = torch.randint(3, 32128, (B, n_context, L), generator=g).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        def once():
            enc = t5.get_encoder()(input_ids=ids.reshape(B * n_context, L)).last_hidden_state.reshape(B, n_context * L, -1)
            out = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=enc)
            t5.generate(encoder_outputs=out, attention_mask=torch.ones(B, n_context * L, device="cuda", dtype=torch.long),
                        max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, do_sample=False)
        once()  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.gen_batches):
            once()
        torch.cuda.synchronize()
    return B * args.gen_batches / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="small,base,large")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--n-context", type=int, default=10)
    p.add_argument("--text-maxlength", type=int, default=300)
    p.add_argument("--target-maxlength", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--loss-rtol", type=float, default=0.05)
    p.add_argument("--gen-batch-size", type=int, default=16)
    p.add_argument("--gen-batches", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args(argv)
    import torch
    import transformers

    if not torch.cuda.is_available():
        print("bench/gpu_student.py needs CUDA: this torch sees no GPU (torch %s). Run it on a GPU machine."
              % torch.__version__, file=sys.stderr)
        return 2
    report = {"device": torch.cuda.get_device_name(), "settings": vars(args), "sizes": {}}
    ok = True
    for size in args.sizes.split(","):
        fp32 = train_run(size, "fp32", args, torch, transformers)
        bf16 = train_run(size, "bf16", args, torch, transformers)
        worst = max(abs(a - b) / abs(a) for a, b in zip(fp32["losses"], bf16["losses"]))
        ok &= worst <= args.loss_rtol
        gen = {n: generation_qps(size, n, args, torch, transformers) for n in (10, 50)}
        report["sizes"][size] = {"fp32": {k: v for k, v in fp32.items() if k != "losses"},
                                 "bf16": {k: v for k, v in bf16.items() if k != "losses"},
                                 "loss_max_rel_diff": worst, "generation_qps": gen}
        print(json.dumps({size: report["sizes"][size]}), flush=True)
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=1))
    if not ok:
        print(f"bf16 losses differ from fp32 by more than {args.loss_rtol:.0%}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
