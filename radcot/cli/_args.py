"""argparse ``type=`` functions and the output rule shared by every subcommand.

A bad number or id is refused at the CLI boundary: argparse prints ``radcot X: error: argument --k:
must be an integer >= 1, got '0'`` and exits 2, before any index is opened or model loaded.

The output rule (:func:`check_output`): never delete or replace anything radcot did not create, and
replace radcot's own earlier output only with ``--overwrite``. Radcot knows a directory it wrote by its
metadata file inside it; it records every file it wrote (:func:`mark_output`) in its state directory
(:func:`radcot.utils.state_dir`, ``~/.local/state/radcot/outputs``), never beside the output: the record
names the real path and the file's identity (inode, size, modification time), so a file changed or replaced
since radcot wrote it is no longer treated as radcot's.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--k", type=positive_int)
    >>> p.parse_args(["--k", "5"]).k
    5
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from radcot.records import RadcotError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``radcot X: error: <what> (see radcot X --help)``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return int_at_least(1)(text)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return int_at_least(0)(text)


def int_at_least(lo: int) -> Callable[[str], int]:
    """An integer >= ``lo``."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def finite_float(text: str) -> float:
    """Any finite number (no nan/inf)."""
    return float(_number(text, float))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """A finite number in ``[lo, hi]`` (``(`` / ``)`` with ``lo_open`` / ``hi_open``)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: the system picks a free one)."""
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [0, 65535] (0: pick a free one), got {text!r}")
    return value


#: a share of something, 0..1
fraction = in_range(0.0, 1.0)
#: a share strictly between 0 and 1 (a dev split must leave both splits non-empty)
open_fraction = in_range(0.0, 1.0, lo_open=True, hi_open=True)


def token(text: str) -> str:
    """A non-empty word without whitespace (run tags, ids): TREC files are whitespace-separated."""
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"must be non-empty and contain no whitespace (TREC files are "
                                         f"whitespace-separated), got {text!r}")
    return text


def heap_size(text: str) -> str:
    """A JVM heap size such as ``512m`` or ``4g``."""
    if not (text[:-1].isdigit() and text[-1].lower() in "kmg" and int(text[:-1]) > 0):
        raise argparse.ArgumentTypeError(f"must be a JVM heap size like 512m or 4g, got {text!r}")
    return text


def env_var_set(text: str) -> str:
    """The name of an environment variable that is set (e.g. ``--api-key-env``)."""
    if not os.environ.get(text):
        raise argparse.ArgumentTypeError(f"environment variable {text} is not set (or empty): "
                                         f"export {text}=... first, or name the variable that holds the key")
    return text


# ---------------------------------------------------------------------------------------------- outputs


class OutputExistsError(RadcotError, FileExistsError):
    """An output exists and may not be replaced (see :func:`check_output`)."""


def marker_path(output: str | os.PathLike) -> Path:
    """Where radcot records that it wrote ``output``: a JSON file in its state directory, keyed by the real path."""
    import hashlib

    from radcot.utils import state_dir

    real = os.path.realpath(output)
    return state_dir() / "outputs" / f"{hashlib.sha256(real.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.json"


def _legacy_marker(output: str | os.PathLike) -> Path:
    """The hidden ``.<name>.radcot`` file radcot < 0.3 left beside its outputs (still honoured, then removed)."""
    p = Path(output).absolute()
    return p.parent / f".{p.name}.radcot"


def _identity(path: Path) -> dict:
    st = path.stat()
    return {"inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def mark_output(output: str | os.PathLike, command: str) -> None:
    """Record that radcot wrote ``output`` (so ``--overwrite`` may replace it later)."""
    from radcot.utils import write_json

    out = Path(output)
    write_json(marker_path(out), {"path": os.path.realpath(out), "command": command, "argv": sys.argv[1:],
                                  "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "identity": _identity(out) if out.is_file() else None})
    legacy = _legacy_marker(out)
    if legacy.is_file():
        legacy.unlink()


def _radcot_record(output: Path) -> tuple[bool, str]:
    """``(written by radcot, why not)`` from the state directory's record of ``output``."""
    import json

    try:
        record = json.loads(marker_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, ""
    if record.get("path") != os.path.realpath(output):
        return False, ""
    if record.get("identity") and output.is_file() and record["identity"] != _identity(output):
        return False, (f" (radcot's `{record.get('command')}` wrote it at {record.get('time')}, but it has been "
                       f"changed or replaced since)")
    return True, ""


def _is_radcot_output(output: Path, own_files: Iterable[str]) -> tuple[bool, str]:
    if _legacy_marker(output).exists():
        return True, ""
    if output.is_dir() and any((output / name).exists() for name in own_files):
        return True, ""
    return _radcot_record(output)


def written_by_radcot(output: str | os.PathLike) -> bool:
    """Whether radcot recorded writing ``output`` and it has not been changed since (a file radcot may replace)."""
    return _is_radcot_output(Path(output), ())[0]


def check_output(output: str | os.PathLike, overwrite: bool, what: str, *, own_files: Iterable[str] = ()) -> None:
    """Apply the output rule before a command writes ``output``.

    - absent, or an empty directory: fine;
    - written by radcot (a :func:`mark_output` marker, or for a directory one of ``own_files``): needs
      ``overwrite``;
    - anything else: refused even with ``overwrite`` (radcot never deletes what it did not create).

    Raises:
        OutputExistsError: with the path, why, and the fix.
    """
    out = Path(output)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    ours, why = _is_radcot_output(out, own_files)
    if not ours:
        kind = "directory" if out.is_dir() else "file"
        raise OutputExistsError(f"{what} {out} is an existing {kind} that radcot did not write{why}; radcot never "
                                f"replaces or deletes it: choose another path (or move it away yourself)")
    if not overwrite:
        raise OutputExistsError(f"{what} {out} already exists (written by an earlier radcot run): pass --overwrite to "
                                f"replace it, or choose another path")


def check_resumable(output: str | os.PathLike, what: str) -> None:
    """A resumable CoT output (teach, generate) may be resumed, or replaced with ``--overwrite``, only if radcot
    wrote it (its ``OUT.config.json`` sidecar is there).

    Raises:
        OutputExistsError: ``output`` is a non-empty file without ``OUT.config.json``, or a directory.
    """
    from radcot.cot import config_path

    out = Path(output)
    if out.is_dir():
        raise OutputExistsError(f"{what} {out} is a directory; pass a file path such as {out / 'cots.jsonl'}")
    if out.exists() and out.stat().st_size > 0 and not config_path(out).exists():
        raise OutputExistsError(f"{what} {out} exists but radcot did not write it (no {config_path(out).name} beside "
                                f"it); radcot never appends to or replaces it: choose another --out")
