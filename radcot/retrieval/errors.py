"""Errors of the retrieval package (kept apart so that importing them loads no JVM, torch or FAISS)."""
from __future__ import annotations

from radcot.records import RadcotError


class RetrievalIndexError(RadcotError, RuntimeError):
    """An index could not be built or opened; the message names the directory and the fix."""
