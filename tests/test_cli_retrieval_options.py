"""Options for the other kind of index are refused (exit 2, one line), never silently ignored (#26)."""
from __future__ import annotations

import pytest

from radcot.cli import main


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def tiny_dense_index(tmp_path_factory):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from radcot.records import Doc
    from radcot.retrieval.dense import DenseRetriever

    out = tmp_path_factory.mktemp("dense") / "idx"
    docs = [Doc(str(i), t) for i, t in enumerate(["boundary layer transition", "wing flutter", "heat transfer"])]
    DenseRetriever.build(docs, out, max_seq_length=32, show_progress=False)
    return out


@pytest.fixture
def queries(tmp_path):
    q = tmp_path / "q.tsv"
    q.write_text("1\tboundary layer\n")
    return q


@pytest.mark.parametrize("flags", [["--bm25-k1", "1.2"], ["--bm25-b", "0.75"], ["--rm3"], ["--rocchio"],
                                   ["--max-query-terms", "50"], ["--heap", "1g"]])
def test_bm25_options_on_a_dense_index_are_refused(tiny_dense_index, queries, tmp_path, capsys, flags):
    run = tmp_path / "r.trec"
    with pytest.raises(SystemExit) as e:
        main(["search", "--index", str(tiny_dense_index), "--queries", str(queries), "--run", str(run), *flags])
    assert e.value.code == 2
    err = _err(capsys)
    assert flags[0] in err and "BM25 (Lucene) indexes only" in err and "is a dense (FAISS) index" in err
    assert not run.exists()


def test_dense_search_options_are_used(tiny_dense_index, queries, tmp_path, capsys):
    run = tmp_path / "r.trec"
    assert main(["search", "--index", str(tiny_dense_index), "--queries", str(queries), "--run", str(run),
                 "--k", "2", "--batch-size", "8", "--ef-search", "16", "--no-progress"]) == 0
    assert run.read_text().split()[2] == "0"


@pytest.mark.java
@pytest.mark.parametrize("flags", [["--device", "cpu"], ["--batch-size", "8"], ["--ef-search", "64"]])
def test_dense_options_on_a_bm25_index_are_refused(cranfield_bm25_index, queries, tmp_path, capsys, flags):
    run = tmp_path / "r.trec"
    with pytest.raises(SystemExit) as e:
        main(["search", "--index", str(cranfield_bm25_index), "--queries", str(queries), "--run", str(run), *flags])
    assert e.value.code == 2
    err = _err(capsys)
    assert flags[0] in err and "dense (FAISS) indexes only" in err and "is a BM25 (Lucene) index" in err


@pytest.mark.fast
@pytest.mark.parametrize("flag,value", [("--rm3-fb-terms", "20"), ("--rm3-fb-docs", "5"), ("--rm3-weight", "0.3")])
def test_rm3_tuning_without_rm3_is_refused(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["search", "--index", str(tmp_path / "nowhere"), "--queries", "q", "--run", "r", flag, value])
    assert e.value.code == 2 and f"{flag} tune RM3: add --rm3" in _err(capsys)


@pytest.mark.fast
@pytest.mark.parametrize("argv,expected", [
    (["--encoder", "x"], "--encoder applies only to dense builds (add --dense)"),
    (["--index-type", "hnsw", "--batch-size", "8"], "--index-type, --batch-size apply only to dense builds"),
    (["--dense", "--threads", "4"], "--threads applies only to BM25 builds (drop --dense)"),
    (["--dense", "--heap", "4g"], "--heap applies only to BM25 builds"),
])
def test_index_options_for_the_other_kind_are_refused(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        main(["index", "--collection", str(tmp_path), "--index", str(tmp_path / "idx"), *argv])
    assert e.value.code == 2 and expected in _err(capsys)
    assert not (tmp_path / "idx").exists()
