"""Live query expansion: the in-memory :class:`Expander` and the ``radcot serve`` HTTP service.

Layering: this package sits beside the CLI, on top of :mod:`radcot.expansion` and the student's
generation helpers; it never reaches into training. :mod:`~radcot.serving.cache` (expansion caches: in
memory, or a SQLite file shared by processes) and :mod:`~radcot.serving.cpu` (the opt-in CPU serving path)
need only the standard library and torch. The service modules (``app``, ``batcher``, ``metrics``, ``server``;
``teacher_app``, the OpenAI-compatible API of ``radcot teacher-serve`` on the same stack) import
FastAPI/prometheus-client, so they are imported only by ``radcot serve`` and ``radcot teacher-serve``
(``pip install radcot[serve]``).
"""
from __future__ import annotations

from radcot.serving.expander import Expander, Expansion, ServedSettings, resolve_student_dir

__all__ = ["Expander", "Expansion", "ServedSettings", "resolve_student_dir"]
