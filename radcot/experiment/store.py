"""Stage directories that vouch for their outputs, keyed by what they are built from, shared across experiments.

A stage ``name`` lives in ``<root>/<name>-<key>/``. Its key (:func:`stage_key`) covers the stage's kind and that
kind's format version (a constant bumped when the stage's output format or meaning changes; radcot's own version
is not part of it, so an upgrade reruns nothing that did not change), its own config, and the CONTENT of the
stages it reads: each upstream stage enters as the digest of its outputs (:func:`outputs_digest`: the sha256 of
every file its ``DONE.json`` lists), never as its path. So a rebuilt upstream stage whose outputs differ
invalidates every stage after it, and the same upstream content at another path is reused.

A stage is finished when its ``DONE.json`` exists; that record lists every output file (size, mtime, sha256). On
reuse the outputs are verified -- size and mtime first, the checksum only when those differ -- and a stage whose
outputs are missing or changed is run again (logged ``outputs changed: ...``), never reported as cached. The
build holds :func:`radcot.locks.output_lock` on the stage directory, so two processes never build one stage at
once: a second process waits for a shared stage (then reuses it) and fails at once for an experiment's own stage.
Stage names are single directory names: a name that would put a stage outside its root is refused.

Example:
    >>> from radcot.experiment.store import stage_key
    >>> key = stage_key("search", 1, {"k": 1000}, {"index": "3f2a9c0d"})
    >>> key == stage_key("search", 1, {"k": 1000}, {"index": "3f2a9c0d"})
    True
    >>> key == stage_key("search", 1, {"k": 1000}, {"index": "77e01b5a"})  # other upstream content
    False
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from radcot.records import RadcotError
from radcot.utils import config_hash, sha256_file, write_json

logger = logging.getLogger("radcot.pipeline")

DONE = "DONE.json"
_META = {DONE, "stage.json"}
WAIT_LOG_EVERY_S = 30.0


class ChangedOutputError(RadcotError):
    """A file a finished stage vouched for is missing or changed."""


def radcot_version() -> str:
    """radcot's version (installed metadata when it differs from the source's ``__version__``)."""
    from importlib import metadata

    import radcot

    try:
        installed = metadata.version("radcot")
    except metadata.PackageNotFoundError:
        installed = None
    return radcot.__version__ if installed in (None, radcot.__version__) else f"{radcot.__version__}+{installed}"


class StageError(RadcotError, ValueError):
    """A stage name that is not one safe directory name (it would leave the stage root)."""


_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def stage_key(kind: str, version: int, cfg: Mapping[str, Any], upstream: Mapping[str, Any]) -> str:
    """The cache key of a stage.

    Args:
        kind: the stage kind (``train``, ``search``, ...).
        version: the kind's format version (bumped when its outputs' format or meaning changes).
        cfg: the stage's own settings (JSON-serialisable, defaults resolved).
        upstream: what identifies each input: an upstream stage's :func:`outputs_digest`, or a file's checksum.
    """
    return config_hash({"stage": kind, "format": int(version), "config": cfg, "upstream": upstream})


# ---------------------------------------------------------------------------------------------- outputs
def _output_files(stage_dir: Path) -> list[Path]:
    files = []
    for p in sorted(stage_dir.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name not in _META and not (p.name.startswith(".") and p.name.endswith(".lock")):
            files.append(p)
    return files


def describe_outputs(stage_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, mtime_ns, sha256}}`` of every output file in ``stage_dir``."""
    stage_dir = Path(stage_dir)
    out = {}
    for p in _output_files(stage_dir):
        st = p.stat()
        out[p.relative_to(stage_dir).as_posix()] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                    "sha256": sha256_file(p)}
    return out


def _check_one(path: Path, rec: Mapping[str, Any]) -> str | None:
    """None when ``path`` matches its record; else why not. Size+mtime fast path, checksum when they differ."""
    if not path.is_file():
        return f"{path.name} (missing)"
    st = path.stat()
    if st.st_size != rec["size"]:
        return f"{path.name} (size {rec['size']} -> {st.st_size})"
    if st.st_mtime_ns == rec["mtime_ns"]:
        return None
    if sha256_file(path) != rec["sha256"]:
        return f"{path.name} (content changed, same size)"
    return None


