"""Train/test separation: a student asked to write CoTs for queries it was trained on says so.

A student learnt its training queries' teacher CoTs (and its dev queries chose its checkpoint), so its CoTs for
those queries, and any retrieval score computed on them, overstate what it does for unseen queries. Nothing in a
CoT file shows it. :func:`find_overlap` compares the queries of a generation run with the query ids of the
student's distillation data, which the student's checkpoint names: ``radcot train`` writes the run's
``TrainConfig`` (with ``data``, the distillation data directory) into ``RUN_DIR/train_config.json`` and into
``best/fid_config.json``. The data's ``radcot_data.json`` records each split's ids digest
(``query_ids_sha256``) for tools that copy it elsewhere.

Example:
    >>> from radcot.student.overlap import find_overlap
    >>> find_overlap("runs/student", ["q1", "q2"]).message()  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from radcot.records import RadcotError

logger = logging.getLogger("radcot.student")

#: what ``on_train_overlap`` may say: log a warning, or refuse to generate
OVERLAP_ACTIONS = ("warn", "error")


class TrainTestOverlapError(RadcotError, ValueError):
    """Queries to generate for are among the student's training or dev queries (``on_train_overlap="error"``)."""


@dataclasses.dataclass(frozen=True)
class Overlap:
    """The queries of a run that the student was trained (``train``) or selected (``dev``) on.

    ``data`` is the distillation data directory the ids come from; ``None`` when the student names none or it is
    gone (``reason`` says why): then nothing could be checked.
    """

    n_queries: int
    train: tuple[str, ...] = ()
    dev: tuple[str, ...] = ()
    data: Path | None = None
    reason: str = ""

    @property
    def checked(self) -> bool:
        return self.data is not None

    def __bool__(self) -> bool:
        return bool(self.train or self.dev)

    def message(self) -> str:
        """What the overlap means, in one paragraph (for a warning or an error)."""
        if not self.checked:
            return f"could not check the queries against the student's training queries: {self.reason}"
        ids = list(self.train) + list(self.dev)
        return (f"{len(ids)} of the {self.n_queries} queries are queries the student was trained on "
                f"({len(self.train)} from the train split, {len(self.dev)} from the dev split of {self.data}), e.g. "
                f"{', '.join(ids[:5])}. The student learnt their teacher CoTs (the dev split chose its checkpoint), so "
                f"its CoTs for them, and any evaluation on them, overstate how it does on unseen queries: evaluate on "
                f"queries left out of radcot build-data --queries")


def find_overlap(student_dir: str | os.PathLike, query_ids: Iterable[str]) -> Overlap:
    """The ``query_ids`` that are among the training or dev queries of the student in ``student_dir``.

    Args:
        student_dir: the student's checkpoint directory (``RUN_DIR/best``, ``RUN_DIR/checkpoints/step-N``).
        query_ids: the queries to generate for.

    Returns:
        An :class:`Overlap` (unchecked, with the reason, when the student's training data cannot be found).
    """
    ids = list(dict.fromkeys(str(q) for q in query_ids))
    data, reason = training_data_dir(Path(student_dir))
    if data is None:
        return Overlap(len(ids), reason=reason)
    splits = _split_ids(data)
    if splits is None:
        return Overlap(len(ids), reason=f"its training data {data} is not a readable distillation dataset")
    train = tuple(q for q in ids if q in splits.get("train", ()))
    dev = tuple(q for q in ids if q in splits.get("dev", ()) and q not in splits.get("train", ()))
    return Overlap(len(ids), train, dev, data)


def training_data_dir(checkpoint: Path) -> tuple[Path | None, str]:
    """The distillation data directory a checkpoint was trained on, or ``(None, why not)``.

    Read from the checkpoint's ``fid_config.json`` (``train_config.data``, written by ``radcot train`` into
    ``best/``), else from the run's ``train_config.json`` (``RUN_DIR/best`` or ``RUN_DIR/checkpoints/step-N``).
    A relative path is taken relative to the current directory, as ``radcot train`` read it.
    """
    data = _recorded_data(checkpoint)
    if data is None:
        return None, (f"{checkpoint} does not name its training data (no train_config in its fid_config.json or "
                      f"its run's train_config.json: not trained by radcot train)")
    path = Path(data)
    if not (path / "dataset_dict.json").is_file():
        return None, (f"its training data {data} (named by the checkpoint) is not there (moved or deleted, or "
                      f"relative to another directory)")
    return path, ""


def _recorded_data(checkpoint: Path) -> str | None:
    """``train_config.data`` from the checkpoint's ``fid_config.json`` or its run's ``train_config.json``."""
    fid = _read_json(checkpoint / "fid_config.json")
    data = (fid.get("train_config") or {}).get("data") if isinstance(fid.get("train_config"), dict) else None
    if data:
        return str(data)
    for run_dir in (checkpoint.parent, checkpoint.parent.parent):
        config = _read_json(run_dir / "train_config.json")
        if config.get("data"):
            return str(config["data"])
    return None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


_SPLITS: dict[tuple, dict[str, frozenset[str]]] = {}


def _split_ids(data: Path) -> dict[str, frozenset[str]] | None:
    """``{split: query ids}`` of a distillation dataset (None if it cannot be read); remembered per directory
    and modification time for the life of the process (an expander checks every batch)."""
    from radcot.student.data import load_distillation_data

    key = (str(data.resolve()), (data / "dataset_dict.json").stat().st_mtime_ns)
    if key not in _SPLITS:
        try:
            dd, _ = load_distillation_data(data)
        except (RadcotError, OSError, ValueError) as e:
            logger.debug("overlap check: cannot read %s: %s", data, e)
            return None
        _SPLITS[key] = {name: frozenset(ds["query_id"]) for name, ds in dd.items()}
    return _SPLITS[key]


def check_overlap(student_dir: str | os.PathLike, query_ids: Iterable[str], action: str = "warn") -> Overlap:
    """Warn (``action="warn"``) or raise (``"error"``) when ``query_ids`` overlap the student's training queries.

    With ``"error"``, a student whose training data cannot be found is refused too (nothing was verified).

    Raises:
        TrainTestOverlapError: overlap (or nothing checkable) and ``action == "error"``.
    """
    if action not in OVERLAP_ACTIONS:
        raise ValueError(f"on_train_overlap must be one of {OVERLAP_ACTIONS}, got {action!r}")
    overlap = find_overlap(student_dir, query_ids)
    if overlap or not overlap.checked:
        if action == "error":
            fix = "" if overlap.checked else "; pass on_train_overlap='warn' (--on-train-overlap warn) to go on"
            raise TrainTestOverlapError(f"{overlap.message()}{fix}")
        (logger.warning if overlap else logger.info)("train/test overlap: %s", overlap.message())
    return overlap
