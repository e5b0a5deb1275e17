"""Argument checks at the student's Python boundary: the wrong type or range names the argument, the value and the fix.

The public functions of :mod:`radcot.student.data` and :mod:`radcot.student.generate` take plain Python values
(from scripts, notebooks, YAML). A string where a number belongs (``k="10"``, a quoted YAML value), ``None``
where a value is required, or a bool where a count belongs is refused here with an :class:`ArgumentTypeError`
instead of failing later inside torch or ``datasets`` with a message about something else. Values are not
converted: ``"10"`` is most often a quoting mistake that should be seen.

Example:
    >>> integer("k", 10, lo=1)
    10
    >>> integer("k", "10", lo=1)
    Traceback (most recent call last):
    ...
    radcot.student._check.ArgumentTypeError: k must be an integer, got '10' (str); pass a number, not a string
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Iterable

from radcot.records import RadcotError


class ArgumentTypeError(RadcotError, TypeError):
    """An argument of the wrong type (a string where a number or a list belongs, ``None`` where one is required)."""


class ArgumentValueError(RadcotError, ValueError):
    """An argument of the right type outside its range (``num_beams=0``, ``dev_fraction=1.5``)."""


def _got(value: Any) -> str:
    return f"{value!r:.80} ({type(value).__name__})"


def _hint(value: Any) -> str:
    return "; pass a number, not a string" if isinstance(value, str) else ""


def integer(name: str, value: Any, lo: int | None = None, *, optional: bool = False) -> int | None:
    """``value`` as an ``int`` (numpy integers accepted; bools, floats and strings refused), at least ``lo``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {_got(value)}{_hint(value)}")
    value = int(value)
    if lo is not None and value < lo:
        raise ArgumentValueError(f"{name} must be >= {lo}, got {value}")
    return value


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False) -> float | None:
    """``value`` as a finite ``float`` in ``[lo, hi]`` (an open end with ``lo_open``/``hi_open``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {_got(value)}{_hint(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentValueError(f"{name} must be a finite number, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ArgumentValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value:g}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ArgumentValueError(f"{name} must be {'<' if hi_open else '<='} {hi:g}, got {value:g}")
    return value


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``"false"`` is refused: it is truthy)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {_got(value)}")
    return value


def text(name: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` if it is a string."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, got {_got(value)}")
    return value


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ArgumentValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {_got(value)}")
    return value


def path(name: str, value: Any, what: str) -> str | os.PathLike:
    """``value`` if it is a path (``str`` or ``os.PathLike``); ``what`` says what the path should hold."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a path to {what}, got {_got(value)}")
    return value


def not_none(name: str, value: Any, expected: str) -> Any:
    """``value`` unless it is None (``expected`` says what to pass)."""
    if value is None:
        raise ArgumentTypeError(f"{name} is required: pass {expected}")
    return value


def collection(name: str, value: Any, expected: str) -> Any:
    """``value`` if it is a path or a non-string iterable (a list of records); ``expected`` says what it holds."""
    not_none(name, value, expected)
    if isinstance(value, (str, os.PathLike)):
        return value
    if isinstance(value, (bytes, numbers.Number)) or not isinstance(value, Iterable):
        raise ArgumentTypeError(f"{name} must be {expected}, got {_got(value)}")
    return value
