"""Hooks that let a special model plug into the general student without the student knowing it.

The FiD student (:class:`radcot.student.model.FiDStudent`) works with any T5. A model that needs more than a
stock T5 (e.g. the demo's T5 with a copy mechanism, :mod:`radcot.demo`) plugs in through four hooks, each resolved
lazily from a ``"module:attribute"`` import path, so nothing here imports the code it names:

- **model class** (:func:`model_class`): a checkpoint's ``config.json`` names the class that loads it under
  ``"radcot_model_class"`` (``"package.module:Class"``, e.g. the demo's copy-mechanism T5); without it, the
  stock ``T5ForConditionalGeneration``. Checkpoints written before the key existed are mapped by
  :data:`LEGACY_CLASS_RESOLVERS`.
- **FiD hooks** (:class:`FiDHooks`): methods :class:`FiDStudent` calls on its T5; a plain T5 gets the defaults
  (token embeddings, no extra model arguments), a special class overrides them.
- **model builders** (:data:`MODEL_BUILDERS`): a model spec such as ``tiny-t5:d_model=128`` names a builder that
  makes a fresh model directory from the training texts (offline, in the run directory).
- **training augmenters** (:data:`AUGMENTERS`): ``TrainConfig.augment`` names a factory
  ``factory(targets, **augment_args)`` whose result rewrites a training example (``augmenter(example, seed)``).

Register your own by adding to the dicts (``MODEL_BUILDERS["my-t5"] = "mypkg.build:build"``) or, for model
classes and augmenters, by giving the import path directly.

Example:
    >>> resolve_builder("google/flan-t5-base") is None
    True
    >>> resolve_builder("tiny-t5:d_model=64")
    'radcot.demo.tiny:build'
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from radcot.records import DataFormatError, RadcotError

#: the ``config.json`` key naming the class that loads a checkpoint (``"module:Class"``)
MODEL_CLASS_KEY = "radcot_model_class"

#: model spec name (``NAME`` or ``NAME:options``) -> ``"module:function"`` building it:
#: ``build(spec, texts, out_dir)`` writes a loadable model directory to ``out_dir``
MODEL_BUILDERS: dict[str, str] = {"tiny-t5": "radcot.demo.tiny:build"}

#: augmenter name -> ``"module:factory"``; ``factory(targets, **args)(example, seed)`` returns the new example
AUGMENTERS: dict[str, str] = {"copy": "radcot.demo.augment:CopyAugmenter"}

#: ``"module:function"``s asked, in order, for the class of a checkpoint whose config has radcot keys but no
#: :data:`MODEL_CLASS_KEY` (written before it existed): ``f(config_dict) -> "module:Class" or None``
LEGACY_CLASS_RESOLVERS: tuple[str, ...] = ("radcot.demo.tiny:legacy_model_class",)


class HookError(RadcotError, ValueError):
    """A hook's import path does not resolve (module missing, attribute missing, malformed)."""


def load_object(path: str, what: str = "hook") -> Any:
    """The object an import path ``"package.module:attribute"`` names.

    Raises:
        HookError: the path is malformed, or its module or attribute does not exist.
    """
    module, sep, attr = str(path).partition(":")
    if not sep or not module or not attr:
        raise HookError(f"{what} {path!r} is not an import path; expected 'package.module:attribute'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise HookError(f"{what} {path!r}: cannot import {module} ({e}); install the package that provides it") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise HookError(f"{what} {path!r}: {module} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------------ model class


def model_class(model_dir: str | os.PathLike | None):
    """The class that loads the T5 checkpoint in ``model_dir`` (hub names, ``None``: the stock T5).

    Raises:
        DataFormatError: ``config.json`` names a class that cannot be imported.
    """
    from radcot._deps import require

    transformers = require("transformers", "the FiD student")
    config = _read_config(model_dir)
    where = Path(str(model_dir)) / "config.json"
    try:
        path = config.get(MODEL_CLASS_KEY) or _legacy_class_path(config)
    except ValueError as e:  # a legacy checkpoint this version cannot rebuild
        raise DataFormatError(where, None, "a model this radcot version can load", str(e)) from e
    if not path:
        return transformers.T5ForConditionalGeneration
    try:
        return load_object(path, MODEL_CLASS_KEY)
    except HookError as e:
        raise DataFormatError(where, None, "an importable model class", f"{MODEL_CLASS_KEY}: {path!r}",
                              f"{e}; or remove the key to load a stock T5") from e


def _read_config(model_dir) -> dict:
    """A local checkpoint's ``config.json`` as a dict (empty for hub names and unreadable files: transformers'
    own loader reports those)."""
    cfg = Path(model_dir) / "config.json" if model_dir else None
    if cfg is None or not cfg.is_file():
        return {}
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}
    return d if isinstance(d, dict) else {}


