"""A tiny T5 built entirely offline: a subword tokenizer trained on your texts + a random T5.

No pretrained T5 weights are needed (or reachable) on an offline machine. ``build_tiny_t5`` trains a
T5-style tokenizer (pad id 0, eos id 1, unk id 2, SentencePiece's ``▁`` word boundaries; BPE merges)
with the ``tokenizers`` library, wraps it as a ``transformers`` fast tokenizer, and saves a randomly
initialised :class:`~transformers.T5ForConditionalGeneration` of the requested size next to it, in
Hugging Face format (safetensors). The directory then loads like any hub checkpoint.

Example:
    >>> from radcot.student.offline import build_tiny_t5
    >>> path = build_tiny_t5(["a small corpus", "of training texts"] * 50, "/tmp/tiny-t5",
    ...                      vocab_size=200)  # doctest: +SKIP
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

#: keyword -> build_tiny_t5 argument accepted in a ``tiny-t5:k=v,...`` model spec
TINY_T5_KEYS = {"vocab_size": int, "d_model": int, "layers": int, "heads": int, "d_ff": int, "seed": int,
                "dropout": float, "pointer": int, "pointer_debias": int,
                "context_frequency": int}
TINY_T5_DEFAULTS = {"vocab_size": 4000, "d_model": 128, "layers": 2, "heads": 4, "d_ff": 512, "seed": 0,
                    "dropout": 0.1, "pointer": 0, "pointer_debias": 0, "context_frequency": 0}


def is_tiny_spec(model: str) -> bool:
    """Whether ``model`` names the offline tiny T5 (``tiny-t5`` or ``tiny-t5:d_model=128,layers=2``)."""
    return str(model) == "tiny-t5" or str(model).startswith("tiny-t5:")


def parse_tiny_spec(spec: str) -> dict:
    """Parse ``tiny-t5[:key=value,...]`` into ``build_tiny_t5`` keyword arguments (defaults filled in).

    Example:
        >>> parse_tiny_spec("tiny-t5:d_model=256,layers=3")["d_model"]
        256
    """
    if not is_tiny_spec(spec):
        raise ValueError(f"not a tiny-t5 spec: {spec!r} (expected 'tiny-t5' or 'tiny-t5:d_model=128,layers=2')")
    out = dict(TINY_T5_DEFAULTS)
    _, _, rest = spec.partition(":")
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in TINY_T5_KEYS:
            raise ValueError(f"bad tiny-t5 option {item!r} in {spec!r}: expected key=value with key in "
                             f"{sorted(TINY_T5_KEYS)}")
        try:
            out[key] = TINY_T5_KEYS[key](value)
        except ValueError:
            raise ValueError(f"tiny-t5 option {key}={value!r} in {spec!r} is not a {TINY_T5_KEYS[key].__name__}") from None
    return out


def train_t5_tokenizer(texts: Iterable[str], vocab_size: int = 4000):
    """Train a T5-style subword tokenizer on ``texts``; returns a ``transformers`` fast tokenizer.

    Special tokens follow T5: ``<pad>`` = 0 (also the decoder start), ``</s>`` = 1 (appended to every
    encoded text), ``<unk>`` = 2. Words are split on whitespace (SentencePiece's ``▁`` marker, so decoding
    restores spaces) and punctuation is split off, then BPE merges are learned: frequent words -- and the
    names a student has to copy from its passages -- become single tokens.

    BPE rather than ``tokenizers``' Unigram trainer: on the demo world's texts (tokenizers 0.23.3) the
    Unigram trainer returned a degenerate vocabulary (``Answer`` -> ``A n s wer``, ``is`` -> ``▁ is``, 2,232
    pieces for a requested 4,000): longer sequences, and demo students trained on it for 200 steps wrote
    the same CoT for every query. Printable ASCII is always in the alphabet, so a character missing from
    the training texts is not lost as ``<unk>``.
    """
    tokenizers = require("tokenizers", "the offline tiny T5")
    transformers = require("transformers", "the offline tiny T5")
    from tokenizers import decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = tokenizers.Tokenizer(BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False,
                         initial_alphabet=[chr(c) for c in range(33, 127)] + ["▁"])
    tok.train_from_iterator((t for t in texts if t and t.strip()), trainer=trainer)
    if tok.token_to_id("<pad>") != 0 or tok.token_to_id("</s>") != 1 or tok.token_to_id("<unk>") != 2:
        raise RuntimeError("tokenizer special token ids are not T5's (pad 0, eos 1, unk 2)")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=100_000,
    )


def build_tiny_t5(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 4000, d_model: int = 128,
                  layers: int = 2, heads: int = 4, d_ff: int = 512, seed: int = 0, dropout: float = 0.1,
                  pointer: int = 0, pointer_debias: int = 0, context_frequency: int = 0) -> Path:
    """Train a tokenizer on ``texts`` and save a randomly initialised T5 of that size to ``out_dir``.

    Args:
        texts: training texts (inputs and targets) for the tokenizer; a few thousand sentences suffice.
        out_dir: where the HF-format model (``config.json``, ``model.safetensors``, ``tokenizer.json``) goes;
            written atomically.
        vocab_size: vocabulary size (the trainer may return fewer pieces on small corpora).
        d_model, layers, heads, d_ff: T5 sizes (``layers`` for both encoder and decoder).
        seed: seed of the random initialisation.
        dropout: dropout rate.
        pointer: 1 = add the copy mechanism (:class:`radcot.student.pointer.PointerT5ForConditionalGeneration`).
        pointer_debias: 1 = its copy weights count each input token once, however often it occurs; 2 = the model
            learns how much to discount frequent input tokens at each step (both need pointer).
        context_frequency: 1 = the encoder also reads, per input token, in how many of the example's FiD inputs
            its token occurs (:func:`radcot.student.pointer.context_frequency`; needs pointer).

    Returns:
        ``out_dir`` as a Path.

    Example:
        >>> build_tiny_t5(["some text"] * 100, "/tmp/t5", vocab_size=100, d_model=64)  # doctest: +SKIP
    """
    torch = require("torch", "the offline tiny T5")
    transformers = require("transformers", "the offline tiny T5")
    if d_model % heads:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
    if pointer_debias and not pointer:
        raise ValueError("pointer_debias needs pointer=1 (it changes the copy mechanism's weights)")
    if context_frequency and not pointer:
        raise ValueError("context_frequency needs pointer=1 (the feature lives in the pointer T5's encoder input)")
    texts = list(texts)
    if not texts:
        raise ValueError("build_tiny_t5 needs texts to train its tokenizer, got none")
    tokenizer = train_t5_tokenizer(texts, vocab_size=vocab_size)
    config = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
        num_decoder_layers=layers, num_heads=heads, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, dropout_rate=dropout, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if pointer:
            from radcot.student.pointer import PointerT5ForConditionalGeneration

            model = PointerT5ForConditionalGeneration(config, debias=int(pointer_debias),
                                                      features=bool(context_frequency))
        else:
            model = transformers.T5ForConditionalGeneration(config)
        # tie_word_embeddings=False means "no d_model**-0.5 output scaling" (T5 v1.1 / flan-t5 style); transformers 5
        # ties lm_head to the shared embedding regardless, so this sets both: std d_model**-0.5 gives logits of
        # unit variance (initial loss ~ln(vocab), not ~40 nats with std 1.0) and learns faster
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, d_model ** -0.5)
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    from radcot.student.model import quiet_hf

    with atomic_dir(out_dir) as tmp, quiet_hf():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "tiny_t5.json", {"vocab_size": len(tokenizer), "d_model": d_model, "layers": layers,
                                                "heads": heads, "d_ff": d_ff, "seed": seed, "dropout": dropout,
                                                "pointer": int(pointer), "pointer_debias": int(pointer_debias),
                                                "context_frequency": int(context_frequency),
                                                "n_texts": len(texts)})
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny T5 (%d params, vocab %d) at %s", n_params, len(tokenizer), out_dir)
    return Path(out_dir)


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
