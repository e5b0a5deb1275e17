"""Reading pipeline configs: ``include:`` files, ``--set`` overrides (list items by index or row name).

Every file and ``--set`` value is read with :mod:`radcot.safe_yaml`: a key written twice in one mapping is
refused with the lines of both (YAML would keep the last silently), and so are files over
:data:`radcot.safe_yaml.MAX_BYTES` and aliases that expand past :data:`radcot.safe_yaml.MAX_NODES` values.

Example:
    >>> cfg = {"rows": [{"name": "bm25"}, {"name": "radcot", "student": {"model": "a"}}]}
    >>> apply_overrides(cfg, ["rows.radcot.student.model=b"])["rows"][1]["student"]["model"]
    'b'
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from radcot.records import RadcotError
from radcot.safe_yaml import YAMLConfigError, YAMLSyntaxError, load_yaml, parse_yaml


class PipelineError(RadcotError, ValueError):
    """A pipeline config that cannot run; names the file and key."""


def merge(base: Mapping, over: Mapping) -> dict:
    """Deep-merge ``over`` into ``base`` (mappings merge key by key; lists and scalars from ``over`` win)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """One YAML mapping from ``path``, read with :func:`radcot.safe_yaml.load_yaml` (duplicate keys, oversized
    files and alias bombs refused with ``file:line``).

    Raises:
        PipelineError: a missing file, bad YAML, a refused file, or not a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline file {path} does not exist (see pipelines/*.yaml)")
    try:
        config = load_yaml(path)
    except YAMLConfigError as e:
        raise PipelineError(str(e)) from None
    if not isinstance(config, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level, found {type(config).__name__}")
    return config


def load_config(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """Read ``path`` and resolve its ``include:`` (a file or list of files, relative to ``path``).

    Included files are merged in order, then the including file on top: mappings merge key by key, and
    lists (``rows``, ``metrics``) are replaced wholesale by the including file's.
    """
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in _chain + (path,))
        raise PipelineError(f"{_chain[-1]}: include: cycle {cycle}")
    config = read_yaml(path)
    includes = config.pop("include", None)
    if includes is None:
        return config
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise PipelineError(f"{path}: include: must be a file name or a list of file names, got {includes!r}")
    base: dict = {}
    for inc in includes:
        target = path.parent / inc
        if not target.is_file():
            raise PipelineError(f"{path}: include: {inc} does not exist (looked for {target}; paths are relative "
                                f"to the including file)")
        base = merge(base, load_config(target, _chain + (path,)))
    return merge(base, config)


def _parse_value(text: str, source: str) -> Any:
    """An override's value as YAML (text that is not YAML stays a string; duplicate keys and alias bombs are
    refused)."""
    try:
        return parse_yaml(text, source)
    except YAMLSyntaxError:
        return text
    except YAMLConfigError as e:
        raise PipelineError(str(e)) from None


def _list_index(node: list, part: str, key: str, source: str) -> int:
    """The index of ``part`` in a list: a number, or the ``name`` of a row."""
    if part.lstrip("-").isdigit():
        i = int(part)
        if not -len(node) <= i < len(node):
            raise PipelineError(f"{source} {key}: index {i} is out of range (the list has {len(node)} items)")
        return i
    names = [item.get("name") for item in node if isinstance(item, dict)]
    if part not in names:
        raise PipelineError(f"{source} {key}: no item named {part!r} in this list (names: {names}); "
                            f"use a name or an index 0..{len(node) - 1}")
    return names.index(part)


def apply_overrides(config: Mapping, overrides: Sequence[str], source: str = "--set") -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested config; returns a new dict.

    List items are addressed by index or, for lists of named items such as ``rows``, by name:
    ``rows.4.student.model=DIR``, ``rows.radcot-small.student.model=DIR``. Unknown keys are created here
    and reported by the schema check.
    """
    config = copy.deepcopy(dict(config))
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise PipelineError(f"{source}: override {item!r} must look like key.subkey=value")
        parts = key.split(".")
        node: Any = config
        for depth, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, p, key, source)]
                continue
            if not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            node = node[p]
            if not isinstance(node, (dict, list)):
                raise PipelineError(f"{source} {key}: {'.'.join(parts[:depth + 1])} is not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, key, source)] = _parse_value(value, f"{source} {key}")
        else:
            node[last] = _parse_value(value, f"{source} {key}")
    return config