def _legacy_class_path(config: Mapping[str, Any]) -> str | None:
    """The class of a radcot checkpoint written before :data:`MODEL_CLASS_KEY` existed (None: stock T5)."""
    if not any(str(k).startswith("radcot_") for k in config):
        return None
    for resolver in LEGACY_CLASS_RESOLVERS:
        path = load_object(resolver, "legacy class resolver")(config)
        if path:
            return path
    return None


# ------------------------------------------------------------------------------------------------ FiD hooks


class FiDHooks:
    """What :class:`~radcot.student.model.FiDStudent` asks of its T5, with a plain T5's answers.

    A T5 class that needs more (the demo's copy-mechanism T5) inherits this mixin and overrides the methods;
    a stock ``T5ForConditionalGeneration`` does not have them and gets these defaults (:func:`fid_hook`).
    """

    def fid_input_embeds(self, input_ids, attention_mask, passage_mask=None):
        """Encoder input embeddings ``(B, N, L, H)`` for FiD inputs ``(B, N, L)``, or None to let the encoder
        embed ``input_ids`` itself (the default)."""
        return None

    def fid_model_kwargs(self, state_ids) -> dict:
        """Extra keyword arguments of every forward/generate call, given the token id of each kept encoder
        state ``(B, S)`` (aligned with the FiD-concatenated encoder states). Default: none."""
        return {}


def fid_hook(t5, name: str) -> Callable:
    """``t5``'s own FiD hook ``name`` (a :class:`FiDHooks` method), or the default bound to it."""
    own = getattr(t5, name, None)
    return own if own is not None else getattr(FiDHooks, name).__get__(t5)


# ------------------------------------------------------------------------------------------------ builders


def resolve_builder(model: str) -> str | None:
    """The builder import path of a model spec (``tiny-t5`` or ``tiny-t5:k=v,...``), or None for a checkpoint."""
    name = str(model).split(":", 1)[0]
    if name not in MODEL_BUILDERS or (name != str(model) and not str(model).startswith(name + ":")):
        return None
    return MODEL_BUILDERS[name]


def build_model(model: str, texts: Iterable[str], out_dir: str | os.PathLike) -> Path:
    """Build the model a spec names into ``out_dir`` from ``texts`` (tokenizer training texts)."""
    path = resolve_builder(model)
    if path is None:
        raise HookError(f"{model!r} names no model builder; builders: {sorted(MODEL_BUILDERS)}")
    load_object(path, f"model builder for {model.split(':', 1)[0]}")(model, texts, out_dir)
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------ augmenters


def make_augmenter(name: str, targets: Iterable[str], args: Mapping[str, Any] | None = None):
    """The augmenter ``name`` (a key of :data:`AUGMENTERS` or ``"module:factory"``) built on ``targets``.

    Raises:
        HookError: unknown name or bad import path.
        ValueError: the factory refused ``args`` (unknown argument or a value out of range).
    """
    path = AUGMENTERS.get(name) or (name if ":" in name else None)
    if path is None:
        raise HookError(f"unknown augmenter {name!r}; choose one of {sorted(AUGMENTERS)} or give 'module:factory'")
    factory = load_object(path, f"augmenter {name!r}")
    try:
        return factory(targets, **dict(args or {}))
    except TypeError as e:
        raise ValueError(f"augmenter {name!r} does not take arguments {dict(args or {})}: {e}") from None
