"""Data: records, readers for IR formats and named datasets (the demo's synthetic world is :mod:`radcot.demo.world`)."""
from radcot.data.readers import (check_qrels, check_trec_id, open_text, read_corpus, read_qrels, read_queries, read_run,
                                 run_from_scored, write_queries_tsv, write_run)
from radcot.data.registry import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset", "read_corpus", "read_queries", "read_qrels", "read_run", "write_run",
           "run_from_scored", "write_queries_tsv", "check_qrels", "check_trec_id", "open_text"]
