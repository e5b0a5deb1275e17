"""Issue 9 class 4: never delete or replace what radcot did not write; replacing radcot's own output needs
--overwrite (or resumes, where the command is resumable). Real files, a real Lucene index."""
from __future__ import annotations

import pytest

from radcot.cli import main
from radcot.records import Query


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def queries(tmp_path):
    q = tmp_path / "q.tsv"
    q.write_text("1\tab\n2\tcd\n", encoding="utf-8")
    return q


@pytest.mark.fast
def test_expand_replaces_its_own_output_only_with_overwrite(tmp_path, queries, capsys):
    cots, out = tmp_path / "c.tsv", tmp_path / "exp.tsv"
    cots.write_text("1\tcdefghijklmn\n2\tsome more words\n", encoding="utf-8")
    argv = ["expand", "--cots", str(cots), "--queries", str(queries), "--out", str(out)]
    assert main(argv) == 0
    first = out.read_bytes()
    assert main(argv + ["--formula", "dense"]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == first
    assert main(argv + ["--formula", "dense", "--overwrite"]) == 0 and out.read_bytes() != first


@pytest.mark.parametrize("argv", [
    ["expand", "--cots", "{cots}", "--queries", "{queries}", "--out", "{out}", "--overwrite"],
    ["teach", "--backend", "kb", "--world", "{tmp}", "--queries", "{queries}", "--out", "{out}"],
    ["teach", "--backend", "kb", "--world", "{tmp}", "--queries", "{queries}", "--out", "{out}", "--overwrite"],
    ["search", "--index", "{tmp}/none", "--queries", "{queries}", "--run", "{out}", "--overwrite"],
])
@pytest.mark.fast
def test_a_file_radcot_did_not_write_is_never_replaced(tmp_path, queries, argv, capsys):
    cots, out = tmp_path / "c.tsv", tmp_path / "mine.txt"
    cots.write_text("1\tcdefghijklmn\n", encoding="utf-8")
    out.write_text("my notes, not radcot's\n", encoding="utf-8")
    subst = {"{cots}": str(cots), "{queries}": str(queries), "{out}": str(out), "{tmp}": str(tmp_path)}
    assert main([subst.get(a, a.replace("{tmp}", str(tmp_path))) for a in argv]) == 1
    err = capsys.readouterr().err
    assert "radcot did not write" in err and "Traceback" not in err
    assert out.read_text(encoding="utf-8") == "my notes, not radcot's\n"


@pytest.mark.fast
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_build_data_never_deletes_a_users_directory(tmp_path, queries, overwrite, capsys):
    user = tmp_path / "results"
    (user / "sub").mkdir(parents=True)
    (user / "paper.tex").write_text("\\section{Results}\n")
    (user / "sub" / "data.csv").write_text("a,b\n")
    before = _tree(user)
    cots = tmp_path / "c.tsv"
    cots.write_text("1\tcdefghijklmn\n2\tmore\n", encoding="utf-8")
    assert main(["build-data", "--queries", str(queries), "--teacher-out", str(cots), "--no-context",
                 "--out", str(user), *overwrite]) == 1
    assert "radcot did not write" in capsys.readouterr().err
    assert _tree(user) == before


@pytest.mark.fast
def test_make_world_and_index_refuse_a_users_directory(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("keep")
    assert main(["make-world", "--out", str(user), "--scale", "0.1", "--overwrite"]) == 1
    assert main(["index", "--collection", str(tmp_path / "none"), "--index", str(user), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("radcot did not write") == 2
    assert _tree(user) == {"keep.txt": b"keep"}
    world = tmp_path / "world"
    assert main(["make-world", "--out", str(world), "--scale", "0.05", "--n-test", "5"]) == 0
    assert main(["make-world", "--out", str(world), "--scale", "0.05", "--n-test", "5"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["make-world", "--out", str(world), "--scale", "0.05", "--n-test", "5", "--seed", "2",
                 "--overwrite"]) == 0


@pytest.mark.java
def test_search_replaces_its_own_run_only_with_overwrite(tmp_path, cranfield_bm25_index, capsys):
    from radcot.data.readers import read_run, write_queries_tsv

    topics, run = tmp_path / "t.tsv", tmp_path / "bm25.trec"
    write_queries_tsv([Query("1", "boundary layer"), Query("2", "shock wave heat transfer")], topics)
    argv = ["search", "--index", str(cranfield_bm25_index), "--queries", str(topics), "--run", str(run),
            "--no-progress", "--k", "5"]
    assert main(argv) == 0
    first = run.read_bytes()
    assert main(argv[:-1] + ["7"]) == 1
    assert "already exists" in capsys.readouterr().err and run.read_bytes() == first
    assert main(argv[:-1] + ["7", "--overwrite"]) == 0
    assert all(len(hits) == 7 for hits in read_run(run).values())
