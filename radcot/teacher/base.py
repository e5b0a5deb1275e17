"""The teacher interface: every backend (one file each) turns prompts into generations.

A backend is chosen by name through :func:`radcot.teacher.get_backend`. Backends see a batch of
:class:`TeachItem` (the query and its rendered prompt) and return one :class:`Generation` per item,
in order. A backend raises :class:`TeacherError` for an item it could not answer after its retries;
the runner records that query as failed (retried on the next run).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Sequence

from radcot.records import Query, RadcotError
from radcot.teacher._checks import check_float, check_int, check_texts


class TeacherError(RadcotError, RuntimeError):
    """A query could not be answered (after the backend's retries); ``attempts`` says how many were made."""

    def __init__(self, *args, attempts: int = 1):
        super().__init__(*args)
        self.attempts = attempts


class TeacherUnreachable(TeacherError):
    """The teacher endpoint never answered: every connection failed from the start (refused, DNS, connect timeout).

    A backend raises it (and answers every later item with it at once) instead of retrying each query; the
    runner stops the run with its message, which names the URL, the error and the fix.
    """


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    """Generation parameters, recorded with every run (paper defaults: 150 tokens, temperature 0)."""

    max_tokens: int = 150
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = 0

    def __post_init__(self):
        check_int("GenerationParams", "max_tokens", self.max_tokens)
        check_float("GenerationParams", "temperature", self.temperature)
        check_float("GenerationParams", "top_p", self.top_p)
        check_int("GenerationParams", "seed", self.seed, optional=True)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:  # a tuple: hashable (the server groups requests by their params)
            object.__setattr__(self, "stop", tuple(check_texts("GenerationParams", "stop", self.stop)))
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``stop`` as a list), so a recorded config compares equal after a round trip."""
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        return d


class TeachItem(NamedTuple):
    """One query and its rendered prompt, as the runner hands it to a backend."""

    query: Query
    prompt: str  # the rendered prompt (chat backends send it as the user message)


class Generation(NamedTuple):
    """A backend's answer to one prompt: the text, why it stopped, token counts and the attempts it took."""

    text: str
    finish_reason: str = "stop"  # "stop" | "length" | ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1


class TeacherBackend:
    """Base class. Subclasses set ``name`` and implement :meth:`generate`."""

    name: ClassVar[str] = ""
    #: how many items the runner should hand over per call (backends with internal concurrency want more)
    batch_size: int = 1
    #: the most chunks the runner may hand over at once from different threads (None: no limit;
    #: a local model that serialises access sets 1)
    max_concurrency: int | None = None

    def generate(self, items: Sequence[TeachItem], params: GenerationParams) -> list[Generation | TeacherError]:
        """Answer each item; return a Generation or a TeacherError per item, in order (never raise for one item)."""
        raise NotImplementedError

    @property
    def model_name(self) -> str:
        return getattr(self, "model", self.name)

    def config(self) -> dict[str, Any]:
        """Backend settings recorded in the run's sidecar config (not compared on resume; no secrets)."""
        return {}

    def close(self) -> None:  # release servers/threads/models
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