def _read_done(stage_dir: Path) -> dict | None:
    """The ``DONE.json`` record, or None when it is unreadable (a torn write: the stage is not finished)."""
    try:
        record = json.loads((stage_dir / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def outputs_digest(stage_dir: str | os.PathLike) -> str | None:
    """What a finished stage's outputs are: a digest of each listed file's relative path and sha256 (not where the
    stage is, nor when its files were written); None when the stage is not finished."""
    record = _read_done(Path(stage_dir)) if (Path(stage_dir) / DONE).is_file() else None
    if record is None or not isinstance(record.get("outputs"), dict):
        return None
    return config_hash({rel: rec["sha256"] for rel, rec in sorted(record["outputs"].items())}, n=16)


def verify_outputs(stage_dir: str | os.PathLike, only: str | None = None) -> list[str]:
    """The outputs of a finished stage that are missing or changed (empty: all as recorded).

    Args:
        stage_dir: a stage directory with ``DONE.json``.
        only: check this one relative path only (e.g. ``run.trec``).
    """
    stage_dir = Path(stage_dir)
    record = _read_done(stage_dir)
    if record is None:
        return [f"{DONE} (unreadable)"]
    outputs = record.get("outputs")
    if outputs is None:
        return [f"{DONE} lists no outputs (written by an older radcot)"]
    if only is not None:
        outputs = {only: outputs[only]} if only in outputs else {}
    return [why for rel, rec in outputs.items() if (why := _check_one(stage_dir / rel, rec))]


def verify_run_file(run: str | os.PathLike) -> None:
    """Refuse a run file that changed since the pipeline stage that wrote it finished.

    A file outside any stage directory (no ``DONE.json`` beside it) is not checked.

    Raises:
        ChangedOutputError: the file is missing or differs from what its stage recorded.
    """
    run = Path(run)
    done = run.parent / DONE
    if not done.is_file():
        return
    record = _read_done(run.parent)
    if record is not None and "outputs" not in record:
        logger.warning("%s: written by an older radcot that recorded no checksums; not verified", run)
        return
    changed = verify_outputs(run.parent, only=run.name)
    if changed:
        raise ChangedOutputError(
            f"run file {run} changed since its stage finished ({'; '.join(changed)}): its scores would not be the "
            f"pipeline's. Re-run the pipeline (`radcot run CONFIG`) to rebuild it, or delete {run.parent} first")


# ---------------------------------------------------------------------------------------------- stages
class StageStore:
    """Runs stages into ``<root>/<name>-<key>/`` with verified reuse and one builder per stage.

    Args:
        root: the directory of the stage directories (an experiment's, or ``<runs_dir>/_shared``).
        wait: when another process builds the same stage, wait for it (shared stages) instead of failing.
    """

    def __init__(self, root: str | os.PathLike, wait: bool = False):
        self.root = Path(root)
        self.wait = wait

    def path(self, name: str, key: str) -> Path:
        """``<root>/<name>-<key>``; a name that is not one safe directory name raises :class:`StageError`."""
        if not _STAGE_NAME.fullmatch(name) or not _STAGE_NAME.fullmatch(key):
            raise StageError(f"stage name {name!r} (key {key!r}) is not a single safe directory name: it would be "
                             f"written outside {self.root}; rename the row or experiment (letters, digits, '.', "
                             f"'_', '-')")
        d = self.root / f"{name}-{key}"
        if d.resolve().parent != self.root.resolve():
            raise StageError(f"stage directory {d} is not inside {self.root}; rename the row or experiment")
        return d

    def cached(self, d: Path, label: str) -> dict | None:
        """The ``DONE.json`` record when ``d`` is finished and its outputs are intact; else None (logged)."""
        done = d / DONE
        if not done.is_file():
            return None
        changed = verify_outputs(d)
        record = _read_done(d)
        if not changed and record is not None:
            return record
        logger.warning("stage %s outputs changed: %s; running it again", label, ", ".join(changed))
        done.unlink()
        return None

    def run(self, name: str, key: str, build: Callable[[Path], Any], resumable: bool = False,
            label: str | None = None, about: Mapping[str, Any] | None = None) -> tuple[Path, dict, bool]:
        """Reuse or build a stage; returns ``(directory, DONE record, reused)``.

        Args:
            name: the stage directory's name before its key.
            key: the stage's :func:`stage_key`.
            build: writes the outputs into the directory it is given.
            resumable: an unfinished directory is built on (the build resumes itself) instead of emptied first.
            label: the stage's name in log lines (default ``name``).
            about: what ``stage.json`` records of the stage (its config and upstream).
        """
        from radcot.locks import OutputLockedError, output_lock

        d, label = self.path(name, key), label or name
        record = self.cached(d, label)
        if record is not None:
            return d, record, True
        waited_since = None
        while True:
            try:
                with output_lock(d, what=f"stage {label}"):
                    record = self.cached(d, label)  # another process may have finished it meanwhile
                    if record is not None:
                        return d, record, True
                    return d, self._build(d, name, about or {}, build, resumable, label), False
            except OutputLockedError as e:
                if not self.wait:
                    raise
                now = time.monotonic()
                if waited_since is None or now - waited_since >= WAIT_LOG_EVERY_S:
                    logger.info("stage %s: waiting for another process (%s)", label, e)
                    waited_since = now
                time.sleep(0.5)

    def _build(self, d: Path, name: str, about: Mapping[str, Any], build: Callable[[Path], Any], resumable: bool,
               label: str) -> dict:
        if d.exists() and not resumable:
            shutil.rmtree(d)
        resumed = d.exists()
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "stage.json", {"stage": name, **about, "radcot": radcot_version()})
        logger.info("stage %-28s %s %s", label, "resume " if resumed else "run    ", d)
        t0 = time.perf_counter()
        build(d)
        record = {"elapsed_s": round(time.perf_counter() - t0, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "resumed": resumed, "radcot": radcot_version(), "outputs": describe_outputs(d)}
        write_json(d / DONE, record)
        return record
