"""The Fusion-in-Decoder student: a T5 whose decoder reads k (query, passage) encodings at once.

Each of the ``N`` (query, passage) inputs of an example is encoded independently by the T5 encoder;
the ``N`` encoder outputs are concatenated along the sequence and the decoder cross-attends to all of
them (Izacard & Grave, 2021). :class:`FiDStudent` wraps an unmodified
:class:`~transformers.T5ForConditionalGeneration` (no monkey-patched encoder): the reshape happens in
:meth:`FiDStudent.encode`, and :meth:`FiDStudent.generate` hands the pre-computed ``encoder_outputs``
and the concatenated attention mask to the stock ``generate()``, so greedy, beam search, sampling and
the KV cache all work as for any T5, with encoder states computed once per example.

A saved student is a normal Hugging Face T5 directory (``config.json``, ``model.safetensors``, the
tokenizer) plus ``fid_config.json`` (number of passages, max lengths, input template).

Example:
    >>> from radcot.student.model import FiDStudent
    >>> student = FiDStudent.from_pretrained("runs/student/best")  # doctest: +SKIP
    >>> student.generate_text([{"query": "what is a wing", "passages": [{"title": "", "text": "..."}]}])  # doctest: +SKIP
    ['A wing is ...']
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from radcot._deps import hub_reachable, require  # noqa: F401 - hub_reachable is re-exported (tests, callers)
from radcot.records import DataFormatError, OfflineResourceError, RadcotError
from radcot.student.data import NO_CONTEXT_TEMPLATE, PASSAGE_TEMPLATE, FiDCollator, resolve_template
from radcot.student.hooks import fid_hook
from radcot.utils import atomic_dir, write_json

logger = logging.getLogger("radcot.student")

FID_CONFIG_FILE = "fid_config.json"
FID_FORMAT_VERSION = 1

torch = require("torch", "the FiD student")
transformers = require("transformers", "the FiD student")


@dataclasses.dataclass
class FiDConfig:
    """How the student reads its inputs; saved as ``fid_config.json`` next to the weights.

    Args:
        n_context: passages per query ``N`` (the ``k`` of the distillation data; 1 for no-context).
        text_maxlength: max tokens of one (query, passage) input (the paper: 300).
        target_maxlength: max tokens of a training target (teacher CoT), ``</s>`` included.
        template: per-passage input template with ``{query}`` and ``{passage}`` (``{query}`` only for
            the no-context ablation).
        no_context: the "distillation without retrieval" ablation (one input per query, no passages).
    """

    n_context: int = 10
    text_maxlength: int = 300
    target_maxlength: int = 256
    template: str = PASSAGE_TEMPLATE
    no_context: bool = False

    def __post_init__(self):
        for name, kind in (("n_context", int), ("text_maxlength", int), ("target_maxlength", int), ("template", str),
                           ("no_context", bool)):
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"FiDConfig.{name} must be {'an integer' if kind is int else kind.__name__}, got "
                                f"{value!r} ({type(value).__name__})")
        self.template = resolve_template(self.template)  # a name ("official", "passage-prefix") -> its text
        if self.no_context and "{passage}" in self.template:
            self.template = NO_CONTEXT_TEMPLATE
        if self.no_context:
            self.n_context = 1
        if self.n_context < 1:
            raise ValueError(f"n_context must be >= 1, got {self.n_context}")
        if self.text_maxlength < 8:
            raise ValueError(f"text_maxlength must be >= 8 tokens, got {self.text_maxlength}")
        if self.target_maxlength < 2:
            raise ValueError(f"target_maxlength must be >= 2 tokens, got {self.target_maxlength}")
        if "{query}" not in self.template:
            raise ValueError(f"template must contain {{query}}, got {self.template!r}")
        if not self.no_context and "{passage}" not in self.template:
            raise ValueError(f"template must contain {{passage}} (or set no_context=True), got {self.template!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "format_version": FID_FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FiDConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' own progress bars (loading/writing shards) inside the block, then restore."""
    hf_logging = transformers.utils.logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _is_hub_name(name: str) -> bool:
    return not os.path.isabs(name) and not name.startswith(".") and name.count("/") <= 1 and not os.path.exists(name)


