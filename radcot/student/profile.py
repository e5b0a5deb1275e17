"""A student as a self-describing artifact: which passages it reads and how it writes, saved beside its weights.

A trained student is more than its weights. ``radcot_student.json`` in a student directory records what a
consumer (``radcot generate``, ``radcot serve``, :class:`radcot.Expander`, the PyTerrier transformer) needs to
answer exactly as the evaluated student did:

- ``retriever``: where its passages come from -- ``bm25``, ``dense`` or ``fused`` (RRF of both) -- with each
  index's path and identity (its kind and the collection it was built from) and the retriever's settings;
  ``null`` for the no-retrieval ablation;
- ``inference``: passages per query at inference (``n_context``; the paper trains with 10 and infers with 50),
  the decoding settings and the expansion formula;
- ``checkpoint`` (optional): the directory holding the weights when it is not the profile's own directory (the
  pipeline writes one profile per table row pointing at the shared training stage's checkpoint).

The input template, the text length and the passages per query in training stay in ``fid_config.json``
(:class:`radcot.student.model.FiDConfig`). A checkpoint without a profile (an older radcot, a plain T5) loads
with ``recorded=False``: no retriever, default decoding; consumers then need an explicit index.

Example:
    >>> from radcot.student.profile import StudentProfile
    >>> p = StudentProfile.load("runs/demo/students/radcot")  # doctest: +SKIP
    >>> retriever = p.open_retriever()  # the recorded index, checked against its recorded identity  # doctest: +SKIP
    >>> p.inference.n_context, p.inference.decoding.max_new_tokens  # doctest: +SKIP
    (5, 64)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from radcot.records import RadcotError
from radcot.utils import write_json

__all__ = ["PROFILE_FILE", "Decoding", "IndexRecord", "Inference", "ProfileError", "RetrieverRecord",
           "StudentProfile", "index_identity"]

PROFILE_FILE = "radcot_student.json"
PROFILE_FORMAT = 1
#: retriever kinds a student's passages can come from
RETRIEVER_KINDS = ("bm25", "dense", "fused")
_IDENTITY_KEYS = ("kind", "collection_fingerprint", "num_docs", "encoder")


class ProfileError(RadcotError, ValueError):
    """A student profile that cannot be read, or an index that does not match the one a student was trained on."""


# ------------------------------------------------------------------------------------------------ records


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How the student writes (greedy by default, as the paper and ``radcot generate``)."""

    max_new_tokens: int = 150
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        for name in ("max_new_tokens", "num_beams"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ProfileError(f"decoding.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.no_repeat_ngram_size, int) or self.no_repeat_ngram_size < 0:
            raise ProfileError(f"decoding.no_repeat_ngram_size must be an integer >= 0, got {self.no_repeat_ngram_size!r}")
        if not self.repetition_penalty > 0:
            raise ProfileError(f"decoding.repetition_penalty must be > 0, got {self.repetition_penalty!r}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``generate()`` (settings at their neutral value are left out)."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        return out


@dataclasses.dataclass(frozen=True)
class Inference:
    """What a consumer applies at inference: passages per query, decoding, expansion formula."""

    n_context: int
    decoding: Decoding = Decoding()
    formula: str = "radcot"

    def __post_init__(self):
        if not isinstance(self.n_context, int) or self.n_context < 1:
            raise ProfileError(f"inference.n_context must be an integer >= 1, got {self.n_context!r}")


@dataclasses.dataclass(frozen=True)
class IndexRecord:
    """One index a student reads: its kind, where it was, and what identifies it (its collection)."""

    kind: str
    path: str
    identity: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RetrieverRecord:
    """The retriever of a student's passages: ``kind``, its indexes and its settings (BM25 k1/b, RRF depth...)."""

    kind: str
    indexes: tuple[IndexRecord, ...]
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in RETRIEVER_KINDS:
            raise ProfileError(f"retriever.kind must be one of {RETRIEVER_KINDS}, got {self.kind!r}")

    @classmethod
    def of(cls, retriever: Any) -> "RetrieverRecord":
        """The record of a live retriever (``BM25Retriever``, ``DenseRetriever``, ``FusedRetriever``).

        Raises:
            ProfileError: a retriever radcot cannot reopen by itself (no ``index_dir``; your own class).
        """
        kind = getattr(retriever, "kind", None)
        if kind == "fused":
            parts = [cls.of(r) for r in retriever.retrievers]
            return cls("fused", tuple(i for p in parts for i in p.indexes),
                       {"depth": retriever.depth, "rrf_constant": retriever.rrf_constant, **{p.kind: dict(p.params) for p in parts}})
        index_dir = getattr(retriever, "index_dir", None)
        if kind not in ("bm25", "dense") or index_dir is None:
            raise ProfileError(f"cannot record a {type(retriever).__name__} as a student's retriever (radcot records "
                               f"BM25Retriever, DenseRetriever and FusedRetriever); pass the index to consumers yourself")
        params = {k: v for k, v in (getattr(retriever, "config", None) or {}).items() if k in ("k1", "b")}
        return cls(kind, (_index_record(index_dir),), params)

    def to_dict(self) -> dict[str, Any]:
        """The JSON mapping (as in ``radcot_student.json`` and the distillation data's ``radcot_data.json``)."""
        return {"kind": self.kind, "params": dict(self.params),
                "indexes": [{"kind": i.kind, "path": i.path, "identity": dict(i.identity)} for i in self.indexes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RetrieverRecord":
        """Inverse of :meth:`to_dict` (KeyError/TypeError on a malformed mapping)."""
        indexes = tuple(IndexRecord(str(i["kind"]), str(i["path"]), dict(i.get("identity") or {})) for i in d["indexes"])
        return cls(str(d["kind"]), indexes, dict(d.get("params") or {}))


def _index_record(index_dir: str | os.PathLike) -> IndexRecord:
    path = Path(index_dir)
    ident = index_identity(path)
    return IndexRecord(ident["kind"], str(path.resolve()) if path.exists() else str(index_dir), ident)


def index_identity(index_dir: str | os.PathLike) -> dict[str, Any]:
    """What identifies an index: its kind and, from its ``radcot_index.json``, the collection it was built from.

    A Lucene index radcot did not build (a pyserini prebuilt one) is identified by its kind and path only.
    """
    from radcot.retrieval import index_kind
    from radcot.retrieval.base import META_FILE

    path = Path(index_dir)
    ident: dict[str, Any] = {"kind": index_kind(path)}
    meta_path = path / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"{meta_path}: not valid JSON ({e}); rebuild the index with radcot index --overwrite") from None
        ident.update({k: meta[k] for k in _IDENTITY_KEYS if meta.get(k) is not None})
    return ident


def _mismatch(recorded: IndexRecord, given: Mapping[str, Any]) -> str | None:
    """Why ``given`` (an :func:`index_identity`) is not the index ``recorded``; None when it is."""
    if given.get("kind") != recorded.kind:
        return f"it is a {given.get('kind')} index, the student read a {recorded.kind} index"
    for key in ("collection_fingerprint", "num_docs", "encoder"):
        a, b = recorded.identity.get(key), given.get(key)
        if a is not None and b is not None and a != b:
            return f"its {key} is {b!r}, the student's index had {a!r}"
    return None


# ------------------------------------------------------------------------------------------------ profile


@dataclasses.dataclass(frozen=True)
class StudentProfile:
    """A student's weights plus what it reads and how it writes (see the module docstring).

    Args:
        directory: the profile's directory (where ``radcot_student.json`` is, or would be).
        checkpoint: the directory with the weights (``config.json``, ``fid_config.json``).
        retriever: where its passages come from; ``None`` for a no-context student or when not recorded.
        inference: passages per query at inference, decoding, formula.
        recorded: False when the directory had no profile (defaults were assumed).
    """

    directory: Path
    checkpoint: Path
    retriever: RetrieverRecord | None
    inference: Inference
    recorded: bool = True

    # ---------------------------------------------------------------------------------------- reading

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StudentProfile":
        """Read the profile of a student: a run directory (``RUN_DIR/best`` is used), a checkpoint directory, a
        profile directory written by the pipeline, or the ``radcot_student.json`` file itself.

        Raises:
            ProfileError: the path holds no student, or its profile is malformed (names the file and field).
        """
        directory = _student_dir(Path(path))
        file = directory / PROFILE_FILE
        if not file.is_file():
            return cls._unrecorded(directory)
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"{file}: not valid JSON ({e}); retrain, or delete the file to load the weights "
                               f"without their recorded settings") from None
        return cls.from_dict(d, directory, source=file)

    @classmethod
    def _unrecorded(cls, directory: Path) -> "StudentProfile":
        fid = _fid_config(directory)
        return cls(directory, directory, None, Inference(n_context=int(fid.get("n_context", 1))), recorded=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], directory: Path, source: Path | str = PROFILE_FILE) -> "StudentProfile":
        """Build from the JSON mapping (``checkpoint`` relative to ``directory`` when not absolute)."""
        if not isinstance(d, Mapping) or d.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source}: expected a student profile with format {PROFILE_FORMAT}, found "
                               f"{d.get('format') if isinstance(d, Mapping) else type(d).__name__!r}; "
                               f"this radcot reads format {PROFILE_FORMAT} (upgrade radcot, or retrain)")
        try:
            inf = dict(d["inference"])
            inference = Inference(int(inf["n_context"]), Decoding(**inf.get("decoding", {})),
                                  str(inf.get("formula", "radcot")))
            retriever = None if d.get("retriever") is None else RetrieverRecord.from_dict(d["retriever"])
        except (KeyError, TypeError) as e:
            raise ProfileError(f"{source}: malformed student profile ({type(e).__name__}: {e})") from None
        except ProfileError as e:
            raise ProfileError(f"{source}: {e}") from None
        checkpoint = directory  # a relative "checkpoint" is relative to the profile's directory
        if d.get("checkpoint"):
            checkpoint = directory / d["checkpoint"]  # (an absolute one replaces it)
        return cls(directory, checkpoint, retriever, inference)

    # ---------------------------------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """The JSON mapping (``checkpoint`` left out when it is the profile's own directory)."""
        d: dict[str, Any] = {"format": PROFILE_FORMAT, "inference": dataclasses.asdict(self.inference),
                             "retriever": None if self.retriever is None else self.retriever.to_dict()}
        if self.checkpoint.resolve() != self.directory.resolve():
            d["checkpoint"] = str(self.checkpoint.resolve())
        return d

    def save(self, directory: str | os.PathLike | None = None) -> Path:
        """Write ``radcot_student.json`` into ``directory`` (default: the profile's own); returns the file."""
        target = Path(directory) if directory is not None else self.directory
        profile = dataclasses.replace(self, directory=target)
        write_json(target / PROFILE_FILE, profile.to_dict())
        return target / PROFILE_FILE

    def replace(self, **changes) -> "StudentProfile":
        """A copy with fields changed (``inference=...``, ``retriever=...``)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------------------------------- using

    def open_retriever(self, index: Any = None, *, force: bool = False):
        """The retriever of the student's passages.

        Args:
            index: ``None`` (the recorded index or indexes), an index directory, a mapping ``{"bm25": DIR,
                "dense": DIR}`` (a fused student), or a retriever object (used as it is after the kind check).
            force: use a given index even when its kind or collection differs from the recorded one.

        Returns:
            A retriever, or ``None`` for a no-context student given no index.

        Raises:
            ProfileError: no index recorded or given; a recorded index that is gone; a given index of another
                kind or collection (unless ``force``).
        """
        if index is not None and not isinstance(index, (str, os.PathLike, Mapping)):
            return self._check_object(index, force)
        if self.retriever is None:
            return None if index is None else _open_index(_as_mapping(index, None))
        dirs = self._index_dirs(index, force)
        if self.retriever.kind == "fused":
            from radcot.retrieval.fusion import FusedRetriever

            return FusedRetriever([_open_index({k: dirs[k]}, self.retriever.params.get(k)) for k in ("bm25", "dense")],
                                  depth=int(self.retriever.params.get("depth", 100)),
                                  rrf_constant=self._rrf_constant())
        return _open_index(dirs, self.retriever.params)

    def _rrf_constant(self) -> float:
        """The recorded RRF constant (``rrf_k`` in profiles written before it was renamed)."""
        from radcot.retrieval.fusion import DEFAULT_RRF_CONSTANT

        params = self.retriever.params
        return float(params.get("rrf_constant", params.get("rrf_k", DEFAULT_RRF_CONSTANT)))

    def index_dirs(self, index: Any = None, *, force: bool = False) -> dict[str, str]:
        """``{kind: directory}`` of the indexes :meth:`open_retriever` would open (checked the same way, nothing
        opened): for a consumer's usage checks before it loads anything. Empty when none is recorded or given.

        Raises:
            ProfileError: as :meth:`open_retriever`.
        """
        if index is not None and not isinstance(index, (str, os.PathLike, Mapping)):
            return {}
        if self.retriever is None:
            return {} if index is None else _as_mapping(index, None)
        return self._index_dirs(index, force)

    def _index_dirs(self, index: Any, force: bool) -> dict[str, str]:
        recorded = {r.kind: r for r in self.retriever.indexes}
        if index is None:
            for r in recorded.values():
                if not Path(r.path).exists():
                    raise ProfileError(f"the student in {self.directory} reads the {r.kind} index {r.path}, which no "
                                       f"longer exists; pass the index (--index DIR / index=DIR) built from the same "
                                       f"collection")
            return {k: r.path for k, r in recorded.items()}
        given = _as_mapping(index, self.retriever.kind)
        for kind, path in given.items():
            rec = recorded.get(kind) or (next(iter(recorded.values())) if len(recorded) == 1 else None)
            reason = _mismatch(rec, index_identity(path)) if rec else f"the student reads no {kind} index"
            if reason and not force:
                raise ProfileError(f"index {path} is not the one the student in {self.directory} was trained on "
                                   f"({reason}; trained on {', '.join(r.path for r in recorded.values())}): pass "
                                   f"an index of the same kind and collection, or force it (--force-index / "
                                   f"force=True) to serve a student that reads other passages than it was evaluated on")
        missing = sorted(set(recorded) - set(given))
        if self.retriever.kind == "fused" and missing:
            raise ProfileError(f"the student in {self.directory} reads fused passages from {sorted(recorded)} "
                               f"indexes; also pass its {missing} index")
        return dict(given)

    def _check_object(self, retriever: Any, force: bool):
        kind = getattr(retriever, "kind", None)
        want = None if self.retriever is None else self.retriever.kind
        if want is not None and kind != want and not force:
            raise ProfileError(f"the student in {self.directory} reads {want} passages, the retriever given is "
                               f"{kind or type(retriever).__name__}: pass a {want} retriever, or force=True")
        return retriever

    def fingerprint(self) -> str:
        """A short hash of everything that decides the student's output: weights, ``fid_config.json``, retriever
        and inference settings (for caches: a retrained or reconfigured student never matches an old entry)."""
        h = hashlib.sha256()
        for name in sorted(p.name for p in self.checkpoint.iterdir() if p.suffix in (".safetensors", ".bin")):
            h.update(name.encode())
            h.update(_file_digest(self.checkpoint / name).encode())
        h.update(json.dumps(_fid_config(self.checkpoint), sort_keys=True).encode())
        h.update(json.dumps({k: v for k, v in self.to_dict().items() if k != "checkpoint"}, sort_keys=True,
                            default=str).encode())
        return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ helpers


def _student_dir(path: Path) -> Path:
    """The directory of a student given as a profile file, a profile directory, a run directory or a checkpoint."""
    if path.is_file() and path.name == PROFILE_FILE:
        return path.parent
    if (path / PROFILE_FILE).is_file() or (path / "config.json").is_file():
        return path
    if (path / "best" / "config.json").is_file():
        return path / "best"
    if not path.exists():
        raise ProfileError(f"student {path} does not exist; pass a training run directory (radcot train --out DIR), "
                           f"its best/ subdirectory, or a pipeline row's student directory (RUNS/EXP/students/ROW)")
    found = sorted(c.name for c in path.iterdir())[:8] if path.is_dir() else "a file"
    raise ProfileError(f"{path} holds no trained student (no {PROFILE_FILE}, config.json or best/config.json; found "
                       f"{found}); pass the directory given to radcot train --out, or its best/ subdirectory")


def _fid_config(checkpoint: Path) -> dict:
    path = checkpoint / "fid_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not valid JSON ({e}); the checkpoint is damaged: use another checkpoint or "
                           f"retrain") from None


_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for the life of the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        from radcot.utils import sha256_file

        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _as_mapping(index: Any, kind: str | None) -> dict[str, str]:
    """``{kind: dir}`` of a given index (a directory's kind is read from the directory)."""
    if isinstance(index, Mapping):
        bad = sorted(set(index) - {"bm25", "dense"})
        if bad:
            raise ProfileError(f"index mapping keys must be 'bm25' and/or 'dense', got {bad}")
        return {k: str(v) for k, v in index.items()}
    if kind == "fused":
        raise ProfileError("this student reads fused (BM25 + dense) passages: pass both indexes, "
                           "{'bm25': DIR, 'dense': DIR} (radcot serve --index DIR --dense-index DIR)")
    from radcot.retrieval import index_kind

    return {index_kind(index): str(index)}


def _open_index(dirs: Mapping[str, str], params: Mapping[str, Any] | None = None):
    from radcot.retrieval import load_retriever

    if len(dirs) != 1:
        raise ProfileError(f"one index expected for a bm25 or dense student, got {sorted(dirs)}")
    ((kind, path),) = dirs.items()
    return load_retriever(path, **({k: v for k, v in (params or {}).items() if k in ("k1", "b")} if kind == "bm25" else {}))
