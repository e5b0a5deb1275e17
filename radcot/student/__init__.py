"""Stage 3: the Fusion-in-Decoder student (distillation data, model, training, generation).

Everything is imported lazily: ``import radcot.student`` imports no torch.

Example:
    >>> from radcot.student import build_distillation_data, TrainConfig, train, generate_cots  # doctest: +SKIP
    >>> build_distillation_data("train-queries.tsv", "cots.jsonl", "indexes/bm25", k=10, out_dir="distill")  # doctest: +SKIP
    >>> run = train(TrainConfig(data="distill", model="google/flan-t5-base", out="runs/s"))  # doctest: +SKIP
    >>> generate_cots(run / "best", "student-cots.jsonl", queries="test-queries.tsv", retriever="indexes/bm25")  # doctest: +SKIP
"""
from __future__ import annotations

from radcot._deps import lazy_exports

_EXPORTS = {
    "build_distillation_data": "radcot.student.data",
    "load_distillation_data": "radcot.student.data",
    "FiDCollator": "radcot.student.data",
    "DistillationDataError": "radcot.student.data",
    "PASSAGE_TEMPLATE": "radcot.student.data",
    "NO_CONTEXT_TEMPLATE": "radcot.student.data",
    "TEMPLATES": "radcot.student.data",
    "resolve_template": "radcot.student.data",
    "FiDStudent": "radcot.student.model",
    "FiDConfig": "radcot.student.model",
    "TrainConfig": "radcot.student.train",
    "TrainingError": "radcot.student.train",
    "train": "radcot.student.train",
    "launch_training": "radcot.student.launch",
    "read_metrics": "radcot.student.train",
    "list_checkpoints": "radcot.student.train",
    "generate_cots": "radcot.student.generate",
    "GenerationConfigMismatch": "radcot.student.generate",
    "GenerateOptions": "radcot.student.generate",
    "check_generate_options": "radcot.student.generate",
    "build_flan_t5_standin": "radcot.student.standin",
}

__all__ = sorted(_EXPORTS)


__getattr__, _ = lazy_exports("radcot.student", _EXPORTS, globals())


def __dir__():
    return __all__
