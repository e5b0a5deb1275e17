"""The demo's tiny T5, built entirely offline: a subword tokenizer trained on your texts + a random T5.

Demo only: a T5 this small, trained from scratch on a few thousand examples, is what lets the demo run in
minutes on 2 CPU cores without any pretrained weights; the paper's student is a pretrained flan-t5. No
pretrained T5 weights are needed (or reachable) on an offline machine. ``build_tiny_t5`` trains a
T5-style tokenizer (pad id 0, eos id 1, unk id 2, SentencePiece's ``▁`` word boundaries; BPE merges)
with the ``tokenizers`` library, wraps it as a ``transformers`` fast tokenizer, and saves a randomly
initialised :class:`~transformers.T5ForConditionalGeneration` of the requested size next to it (or the
demo's :class:`~radcot.demo.pointer.PointerT5ForConditionalGeneration` with ``pointer=1``), in
Hugging Face format (safetensors). The directory then loads like any hub checkpoint.

The student finds this module through its hooks (:mod:`radcot.student.hooks`): the model spec
``tiny-t5[:key=value,...]`` names :func:`build`, and :func:`legacy_model_class` maps checkpoints of
radcot <= 0.2 to their class.

Example:
    >>> from radcot.demo.tiny import build_tiny_t5
    >>> path = build_tiny_t5(["a small corpus", "of training texts"] * 50, "/tmp/tiny-t5",
    ...                      vocab_size=200)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from radcot._deps import require
from radcot.utils import atomic_dir, write_json

logger = logging.getLogger("radcot.demo")

#: keyword -> build_tiny_t5 argument accepted in a ``tiny-t5:k=v,...`` model spec
TINY_T5_KEYS = {"vocab_size": int, "d_model": int, "layers": int, "heads": int, "d_ff": int, "seed": int,
                "dropout": float, "pointer": int, "context_frequency": int}
TINY_T5_DEFAULTS = {"vocab_size": 4000, "d_model": 128, "layers": 2, "heads": 4, "d_ff": 512, "seed": 0,
                    "dropout": 0.1, "pointer": 0, "context_frequency": 0}
#: options of radcot <= 0.2 that were measured and dropped: the reason, for a clear refusal
DROPPED_KEYS = {"pointer_debias": "the frequency-debiased pointer was measured and dropped after radcot 0.2 "
                                  "(eval/demo-ablations.md)"}


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
        if key in DROPPED_KEYS:
            raise ValueError(f"tiny-t5 option {key!r} in {spec!r} no longer exists: {DROPPED_KEYS[key]}; remove it")
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
                  pointer: int = 0, context_frequency: int = 0) -> Path:
    """Train a tokenizer on ``texts`` and save a randomly initialised T5 of that size to ``out_dir``.

    Args:
        texts: training texts (inputs and targets) for the tokenizer; a few thousand sentences suffice.
        out_dir: where the HF-format model (``config.json``, ``model.safetensors``, ``tokenizer.json``) goes;
            written atomically.
        vocab_size: vocabulary size (the trainer may return fewer pieces on small corpora).
        d_model, layers, heads, d_ff: T5 sizes (``layers`` for both encoder and decoder).
        seed: seed of the random initialisation.
        dropout: dropout rate.
        pointer: 1 = add the copy mechanism (:class:`radcot.demo.pointer.PointerT5ForConditionalGeneration`).
        context_frequency: 1 = the encoder also reads, per input token, in how many of the example's FiD inputs
            its token occurs (:func:`radcot.demo.pointer.context_frequency`; needs pointer).

    Returns:
        ``out_dir`` as a Path.

    Example:
        >>> build_tiny_t5(["some text"] * 100, "/tmp/t5", vocab_size=100, d_model=64)  # doctest: +SKIP
    """
    torch = require("torch", "the offline tiny T5")
    transformers = require("transformers", "the offline tiny T5")
    if d_model % heads:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
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
            from radcot.demo.pointer import PointerT5ForConditionalGeneration

            model = PointerT5ForConditionalGeneration(config, features=bool(context_frequency))
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
                                                "pointer": int(pointer), "context_frequency": int(context_frequency),
                                                "n_texts": len(texts)})
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny T5 (%d params, vocab %d) at %s", n_params, len(tokenizer), out_dir)
    return Path(out_dir)


# ----------------------------------------------------------------------------------- the student's hooks


def build(spec: str, texts: Iterable[str], out_dir: str | os.PathLike) -> Path:
    """The model-builder hook of ``tiny-t5[:key=value,...]`` specs (:data:`radcot.student.hooks.MODEL_BUILDERS`).

    Example:
        >>> build("tiny-t5:d_model=64,layers=1", ["some text"] * 100, "/tmp/t5")  # doctest: +SKIP
    """
    return build_tiny_t5(texts, out_dir, **parse_tiny_spec(spec))


def legacy_model_class(config: Mapping[str, Any]) -> str | None:
    """The legacy-class hook (:data:`radcot.student.hooks.LEGACY_CLASS_RESOLVERS`): the class of a tiny-T5
    checkpoint written by radcot <= 0.2, whose ``config.json`` has flags but no ``radcot_model_class``.

    Raises:
        ValueError: a checkpoint of a dropped variant (see :func:`radcot.demo.pointer.legacy_class_path`).
    """
    from radcot.demo.pointer import legacy_class_path

    return legacy_class_path(config)
