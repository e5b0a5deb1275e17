"""YAML for config files, with guards: duplicate keys refused, and a size and alias budget.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word, and it builds alias graphs whose
expanded size grows exponentially with the file (a 600-byte "billion laughs" file stands for 387 million
strings). Loading such a file is quick; code that then walks the result (merging, ``${param}``
substitution, validation) runs for minutes and gigabytes. :func:`load_yaml` and :func:`parse_yaml` refuse
both before anything walks the data, with the file and line:

- a key that appears twice in one mapping (``<<`` merge keys may still be overridden, as YAML intends);
- a file larger than :data:`MAX_BYTES`;
- a document whose aliases stand for more than :data:`MAX_NODES` values once expanded, or an alias that
  contains itself.

Radcot reads every YAML config through these functions: pipeline files and their ``include:`` files,
``--set`` values, ``radcot train --config`` files and the package's ``reference.yaml``.

Example:
    >>> parse_yaml("retriever: {k1: 0.9}\\nseed: 13\\n")
    {'retriever': {'k1': 0.9}, 'seed': 13}
    >>> try:
    ...     parse_yaml("seed: 1\\nseed: 2\\n", "p.yaml")
    ... except YAMLConfigError as e:
    ...     print(e)
    p.yaml:2: duplicate key 'seed' (first at line 1): YAML would silently keep the last value; remove one of them
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from radcot.records import RadcotError

#: the largest YAML config read (bytes); configs name their data files by path instead of containing them
MAX_BYTES = 1_000_000
#: the most values (mappings, lists, scalars) a YAML document may stand for once its aliases are expanded
MAX_NODES = 100_000


class YAMLConfigError(RadcotError, ValueError):
    """A YAML config that is refused: names the file, the line and the fix."""


class YAMLSyntaxError(YAMLConfigError):
    """Text that is not valid YAML."""


def _loader_base():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _make_loader(source: str):
    """A safe loader class that refuses duplicate keys (naming ``source``)."""
    import yaml

    class _Loader(_loader_base()):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                _check_duplicates(self, node, source)
            return super().construct_mapping(node, deep=deep)

    return _Loader


def _check_duplicates(loader, node, source: str) -> None:
    """Refuse a key written twice in the mapping ``node`` (merge keys ``<<`` are not counted)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: PyYAML reports it itself
            continue
        line = key_node.start_mark.line + 1
        if first is not None:
            raise YAMLConfigError(f"{source}:{line}: duplicate key {key!r} (first at line {first}): YAML would "
                                  f"silently keep the last value; remove one of them")
        seen[key] = line


def _children(node) -> list:
    """A node's direct children: a mapping's keys and values, a sequence's items, nothing for a scalar."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(node, source: str = "<string>", limit: int = MAX_NODES) -> int:
    """The number of values ``node`` stands for with every alias expanded; refuses more than ``limit``.

    Each node is counted once per path that reaches it, computed with a memo (linear in the file's size), so
    an alias bomb is measured without being expanded.

    Raises:
        YAMLConfigError: the expansion exceeds ``limit``, or an alias contains itself.
    """
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in active:
            raise YAMLConfigError(f"{source}:{n.start_mark.line + 1}: recursive alias (a value that contains "
                                  f"itself); configs cannot use them")
        active.add(key)
        total = 1 + sum(size(c) for c in _children(n))
        active.discard(key)
        if total > limit:
            raise YAMLConfigError(f"{source}:{n.start_mark.line + 1}: this value's aliases expand to more than "
                                  f"{limit:,} values (an alias bomb?); refused before expanding it. Write the "
                                  f"values out, or use fewer nested aliases")
        memo[key] = total
        return total

    try:
        return size(node)
    except RecursionError:
        raise YAMLConfigError(f"{source}: nested too deeply to be a config") from None


def parse_yaml(text: str, source: str = "<string>", max_nodes: int = MAX_NODES) -> Any:
    """One YAML document from ``text`` with the guards of this module (``source`` names it in errors).

    Raises:
        YAMLSyntaxError: not valid YAML (with the line).
        YAMLConfigError: a duplicate key, or aliases that expand past ``max_nodes``.
    """
    import yaml

    if not isinstance(text, str):
        raise TypeError(f"parse_yaml(text=...): expected a str, got {type(text).__name__}")
    loader = _make_loader(source)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node, source, max_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise YAMLSyntaxError(f"{source}{where}: not valid YAML ({' '.join(str(problem).split())})") from None
    except RecursionError:
        raise YAMLConfigError(f"{source}: nested too deeply to be a config") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """Read one YAML document from ``path`` with the guards of this module.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        YAMLConfigError: over ``max_bytes``, not UTF-8, not valid YAML (:class:`YAMLSyntaxError`), a duplicate
            key, or aliases that expand past ``max_nodes``; the message has ``path:line``.
    """
    path = Path(path)
    n = path.stat().st_size
    if n > max_bytes:
        raise YAMLConfigError(f"{path}: {n:,} bytes, over the {max_bytes:,}-byte limit of a YAML config; a config "
                              f"names its data files by path instead of containing them")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise YAMLConfigError(f"{path}: not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    return parse_yaml(text, str(path), max_nodes)
