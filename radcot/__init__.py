"""radcot: LLM-free query expansion by retrieval-augmented distillation of chain-of-thought (RADCoT).

The public API is a handful of nouns, imported lazily so that ``import radcot`` starts no JVM and
imports no torch::

    from radcot import BM25Retriever, QueryExpander, ExpandedSearcher, evaluate
    bm25 = BM25Retriever.build("data/demo", "runs/demo-index")
    expander = QueryExpander("cots.jsonl", formula="radcot")
    run = ExpandedSearcher(bm25, expander).batch_search(queries, k=1000)
    evaluate("data/demo", run, ["nDCG@10", "RR@10"])
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from radcot._deps import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    # records
    "Query": "radcot.records",
    "Doc": "radcot.records",
    "Qrel": "radcot.records",
    "ScoredDoc": "radcot.records",
    "RadcotError": "radcot.records",
    "DataFormatError": "radcot.records",
    # data
    "Dataset": "radcot.data.registry",
    "load_dataset": "radcot.data.registry",
    "read_corpus": "radcot.data.readers",
    "read_queries": "radcot.data.readers",
    "read_qrels": "radcot.data.readers",
    "read_run": "radcot.data.readers",
    "write_run": "radcot.data.readers",
    # retrieval
    "BM25Retriever": "radcot.retrieval.bm25",
    "DenseRetriever": "radcot.retrieval.dense",
    "Retriever": "radcot.retrieval.base",
    "load_retriever": "radcot.retrieval",
    "reciprocal_rank_fusion": "radcot.retrieval.fusion",
    # teacher
    "get_backend": "radcot.teacher",
    "teach": "radcot.teacher.runner",
    "read_teacher_output": "radcot.teacher.runner",
    "GenerationParams": "radcot.teacher.base",
    # student
    "FiDStudent": "radcot.student.model",
    "TrainConfig": "radcot.student.train",
    "train": "radcot.student.train",
    "build_distillation_data": "radcot.student.data",
    "generate_cots": "radcot.student.generate",
    # expansion
    "QueryExpander": "radcot.expansion",
    "ExpandedSearcher": "radcot.expansion",
    "Expander": "radcot.serving.expander",
    "Expansion": "radcot.serving.expander",
    "expand_queries": "radcot.expansion",
    "expand_text": "radcot.expansion",
    "read_expansions": "radcot.expansion",
    "write_expansions": "radcot.expansion",
    # evaluation
    "evaluate": "radcot.evaluation",
    "paired_ttest": "radcot.evaluation",
    "canonical_measure": "radcot.evaluation",
    # pipelines
    "Pipeline": "radcot.pipeline",
    "run_pipeline": "radcot.pipeline",
    "results_table": "radcot.report",
    "format_table": "radcot.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, _ = lazy_exports("radcot", _EXPORTS, globals())


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from radcot.data.readers import read_corpus, read_qrels, read_queries, read_run, write_run  # noqa: F401
    from radcot.data.registry import Dataset, load_dataset  # noqa: F401
    from radcot.evaluation import canonical_measure, evaluate, paired_ttest  # noqa: F401
    from radcot.records import DataFormatError, Doc, Qrel, Query, RadcotError, ScoredDoc  # noqa: F401