def decoder_output_scaling(t5) -> bool:
    """Whether the T5 rescales decoder outputs by ``d_model**-0.5`` before ``lm_head`` (original T5: yes;
    T5 v1.1 / flan-t5: no). transformers 5 keeps it in ``config.scale_decoder_outputs``; 4.x derives it
    from ``tie_word_embeddings``."""
    return bool(getattr(t5.config, "scale_decoder_outputs", t5.config.tie_word_embeddings))


def head_is_tied(t5) -> bool:
    """Whether ``lm_head`` holds the input embeddings (the same tensor or equal values)."""
    head, emb = t5.get_output_embeddings().weight, t5.get_input_embeddings().weight
    return head is emb or (head.shape == emb.shape and bool(torch.equal(head.detach(), emb.detach())))


def portable_head_state(t5) -> tuple[dict | None, bool]:
    """The state dict to save and the ``tie_word_embeddings`` to write, so any transformers rebuilds ``t5``.

    transformers 5 writes ``tie_word_embeddings: true`` into every T5 config (and keeps the v1.1 "no
    output scaling" in ``scale_decoder_outputs``); transformers 4.x reads ``true`` as "tie ``lm_head`` to
    the input embeddings *and* rescale by ``d_model**-0.5``", a different model for a flan-t5-style
    student. So:

    - tied head with scaling (original T5): saved as is, ``tie_word_embeddings: true``;
    - no scaling (T5 v1.1 / flan-t5, tied or not): ``lm_head.weight`` is written as its own tensor and
      the config says ``false``: 4.x loads a separate head without scaling, 5.x the same (and re-ties
      a head equal to the embeddings, as it was);
    - a separate head *with* scaling (no transformers 4.x config can say it): the scale is folded into
      the saved ``lm_head`` (same logits), ``false``.

    Returns:
        ``(state_dict or None for "save as is", tie_word_embeddings)``.
    """
    scale = decoder_output_scaling(t5)
    tied = head_is_tied(t5)
    if tied and scale:
        return None, True
    head = t5.get_output_embeddings().weight.detach().clone()
    if scale:
        head = head * (t5.config.d_model ** -0.5)
    state = dict(t5.state_dict())
    state["lm_head.weight"] = head
    return state, False


def untie_lm_head(t5, std: float | None = None):
    """Give ``t5`` its own ``lm_head`` (T5 v1.1 / flan-t5 style), e.g. for a model built from a config offline.

    transformers 5 ties ``lm_head`` to the input embeddings of every new T5, whatever the config says.

    Args:
        t5: a ``T5ForConditionalGeneration``.
        std: re-initialise the new head from N(0, std) (None: start as a copy of the embeddings).

    Returns:
        ``t5`` (changed in place).
    """
    head = t5.get_output_embeddings()
    weight = head.weight.detach().clone()
    if std is not None:
        weight.normal_(0.0, std)
    head.weight = torch.nn.Parameter(weight)
    tied_keys = getattr(t5, "all_tied_weights_keys", None)
    if isinstance(tied_keys, dict):
        tied_keys.pop("lm_head.weight", None)
    return t5


def _write_head_config(path: Path, tie: bool) -> None:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tie_word_embeddings"] = tie
    cfg["scale_decoder_outputs"] = tie  # read by transformers 5 (4.x derives it from tie_word_embeddings)
    write_json(path, cfg)


