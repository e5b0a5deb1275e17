"""flan-t5-shaped stand-ins: randomly initialised, scaled-down models saved exactly like a flan-t5 checkpoint.

``radcot run CONFIG --rehearse`` (:mod:`radcot.rehearse`) trains these in place of
``google/flan-t5-{small,base,large}`` so that a paper config runs end to end offline, through the same
loading path a real flan-t5 takes: a SentencePiece ``spiece.model`` read by ``T5Tokenizer`` with 100
sentinels, T5 v1.1 flags (gated-gelu, ``tie_word_embeddings=False``) and an ``lm_head`` saved as its own
tensor. They belong with the product's student code, not with the demo: they imitate the paper's student
checkpoints and exercise its loading path; nothing in them knows the demo world.

Example:
    >>> from radcot.student.standin import build_flan_t5_standin
    >>> build_flan_t5_standin(["some text"] * 100, "/tmp/flan-small", size="small", vocab_size=50)  # doctest: +SKIP
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from radcot._deps import require
from radcot.utils import atomic_dir, write_json

logger = logging.getLogger("radcot.student")


#: flan-t5's architecture flags, scaled down: one stand-in size per flan-t5 size (small < base < large).
#: The real models: small d_model 512 / 8 layers, base 768 / 12, large 1024 / 24 (all gated-gelu, untied head).
FLAN_T5_STANDIN_SIZES = {
    "small": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64},
    "base": {"d_model": 48, "layers": 2, "heads": 4, "d_ff": 128},
    "large": {"d_model": 64, "layers": 2, "heads": 4, "d_ff": 192},
}


def train_sentencepiece_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 1000,
                                  extra_ids: int = 100):
    """Train a SentencePiece unigram model as T5's ``spiece.model`` and load it the way flan-t5's loads.

    Writes ``spiece.model`` and a ``tokenizer_config.json`` naming ``T5Tokenizer`` (pad 0, eos 1, unk 2,
    ``extra_ids`` sentinels ``<extra_id_N>`` at the end, as flan-t5's 32,100 pieces), then returns
    ``AutoTokenizer.from_pretrained(out_dir)``: the same resolution a flan-t5 checkpoint goes through.
    Single-threaded training on the given texts in order, so the same texts give the same bytes.
    """
    spm = require("sentencepiece", "the flan-t5-shaped stand-in tokenizer", extra="student")
    transformers = require("transformers", "the flan-t5-shaped stand-in tokenizer")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_sentencepiece_tokenizer needs texts, got none")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
        hard_vocab_limit=False)
    (out_dir / "spiece.model").write_bytes(model.getvalue())
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids, "model_max_length": 512, "eos_token": "</s>",
         "unk_token": "<unk>", "pad_token": "<pad>"}, indent=2) + "\n", encoding="utf-8")
    return transformers.AutoTokenizer.from_pretrained(str(out_dir))


def build_flan_t5_standin(texts: Iterable[str], out_dir: str | os.PathLike, size: str = "base",
                          vocab_size: int = 1000, seed: int = 0, dropout: float = 0.1) -> Path:
    """A randomly initialised, scaled-down model with flan-t5's flags, saved like a flan-t5 checkpoint.

    T5 v1.1 architecture (``feed_forward_proj="gated-gelu"``), ``tie_word_embeddings=False`` with a
    separate ``lm_head`` saved with weights distinct from the input embeddings (transformers 5 forces
    ``tie_word_embeddings=True`` into T5 configs but keeps a checkpoint's head when both tensors are present
    and differ: this is that path), and a SentencePiece tokenizer (:func:`train_sentencepiece_tokenizer`).
    Used by ``radcot run --rehearse`` in place of ``google/flan-t5-{small,base,large}``.

    Args:
        texts: tokenizer training texts.
        out_dir: the model directory (written atomically).
        size: ``small``, ``base`` or ``large`` (:data:`FLAN_T5_STANDIN_SIZES`).
        vocab_size: SentencePiece pieces (100 sentinels are added, as in flan-t5).
        seed: initialisation seed (same seed and texts: same bytes).
        dropout: dropout rate (flan-t5's is 0.1).

    Example:
        >>> build_flan_t5_standin(["some text"] * 100, "/tmp/flan-small", size="small", vocab_size=50)  # doctest: +SKIP
    """
    torch = require("torch", "the flan-t5-shaped stand-in")
    transformers = require("transformers", "the flan-t5-shaped stand-in")
    if size not in FLAN_T5_STANDIN_SIZES:
        raise ValueError(f"size must be one of {sorted(FLAN_T5_STANDIN_SIZES)}, got {size!r}")
    dims = FLAN_T5_STANDIN_SIZES[size]
    from radcot.student.model import quiet_hf

    with atomic_dir(out_dir) as tmp, quiet_hf():
        tokenizer = train_sentencepiece_tokenizer(texts, tmp, vocab_size=vocab_size)
        model = _untied_t5(transformers, torch, len(tokenizer), dims, seed, dropout)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "standin.json", {"mimics": f"google/flan-t5-{size}", "vocab_size": len(tokenizer),
                                                "seed": seed, "dropout": dropout, **dims})
    logger.info("built flan-t5-%s stand-in (%d params, vocab %d) at %s", size,
                sum(p.numel() for p in model.parameters()), len(tokenizer), out_dir)
    return Path(out_dir)


def _untied_t5(transformers, torch, vocab: int, dims: dict, seed: int, dropout: float):
    """A T5 v1.1 model whose ``lm_head`` is its own tensor, distinct from ``shared``."""
    d_model, heads = dims["d_model"], dims["heads"]
    config = transformers.T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=dims["d_ff"], num_layers=dims["layers"],
        num_decoder_layers=dims["layers"], num_heads=heads, dropout_rate=dropout, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.T5ForConditionalGeneration(config)
        head = torch.nn.Parameter(torch.randn(vocab, d_model) * d_model ** -0.5)
    model.lm_head.weight = head  # its own tensor: saved beside shared.weight, kept untied on load
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model
