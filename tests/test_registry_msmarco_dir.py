"""Named MS MARCO datasets from a local directory: topics, graded qrels, collection.tsv, queries.train.tsv."""
from __future__ import annotations

import pytest

from radcot.data.registry import NAMED, load_dataset
from radcot.records import OfflineResourceError

pytestmark = pytest.mark.fast


def _msmarco_dir(tmp_path, collection: bool = True):
    spec = NAMED["msmarco-passage/trec-dl-2019"]
    d = tmp_path / "msmarco"
    d.mkdir()
    (d / spec.topics_file).write_text("156493\tdo goldfish grow\n1110199\twhat is wifi vs bluetooth\n"
                                      "19335\tanthropological definition of environment\n")
    # graded 0-3 as TREC DL; 1110199 is a topic without judgements (DL19 lists 200, judges 43)
    (d / spec.qrels_file).write_text("156493 Q0 0 3\n156493 Q0 1 2\n156493 Q0 2 1\n156493 Q0 3 0\n"
                                     "19335 Q0 1 0\n19335 Q0 2 2\n")
    if collection:
        (d / "collection.tsv").write_text("0\tGoldfish grow as large as their tank.\n1\tGoldfish keep growing.\n"
                                          "2\tA goldfish bowl.\n3\tWifi and bluetooth are radios.\n")
        (d / "queries.train.tsv").write_text("121352\tdefine extreme\n634306\twhat does chattel mean on credit history\n")
    return d


def test_local_msmarco_dir_with_collection_gives_corpus_and_training_queries(tmp_path, monkeypatch):
    monkeypatch.delenv("RADCOT_MSMARCO_INDEX", raising=False)
    d = _msmarco_dir(tmp_path)
    ds = load_dataset("msmarco-passage/trec-dl-2019", data_dir=d)
    assert ds.corpus == d / "collection.tsv"
    assert ds.index is None  # the pipeline indexes collection.tsv instead of asking for the prebuilt index
    assert [q.query_id for q in ds.train_queries()] == ["121352", "634306"]
    assert [q.query_id for q in ds.judged_queries()] == ["156493", "19335"]
    grades = {(q.query_id, q.doc_id): q.relevance for q in ds.qrels()}
    assert grades[("156493", "0")] == 3 and grades[("156493", "3")] == 0 and grades[("19335", "2")] == 2
    from radcot.data.readers import read_corpus

    assert [doc.doc_id for doc in read_corpus(ds.corpus)] == ["0", "1", "2", "3"]


def test_explicit_index_wins_over_collection_and_prebuilt_is_the_default_without_one(tmp_path, monkeypatch):
    monkeypatch.delenv("RADCOT_MSMARCO_INDEX", raising=False)
    d = _msmarco_dir(tmp_path)
    assert load_dataset("msmarco-passage/trec-dl-2019", data_dir=d, index="/idx/msmarco").index == "/idx/msmarco"
    (tmp_path / "bare").mkdir()
    bare = _msmarco_dir(tmp_path / "bare", collection=False)
    ds = load_dataset("msmarco-passage/trec-dl-2019", data_dir=bare)
    assert ds.index == "msmarco-v1-passage" and ds.corpus is None and ds.train_queries_path is None


def test_missing_topics_name_the_pipeline_setting(tmp_path):
    with pytest.raises(OfflineResourceError) as e:
        load_dataset("msmarco-passage/trec-dl-2020", data_dir=tmp_path)
    assert "topics.dl20.txt" in str(e.value) and "params.msmarco_dir" in str(e.value)
    assert "--data-dir" not in str(e.value)  # no command has that flag


def test_graded_dl_qrels_score_ap_at_rel2(tmp_path, monkeypatch):
    """AP(rel=2) counts only grades >= 2: the grade-1 passage at rank 1 does not count as relevant."""
    from radcot.evaluation import evaluate

    monkeypatch.delenv("RADCOT_MSMARCO_INDEX", raising=False)
    ds = load_dataset("msmarco-passage/trec-dl-2019", data_dir=_msmarco_dir(tmp_path))
    run = {"156493": {"2": 3.0, "0": 2.0, "1": 1.0}, "19335": {"2": 1.0}}
    scores = evaluate(ds.qrels(), run, metrics=["AP(rel=2)", "AP"])
    assert scores["AP(rel=2)"] == pytest.approx((0.5 * (1 / 2 + 2 / 3) + 1.0) / 2)
    assert scores["AP"] == pytest.approx((1.0 + 1.0) / 2)