class _DropTieWarning(logging.Filter):
    """Drops transformers 5's "... set tie_word_embeddings=False to silence this warning" (advice that cannot be
    followed: transformers 5 forces the flag to True for T5) when loading a student with its own ``lm_head``, and
    its load report (:func:`check_loading_info` turns every entry of it into an error of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # transformers' load report is superseded by radcot's own error (check_loading_info raises on its entries)
        return "tie_word_embeddings=False" not in message and "LOAD REPORT" not in message


@contextlib.contextmanager
def _no_tie_warning():
    hf_logger = logging.getLogger("transformers.modeling_utils")
    f = _DropTieWarning()
    hf_logger.addFilter(f)
    try:
        yield
    finally:
        hf_logger.removeFilter(f)


# ------------------------------------------------------------------------------------------ loading checks

try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors comes with transformers
    class _SafetensorError(Exception):
        pass

#: The official RADCoT/FiD code (``FiDT5`` in its ``src/model.py``) wraps the T5 encoder in an ``EncoderWrapper``
#: (attribute ``encoder``) and each encoder block in a ``CheckpointWrapper`` (attribute ``module``), so its
#: ``save_pretrained`` writes ``encoder.encoder.block.N.module.layer...`` and ``encoder.encoder.final_layer_norm...``
#: where a T5 has ``encoder.block.N.layer...``; loading maps them back (regexes for transformers' ``key_mapping``;
#: no key of a stock T5 matches them).
OFFICIAL_FID_KEY_MAPPING = {r"^encoder\.encoder\.block\.(\d+)\.module\.": r"encoder.block.\1.",
                            r"^encoder\.encoder\.": "encoder."}

#: model types a FiD student can be (T5 and its multilingual variant share the architecture)
T5_MODEL_TYPES = ("t5", "mt5")
#: weight files transformers reads, in its order of preference
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: files holding a T5 tokenizer (fast tokenizers' JSON, or the SentencePiece model)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
#: keys named in an error before "and N more"
SHOWN_KEYS = 3


def _source_name(name_or_dir: Any) -> str:
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise TypeError(f"FiDStudent.from_pretrained(name_or_dir) takes a directory or a Hugging Face model name, got "
                        f"{name_or_dir!r} ({type(name_or_dir).__name__})")
    return os.fspath(name_or_dir)


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(FiDConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"FiDStudent.from_pretrained() got unknown FiDConfig fields {unknown}; valid: {sorted(names)}")


def _read_json(path: Path, what: str, fix: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, None, what, f"invalid or truncated JSON ({e})", fix) from None


def check_model_dir(path: Path, needs_tokenizer: bool = True) -> dict[str, Any]:
    """Check a student/T5 directory before transformers reads it; returns its ``fid_config.json`` (or ``{}``).

    Raises:
        DataFormatError: no or unreadable ``config.json``, not a T5 (e.g. a BERT directory), no or damaged
            weights, no tokenizer, unreadable ``fid_config.json``; names the file and the fix.
    """
    files = sorted(p.name for p in path.iterdir())
    fix = ("use an intact copy: for a training run, another checkpoint (RUN_DIR/checkpoints/step-N) or RUN_DIR/best; "
           "or retrain (radcot train --overwrite)")
    if not (path / "config.json").is_file():
        raise DataFormatError(path, None, "a model directory with config.json (HF format)", f"{files[:8]}",
                              "pass a directory written by save_pretrained / radcot train (RUN_DIR/best)")
    config = _read_json(path / "config.json", "a JSON model config", fix)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in T5_MODEL_TYPES:
        arch = ", ".join(config.get("architectures") or []) if isinstance(config, dict) else ""
        raise DataFormatError(path / "config.json", None, "a T5 model (model_type t5: google/flan-t5-*, or a student "
                              "saved by radcot train)", f"model_type {model_type!r}" + (f" ({arch})" if arch else ""),
                              "a FiD student is a T5 encoder-decoder: pass a T5 directory or name")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise DataFormatError(path, None, f"weights ({' or '.join(WEIGHT_FILES[::2])})", f"none among {files[:8]}", fix)
    problem = weights_problem(path)
    if problem is not None:
        raise DataFormatError(path, None, "intact weight files", problem, fix)
    if needs_tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise DataFormatError(path, None, f"a tokenizer ({' or '.join(TOKENIZER_FILES)})", f"none among {files[:8]}",
                              "copy the tokenizer of the model it was trained from into it (the official RADCoT/FiD "
                              "code saves none): AutoTokenizer.from_pretrained('google/flan-t5-base').save_pretrained"
                              "(DIR), or pass tokenizer='google/flan-t5-base' to FiDStudent.from_pretrained")
    if not (path / FID_CONFIG_FILE).is_file():
        return {}
    saved = _read_json(path / FID_CONFIG_FILE, "the student's JSON FiD settings", fix)
    if not isinstance(saved, dict):
        raise DataFormatError(path / FID_CONFIG_FILE, None, "a JSON mapping of FiD settings", type(saved).__name__, fix)
    return saved


def weights_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a model directory's weight files (truncated, damaged header, missing shard), or None.

    Reads only headers: a safetensors file must be covered exactly by its header's tensors, a ``.bin`` zip must have
    its central directory (a truncated one has lost it).
    """
    import zipfile

    path = Path(path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            shards = set((_read_json(path / index, "a JSON weight index", "").get("weight_map") or {}).values())
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                return f"{index} names shards that are not there: {', '.join(missing[:SHOWN_KEYS])}"
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except (_SafetensorError, OSError) as e:
            return f"{f.name} is truncated or damaged ({str(e).splitlines()[0][:160]})"
    for f in sorted(path.glob("*.bin")):
        with open(f, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"
        if zipped and not zipfile.is_zipfile(f):
            return f"{f.name} is truncated or damaged (its zip directory is missing)"
    return None


def _tokenizer(given: Any, src: str, local: bool):
    """The tokenizer to use: ``given`` (an object, or a name/directory to load) or the checkpoint's own."""
    if given is None or isinstance(given, (str, os.PathLike)):
        name = src if given is None else os.fspath(given)
        return transformers.AutoTokenizer.from_pretrained(name, local_files_only=local or Path(name).is_dir())
    if not callable(getattr(given, "batch_decode", None)):
        raise TypeError(f"tokenizer must be a tokenizer, or the name or directory of one, got {type(given).__name__}")
    return given


def check_loading_info(where: str | os.PathLike, info: Mapping[str, Any]) -> None:
    """Refuse a model whose weights did not all load (transformers would initialise the rest randomly).

    Args:
        where: the model directory or name (the error names its weight files).
        info: transformers' ``output_loading_info`` (``missing_keys``, ``unexpected_keys``, ``mismatched_keys``,
            ``error_msgs``), after its own rules for tied weights.

    Raises:
        DataFormatError: names the file, a few keys of each kind with their counts, and the fix.
    """
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    if not (missing or unexpected or mismatched or errors):
        return
    found = []
    if missing:
        found.append(f"{len(missing)} weights missing (they would start random): {_few(missing)}")
    if unexpected:
        found.append(f"{len(unexpected)} weights the model does not have: {_few(unexpected)}")
    if mismatched:
        shown = [f"{k} {list(a)} in the file, {list(b)} in config.json" for k, a, b in mismatched]
        found.append(f"{len(mismatched)} weights of another shape: {_few(shown)}")
    if errors:
        found.append(f"errors: {_few([str(e).splitlines()[0] for e in errors])}")
    path = Path(where)
    files = [path / n for n in WEIGHT_FILES if (path / n).is_file()] if path.is_dir() else []
    raise DataFormatError(files[0] if files else where, None, "every weight of the T5 that config.json describes",
                          "; ".join(found), "use the config.json and weights saved together (an intact checkpoint: "
                          "RUN_DIR/best or RUN_DIR/checkpoints/step-N, or the original download); nothing was loaded")


def _forget_key_mapping(t5) -> None:
    """Drop the official-layout key mapping from the loaded model: transformers keeps a ``key_mapping`` that matched
    so that ``save_pretrained`` writes the checkpoint's own layout back (a lossy reverse of these regexes); radcot
    saves every student in the stock T5 layout (tested: a re-saved official checkpoint has stock keys)."""
    conversions = getattr(t5, "_weight_conversions", None)
    if conversions:
        t5._weight_conversions = [c for c in conversions
                                  if not set(getattr(c, "source_patterns", ())) & set(OFFICIAL_FID_KEY_MAPPING)]


def _few(items: Sequence[str]) -> str:
    more = len(items) - SHOWN_KEYS
    return ", ".join(items[:SHOWN_KEYS]) + (f" and {more} more" if more > 0 else "")


def _check_vocab(src: str, tokenizer, t5) -> None:
    """The tokenizer's ids must all have an embedding (a tokenizer of another model would index past the table)."""
    n, vocab = len(tokenizer), t5.get_input_embeddings().weight.shape[0]
    if n > vocab:
        raise DataFormatError(src, None, f"a tokenizer of at most {vocab} tokens (the model's embeddings)",
                              f"a tokenizer of {n} tokens", "use the tokenizer the model was trained with")


#: generate() settings that are plain greedy decoding (anything else goes through transformers' generate())
_GREEDY_DEFAULTS = {"num_beams": 1, "do_sample": False, "num_return_sequences": 1, "use_cache": True}


#: generation_config entries that do not change greedy decoding (anything else, e.g. a checkpoint's own
#: min_length or no_repeat_ngram_size, is left to transformers' generate(), which applies it)
_NEUTRAL_CONFIG = {"use_cache", "output_attentions", "output_hidden_states", "pad_token_id", "eos_token_id",
                   "bos_token_id", "decoder_start_token_id", "_from_model_config", "transformers_version",
                   "num_beams", "do_sample", "num_return_sequences"}


def _plain_greedy(kwargs: Mapping[str, Any], generation_config) -> bool:
    """Whether ``generate(**kwargs)`` with this model's ``generation_config`` is plain greedy decoding of
    ``max_new_tokens`` tokens (what :meth:`FiDStudent._greedy` reproduces)."""
    if "max_new_tokens" not in kwargs:
        return False
    if any(k != "max_new_tokens" and (k not in _GREEDY_DEFAULTS or v != _GREEDY_DEFAULTS[k])
           for k, v in kwargs.items()):
        return False
    diff = generation_config.to_diff_dict()
    return set(diff) <= _NEUTRAL_CONFIG and all(diff.get(k, v) == v for k, v in _GREEDY_DEFAULTS.items())


class FiDStudent(torch.nn.Module):
    """Fusion-in-Decoder around a Hugging Face ``T5ForConditionalGeneration``.

    Args:
        t5: the seq2seq model (any T5/Flan-T5 checkpoint, or the offline tiny T5).
        tokenizer: its tokenizer.
        config: a :class:`FiDConfig` (defaults: 10 passages, 300 tokens each).

    Inputs everywhere are ``input_ids``/``attention_mask`` of shape ``(B, N, L)`` and an optional
    ``passage_mask`` ``(B, N)`` (0 = empty slot: ignored by the decoder), as made by :attr:`collator`.

    A T5 class that needs more than a stock T5 (its own input embeddings, extra arguments per call) provides
    the FiD hooks (:class:`radcot.student.hooks.FiDHooks`); a checkpoint names its class in ``config.json``
    (:func:`radcot.student.hooks.model_class`).

    Example:
        >>> student = FiDStudent.from_pretrained("google/flan-t5-base", n_context=10)  # doctest: +SKIP
        >>> batch = student.collator([{"query": "q", "passages": [...], "target": "because ..."}])  # doctest: +SKIP
        >>> loss = student(**batch).loss  # doctest: +SKIP
    """

    def __init__(self, t5, tokenizer, config: FiDConfig | None = None):
        super().__init__()
        self.t5 = t5
        self.tokenizer = tokenizer
        self.fid_config = config or FiDConfig()
        self.collator = FiDCollator(tokenizer, n_context=self.fid_config.n_context,
                                    text_maxlength=self.fid_config.text_maxlength,
                                    target_maxlength=self.fid_config.target_maxlength,
                                    template=self.fid_config.template)

    # ---------------------------------------------------------------------------------- loading/saving

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, *, local_files_only: bool | None = None,
                        torch_dtype=None, tokenizer: Any = None, **fid_overrides) -> "FiDStudent":
        """Load a saved student directory, any local T5 directory, or a hub name (``google/flan-t5-base``).

        Every weight of the model ``config.json`` describes must come from the checkpoint: a missing, unexpected or
        differently shaped tensor is an error naming the file and the keys, never a randomly initialised layer
        (transformers' own rules for tied heads apply: a flan-t5 checkpoint without the tied copies loads). A
        checkpoint of the official RADCoT/FiD code (``FiDT5``: encoder keys ``encoder.encoder.block.N.module.*``,
        :data:`OFFICIAL_FID_KEY_MAPPING`) loads as the same model.

        Args:
            name_or_dir: a directory (``fid_config.json`` is read when present) or a Hugging Face model name.
            local_files_only: passed to transformers (default: only for directories).
            torch_dtype: optional dtype for the weights (default float32).
            tokenizer: a tokenizer, or the name/directory of one, to use instead of the checkpoint's own (the
                official RADCoT/FiD code saves none: pass ``"google/flan-t5-base"`` or a copy of it).
            **fid_overrides: :class:`FiDConfig` fields overriding the saved ones (``n_context=5``).

        Raises:
            DataFormatError: a damaged or mismatched model directory (names the file, what is wrong and the fix).
            OfflineResourceError: a hub name that cannot be downloaded (no internet, unknown name).
            TypeError: an argument of the wrong type, or an unknown FiDConfig field.
        """
        src = _source_name(name_or_dir)
        _check_overrides(fid_overrides)
        path = Path(src)
        saved: dict[str, Any] = {}
        if path.is_dir():
            saved = check_model_dir(path, needs_tokenizer=tokenizer is None)
            local = True if local_files_only is None else local_files_only
        elif _is_hub_name(src):
            local = bool(local_files_only)
            if not local and not hub_reachable():
                logger.info("the Hugging Face hub is not reachable: looking for %s in the local HF cache only", src)
                local = True
        else:
            raise FileNotFoundError(f"student model {src} does not exist (expected a directory such as RUN_DIR/best "
                                    f"or a Hugging Face name such as google/flan-t5-base)")
        cfg = FiDConfig.from_dict({**saved, **fid_overrides})  # bad settings fail before the weights load
        kwargs: dict[str, Any] = {"local_files_only": local, "output_loading_info": True,
                                  "ignore_mismatched_sizes": True, "key_mapping": OFFICIAL_FID_KEY_MAPPING}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        try:
            with quiet_hf(), _no_tie_warning():
                tokenizer = _tokenizer(tokenizer, src, local)
                from radcot.student.hooks import model_class

                t5, info = model_class(src if path.is_dir() else None).from_pretrained(src, **kwargs)
        except (OSError, _SafetensorError) as e:
            if path.is_dir():
                raise DataFormatError(path, None, "loadable T5 weights and tokenizer (HF format)", str(e).split("\n")[0],
                                      "re-save the model with FiDStudent.save_pretrained") from e
            raise OfflineResourceError(
                f"could not load {src!r} from the Hugging Face hub ({str(e).splitlines()[0][:200]}). On a machine "
                f"without internet, download it elsewhere (`hf download {src} --local-dir DIR`) and pass DIR (radcot "
                f"train --model DIR; in a pipeline --set student.model=DIR, --set rows.ROW.student.model=DIR or "
                f"--set params.models_dir=DIR), or build an offline model with --model tiny-t5") from e
        if not t5.config.is_encoder_decoder:
            raise RadcotError(f"{src} is not an encoder-decoder (T5) model")
        check_loading_info(path if path.is_dir() else src, info)
        _forget_key_mapping(t5)
        _check_vocab(src, tokenizer, t5)
        student = cls(t5, tokenizer, cfg)
        student.name_or_path = src
        return student

    def save_pretrained(self, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write HF-format weights (safetensors), tokenizer and ``fid_config.json`` to ``out_dir``, atomically."""
        with atomic_dir(out_dir) as tmp:
            self.save_into(tmp, extra)
        return Path(out_dir)

    def save_into(self, directory: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        """Like :meth:`save_pretrained` but into an existing (temporary) directory, non-atomically.

        The checkpoint is written so that transformers 4.x and 5.x rebuild the same model (see
        :func:`portable_head_state`).
        """
        state, tie = portable_head_state(self.t5)
        with quiet_hf():
            self.t5.save_pretrained(directory, state_dict=state)
            self.tokenizer.save_pretrained(directory)
        _write_head_config(Path(directory) / "config.json", tie)
        write_json(Path(directory) / FID_CONFIG_FILE, {**self.fid_config.to_dict(), **(extra or {})})

    # -------------------------------------------------------------------------------------- computing

    @property
    def device(self):
        return next(self.t5.parameters()).device

    def encode(self, input_ids, attention_mask, passage_mask=None):
        """Encode every (query, passage) input separately and concatenate per example.

        Args:
            input_ids: ``(B, N, L)`` token ids.
            attention_mask: ``(B, N, L)``.
            passage_mask: ``(B, N)``, 0 for empty passage slots (their states are masked out).

        Returns:
            ``(encoder_outputs, mask)``: a ``BaseModelOutput`` with ``last_hidden_state`` ``(B, S, H)`` and the
            decoder's cross-attention mask ``(B, S)``: each example's real tokens first, padding dropped down
            to the longest example (:meth:`encode_compact`; cross-attention has no positions, so the order of
            the encoder states does not change what the decoder computes).
        """
        enc, mask, _ = self.encode_compact(input_ids, attention_mask, passage_mask)
        return enc, mask

    def encode_compact(self, input_ids, attention_mask, passage_mask=None):
        """:meth:`encode` plus the token id of every kept encoder state ``(B, S)`` (for the T5's FiD hooks).

        Padding costs nothing twice: the ``B*N`` inputs are encoded in groups of similar length (each group
        cut to its own longest input; FiD inputs of one batch differ a lot: measured 38% padding on the demo),
        and the decoder reads only each example's real tokens.
        """
        B, N, L = input_ids.shape
        mask = attention_mask
        if passage_mask is not None:
            pm = passage_mask.to(mask.dtype).clone()
            pm[pm.sum(1) == 0, 0] = 1  # an example with no passage at all still reads its question (slot 0)
            mask = mask * pm.unsqueeze(-1)  # (B, N, L)
        embeds = fid_hook(self.t5, "fid_input_embeds")(input_ids, attention_mask, passage_mask)  # None: the ids
        if embeds is not None:
            embeds = embeds.reshape(B * N, L, -1)
        hidden = self._encode_grouped(input_ids.reshape(B * N, L), attention_mask.reshape(B * N, L), embeds)
        hidden, ids, mask = hidden.reshape(B, N * L, -1), input_ids.reshape(B, N * L), mask.reshape(B, N * L)
        # per example: real positions first (stable), then cut to the longest example
        keep = torch.argsort((mask == 0).int(), dim=1, stable=True)[:, : max(int(mask.sum(1).max()), 1)]  # (B, S)
        hidden = hidden.gather(1, keep.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        enc = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=hidden)
        return enc, mask.gather(1, keep), ids.gather(1, keep)

    #: inputs per encoder call when grouping by length
    ENCODE_GROUP = 16

    def _encode_grouped(self, ids, att, embeds=None):
        """The encoder states ``(M, L, H)`` of ``M`` inputs, run in length-sorted groups cut to their longest
        (from ``embeds`` ``(M, L, H)`` instead of ``ids`` when given)."""
        lengths = att.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        hidden = None
        for i in range(0, ids.shape[0], self.ENCODE_GROUP):
            rows = order[i:i + self.ENCODE_GROUP]
            width = max(int(lengths[rows].max()), 1)
            inputs = {"input_ids": ids[rows, :width]} if embeds is None else {"inputs_embeds": embeds[rows, :width]}
            out = self.t5.get_encoder()(attention_mask=att[rows, :width], return_dict=True, **inputs).last_hidden_state
            if hidden is None:
                hidden = out.new_zeros(ids.shape[0], ids.shape[1], out.shape[-1])
            hidden[rows, :width] = out
        return hidden

    def forward(self, input_ids, attention_mask, passage_mask=None, labels=None, **kwargs):
        """Teacher-forced forward pass; returns the T5 ``Seq2SeqLMOutput`` (``.loss`` when ``labels`` given).

        ``labels`` is ``(B, T)`` with -100 at padding.
        """
        enc, mask, state_ids = self.encode_compact(input_ids, attention_mask, passage_mask)
        kwargs.update(self._model_kwargs(state_ids))
        return self.t5(encoder_outputs=enc, attention_mask=mask, labels=labels, return_dict=True, **kwargs)

    def _model_kwargs(self, state_ids) -> dict:
        """The T5's extra call arguments for these encoder states (:meth:`FiDHooks.fid_model_kwargs`; none for a
        plain T5)."""
        return fid_hook(self.t5, "fid_model_kwargs")(state_ids)

    @torch.inference_mode()  # measured 7-15% faster than no_grad for a tiny student's decoding on CPU
    def generate(self, input_ids, attention_mask, passage_mask=None, **generate_kwargs):
        """Generate with the stock T5 ``generate()`` from encoder states computed once.

        Args:
            input_ids, attention_mask, passage_mask: as in :meth:`encode`.
            **generate_kwargs: anything ``generate()`` takes (``max_new_tokens``, ``num_beams``,
                ``do_sample``, ``top_p``, ``num_return_sequences``, ...). ``use_cache`` defaults to True.

        Plain greedy decoding (``max_new_tokens`` given, and only ``num_beams=1``/``do_sample=False``/
        ``num_return_sequences=1``/``use_cache=True`` besides it; a ``generation_config`` that sets nothing
        else) takes :meth:`_greedy`, a loop over the model
        with its KV cache that returns the same ids without ``generate()``'s per-step machinery (measured
        ~25% of a tiny student's decoding time on CPU, which is what serving waits for).

        Returns:
            token ids ``(B * num_return_sequences, T)`` (decoder start token first).
        """
        enc, mask, state_ids = self.encode_compact(input_ids, attention_mask, passage_mask)
        extra = self._model_kwargs(state_ids)
        if _plain_greedy(generate_kwargs, self.t5.generation_config):
            return self._greedy(enc, mask, extra, int(generate_kwargs["max_new_tokens"]))
        generate_kwargs.setdefault("use_cache", True)
        generate_kwargs.update(extra)
        return self.t5.generate(encoder_outputs=enc, attention_mask=mask, **generate_kwargs)

    def _greedy(self, enc, mask, extra: Mapping[str, Any], max_new_tokens: int):
        """Greedy decoding with the KV cache: ``(B, 1 + T)`` ids, decoder start first, padding after ``</s>``
        (``extra``: the T5's FiD-hook arguments of every call)."""
        cfg = self.t5.generation_config
        eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
        eos = torch.tensor([e for e in eos if e is not None], device=mask.device)
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else self.tokenizer.pad_token_id
        B = mask.shape[0]
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else self.t5.config.decoder_start_token_id
        tok = torch.full((B, 1), start, dtype=torch.long, device=mask.device)
        cache = transformers.EncoderDecoderCache(transformers.DynamicCache(), transformers.DynamicCache())
        out, done = [tok], torch.zeros(B, dtype=torch.bool, device=mask.device)
        for _ in range(max_new_tokens):
            logits = self.t5(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=tok, past_key_values=cache,
                             use_cache=True, return_dict=True, **extra).logits[:, -1]
            nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
            out.append(nxt[:, None])
            done = done | torch.isin(nxt, eos)
            if bool(done.all()):
                break
            tok = nxt[:, None]
        return torch.cat(out, dim=1)

    def generate_text(self, examples: Sequence[Mapping[str, Any]], n_context: int | None = None,
                      **generate_kwargs) -> list[str]:
        """Collate ``examples`` (``{"query", "passages"}``; ``n_context`` passages each, default the training
        ``N``), generate and decode (one string per sequence)."""
        batch = self.collator.encode_inputs(examples, n_context)
        dev = self.device
        ids = self.generate(*(t.to(dev) for t in batch), **generate_kwargs)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @torch.no_grad()
    def naive_greedy(self, input_ids, attention_mask, passage_mask=None, max_new_tokens: int = 150) -> list[list[int]]:
        """Reference greedy decoding without any cache: every step re-runs encoder and decoder on the full
        prefix, one example at a time. Slow; used to check :meth:`generate` and in ``bench/``.

        Returns:
            one list of token ids per example (decoder start token first, ``</s>`` last if reached).
        """
        start = self.t5.config.decoder_start_token_id
        eos = self.t5.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        out = []
        for b in range(input_ids.shape[0]):
            pm = None if passage_mask is None else passage_mask[b:b + 1]
            seq = [start]
            for _ in range(max_new_tokens):
                dec = torch.tensor([seq], dtype=torch.long, device=input_ids.device)
                logits = self.forward(input_ids[b:b + 1], attention_mask[b:b + 1], pm,
                                      decoder_input_ids=dec, use_cache=False).logits  # (1, t, V)
                nxt = int(logits[0, -1].argmax())
                seq.append(nxt)
                if nxt in eos:
                    break
            out.append(seq)
        return out
