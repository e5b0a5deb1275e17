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


class TeacherError(RadcotError, RuntimeError):
    """A query could not be answered (after the backend's retries); ``attempts`` says how many were made."""

    def __init__(self, *args, attempts: int = 1):
        super().__init__(*args)
        self.attempts = attempts


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    """Generation parameters, recorded with every run (paper defaults: 150 tokens, temperature 0)."""

    max_tokens: int = 150
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = 0

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))  # hashable (the server groups by params)
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
    query: Query
    prompt: str  # the rendered prompt (chat backends send it as the user message)


class Generation(NamedTuple):
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
