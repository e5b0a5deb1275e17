"""Typed records with IR field names, and the project's error types.

Example:
    >>> from radcot.records import Query, Doc, Qrel, ScoredDoc
    >>> Query("1", "what is a flux capacitor").text
    'what is a flux capacitor'
"""
from __future__ import annotations

from typing import NamedTuple


class Query(NamedTuple):
    """A query (topic): ``query_id`` and its ``text``."""

    query_id: str
    text: str


class Doc(NamedTuple):
    """A document/passage: ``doc_id``, ``text`` and an optional ``title``."""

    doc_id: str
    text: str
    title: str = ""

    @property
    def contents(self) -> str:
        """Title and text joined as indexed (pyserini JsonCollection ``contents``)."""
        return f"{self.title}\n{self.text}" if self.title else self.text


class Qrel(NamedTuple):
    """A relevance judgement."""

    query_id: str
    doc_id: str
    relevance: int


class ScoredDoc(NamedTuple):
    """One line of a run: a document scored for a query."""

    query_id: str
    doc_id: str
    score: float


class RadcotError(Exception):
    """Base class of radcot's errors."""


class DataFormatError(RadcotError, ValueError):
    """A malformed input file. The message names file, line, what was expected and what was found."""

    def __init__(self, path, line: int | None, expected: str, found: str, fix: str = ""):
        self.path, self.line, self.expected, self.found = str(path), line, expected, found
        where = f"{path}, line {line}" if line is not None else f"{path}"
        msg = f"{where}: expected {expected}, found {found}"
        if fix:
            msg += f". {fix}"
        super().__init__(msg)


class EncodingError(DataFormatError):
    """A line of an input file that is not UTF-8; the message names the file, line, byte and column."""

    def __init__(self, path, line: int, byte: int, column: int):
        self.path, self.line, self.byte, self.column = str(path), line, byte, column
        self.expected, self.found = "UTF-8 text", f"byte 0x{byte:02x} at column {column}"
        RadcotError.__init__(self, f"{path} line {line} is not UTF-8 (byte 0x{byte:02x} at column {column}); "
                                   f"re-save it as UTF-8")


class InvalidIdError(RadcotError, ValueError):
    """An id (query, document) or run tag that TREC files cannot hold: empty or containing whitespace."""


class MissingDependencyError(RadcotError, ImportError):
    """An optional dependency is not installed; the message says how to install it."""


class OfflineResourceError(RadcotError, RuntimeError):
    """A remote resource (model, index, topics) could not be fetched; the message says what to download and where."""
