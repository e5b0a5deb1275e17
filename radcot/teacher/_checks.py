"""Argument checks at the teacher area's public boundary: the wrong type fails at once, naming the argument.

A string where a number belongs (``concurrency="8"``), ``None`` where a value is required, or a bare string
where a list of queries belongs raise :class:`TypeError` naming the function, the argument, the value and
what was expected, before any model loads or any file is written.

Example:
    >>> check_int("teach", "concurrency", 8, minimum=1)
    8
    >>> check_int("teach", "concurrency", "8", minimum=1)
    Traceback (most recent call last):
    ...
    TypeError: teach: concurrency must be an integer, got '8' (str)
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

from radcot.records import Query


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(where: str, name: str, value: Any, minimum: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an ``int`` (``bool`` and numeric strings refused); ``None`` only when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an integer{' or None' if optional else ''}, got {_shown(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


def check_float(where: str, name: str, value: Any, minimum: float | None = None, optional: bool = False,
                positive: bool = False) -> float | None:
    """``value`` as a ``float`` (ints accepted; ``bool`` and strings refused)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number{' or None' if optional else ''}, got {_shown(value)}")
    if positive and not value > 0:
        raise ValueError(f"{where}: {name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return float(value)


def check_bool(where: str, name: str, value: Any, optional: bool = False) -> bool | None:
    """``value`` as a ``bool`` (``"false"`` or ``0`` refused: they would read as their truth value)."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False{' or None' if optional else ''}, got {_shown(value)}")
    return value


def check_str(where: str, name: str, value: Any, optional: bool = False, nonempty: bool = False) -> str | None:
    """``value`` as a ``str``; ``None`` only when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be a string{' or None' if optional else ''}, got {_shown(value)}")
    if nonempty and not value.strip():
        raise ValueError(f"{where}: {name} must not be empty")
    return value


def check_path(where: str, name: str, value: Any, optional: bool = False) -> str | os.PathLike | None:
    """``value`` as a file path (``str`` or ``os.PathLike``)."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value.strip()):
        raise TypeError(f"{where}: {name} must be a file path (str or pathlib.Path){' or None' if optional else ''}, "
                        f"got {_shown(value)}")
    return value


def check_texts(where: str, name: str, texts: Any) -> list[str]:
    """A list of strings (a single string is refused: it would be taken character by character)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"{where}: {name} must be a list of strings, got {_shown(texts)[:200]}"
                        f"{'; wrap one text in a list: [text]' if isinstance(texts, str) else ''}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{where}: {name}[{i}] must be a string, got {_shown(t)[:200]}")
    return out


def as_query(where: str, i: int, q: Any) -> Query:
    """A :class:`Query` from a ``Query``, an object with ``query_id`` and ``text`` (ir_datasets) or a pair."""
    if hasattr(q, "query_id") and hasattr(q, "text"):
        qid, text = q.query_id, q.text
    elif isinstance(q, (tuple, list)) and len(q) == 2:
        qid, text = q
    else:
        raise TypeError(f"{where}: queries[{i}] is {_shown(q)[:200]}; expected a radcot.records.Query(query_id, "
                        f"text) (or a (query_id, text) pair). Wrap bare texts as [Query(str(i), t) for i, t in "
                        f"enumerate(texts)], or pass a queries file path")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise TypeError(f"{where}: queries[{i}] has query_id {_shown(qid)}; expected a non-empty string")
    if not isinstance(text, str):
        raise TypeError(f"{where}: queries[{i}] (query_id {qid!r}) has text {_shown(text)[:200]}; expected a string")
    return Query(str(qid), text)


def iter_queries(where: str, queries: Any) -> Iterator[Query]:
    """Check an iterable of queries lazily (a bare string or a non-iterable is refused at once)."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Iterable):
        raise TypeError(f"{where}: queries must be Query records or a queries file path, got {_shown(queries)[:200]}")
    return (as_query(where, i, q) for i, q in enumerate(queries))
