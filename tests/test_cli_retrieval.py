"""`radcot index`, `radcot search` and `radcot evaluate` end to end on real collections (subprocesses where the
point is the real command line), and `radcot --help` staying light."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("jnius", "jnius_config", "torch", "faiss", "pyserini", "transformers", "sentence_transformers")


def _radcot(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "radcot", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"radcot {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.fast
@pytest.mark.parametrize("argv", [["--help"], ["index", "--help"], ["search", "--help"]])
def test_help_imports_no_jvm_or_torch(argv):
    code = (
        "import sys\n"
        "from radcot.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    if argv != ["--help"]:
        assert "--index" in out.stdout


@pytest.mark.java
@pytest.mark.slow
def test_vaswani_index_search_evaluate_reproduce_reference(vaswani, tmp_path):
    idx, run = tmp_path / "vaswani-bm25", tmp_path / "vaswani.trec"
    built = _radcot("index", "--collection", str(vaswani), "--index", str(idx), "--no-progress")
    assert json.loads(built.stdout.strip().splitlines()[-1])["num_docs"] == 11429
    _radcot("search", "--index", str(idx), "--queries", str(vaswani), "--run", str(run), "--k", "1000",
            "--bm25-k1", "0.9", "--bm25-b", "0.4", "--no-progress")
    lines = run.read_text().splitlines()
    assert 90_000 < len(lines) <= 93 * 1000 and lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    ev = _radcot("evaluate", "--qrels", str(vaswani), "--run", str(run), "--metrics", "nDCG@10", "AP", "R@1000",
                 "RR@10", "--json")
    m = json.loads(ev.stdout)
    assert m["nDCG@10"] == pytest.approx(0.4368, abs=5e-4)
    assert m["AP"] == pytest.approx(0.2856, abs=5e-4)
    assert m["R@1000"] == pytest.approx(0.9340, abs=5e-4)


@pytest.mark.java
def test_cranfield_search_evaluate_reproduce_reference(cranfield, cranfield_bm25_index, tmp_path, capsys):
    from radcot.cli import main

    run = tmp_path / "cran.trec"
    assert main(["search", "--index", str(cranfield_bm25_index), "--queries", str(cranfield), "--run", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--qrels", str(cranfield), "--run", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["nDCG@10"] == pytest.approx(0.3510, abs=5e-4)
    assert m["AP"] == pytest.approx(0.2879, abs=5e-4)


@pytest.mark.java
def test_search_with_expansions(cranfield, cranfield_bm25_index, tmp_path, capsys):
    from radcot.cli import main
    from radcot.data.readers import read_queries, read_run
    from radcot.records import RadcotError

    queries = read_queries(cranfield)[:6]
    topics = tmp_path / "topics.tsv"
    topics.write_text("".join(f"{q.query_id}\t{q.text}\n" for q in queries))
    # query2doc-style: query repeated + a long pseudo-document (with a tab inside the text)
    exp = tmp_path / "expanded.tsv"
    doc = "boundary layer shock wave heat transfer " * 3
    exp.write_text("".join(f"{q.query_id}\t{q.text} {q.text}\t{doc}\n" for q in queries[:5]))
    plain, expanded = tmp_path / "plain.trec", tmp_path / "exp.trec"
    assert main(["search", "--index", str(cranfield_bm25_index), "--queries", str(topics), "--run", str(plain),
                 "--k", "50", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(cranfield_bm25_index), "--queries", str(topics), "--run", str(expanded),
                 "--expansions", str(exp), "--no-progress"]) == 1  # the dispatcher prints RadcotErrors as one line
    assert "1 of 6 queries have no line" in capsys.readouterr().err
    from radcot.cli.search import main as search_main

    with pytest.raises(RadcotError, match="--keep-unexpanded"):
        search_main(["--index", str(cranfield_bm25_index), "--queries", str(topics), "--run", str(expanded),
                     "--expansions", str(exp)])
    assert not expanded.exists()
    assert main(["search", "--index", str(cranfield_bm25_index), "--queries", str(topics), "--run", str(expanded),
                 "--expansions", str(exp), "--keep-unexpanded", "--k", "50", "--no-progress"]) == 0
    a, b = read_run(plain), read_run(expanded)
    assert set(a) == set(b) == {q.query_id for q in queries}
    changed = [q.query_id for q in queries if list(a[q.query_id]) != list(b[q.query_id])]
    assert set(changed) <= {q.query_id for q in queries[:5]} and len(changed) >= 3
    assert a[queries[5].query_id] == b[queries[5].query_id]  # unexpanded query: same hits


@pytest.mark.java
def test_search_errors_are_one_line(tmp_path, cranfield):
    proc = _radcot("search", "--index", str(tmp_path / "nope"), "--queries", str(cranfield), "--run",
                   str(tmp_path / "r.trec"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("radcot search: error:") and "radcot index" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "exp.tsv"
    bad.write_text("1\tok\nno-tab-here\n")
    proc = _radcot("search", "--index", str(tmp_path / "nope"), "--queries", str(cranfield), "--run",
                   str(tmp_path / "r.trec"), "--expansions", str(bad), check=False)
    assert proc.returncode == 1 and "line 2" in proc.stderr


def test_dense_index_and_search_cli(tmp_path, capsys):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from radcot.cli import main
    from radcot.data.readers import read_run

    coll = tmp_path / "coll"
    coll.mkdir()
    docs = {"d1": "the moon raises tides in the oceans", "d2": "jet engines burn kerosene",
            "d3": "glaciers carve valleys over millennia", "d4": "neural networks learn from data"}
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                               for k, v in docs.items()))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "why are there ocean tides"}) + "\n"
                                        + json.dumps({"_id": "q2", "text": "aircraft propulsion fuel"}) + "\n")
    idx, run = tmp_path / "dense", tmp_path / "dense.trec"
    assert main(["index", "--collection", str(coll), "--index", str(idx), "--dense", "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["kind"] == "dense" and info["dims"] == 384 and info["num_docs"] == 4
    assert main(["search", "--index", str(idx), "--queries", str(coll), "--run", str(run), "--k", "2",
                 "--no-progress"]) == 0
    r = read_run(run)
    assert next(iter(sorted(r["q1"], key=r["q1"].get, reverse=True))) == "d1"
    assert next(iter(sorted(r["q2"], key=r["q2"].get, reverse=True))) == "d2"
    assert "radcot-dense" in run.read_text().splitlines()[0]
