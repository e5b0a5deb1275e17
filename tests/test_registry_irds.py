"""Named datasets through ir_datasets (#23): its ids and its cache, laid out here from the shared data (no
network), read back through radcot's strict readers; missing files give one line naming them, in seconds.

ir_datasets fixes its cache paths when it is imported, so each case runs in a fresh interpreter with its own
``IR_DATASETS_HOME``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("ir_datasets")


def _load(code: str, home: Path, tmp_path: Path, offline: bool = True, timeout: float = 120):
    env = {**os.environ, "PYTHONPATH": str(REPO), "IR_DATASETS_HOME": str(home),
           "RADCOT_CACHE": str(tmp_path / "radcot-cache")}
    if offline:
        env["RADCOT_OFFLINE"] = "1"
    prog = "import json\nfrom radcot.data.registry import load_dataset\n" + code
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, timeout=timeout)
    return proc, time.monotonic() - t0


def _vaswani_cache(shared: Path, home: Path) -> None:
    """vaswani as ir_datasets caches it (``vaswani/{docs,queries,qrels}.txt``, the Glasgow NPL format)."""
    src, d = shared / "vaswani", home / "vaswani"
    d.mkdir(parents=True)
    with open(d / "docs.txt", "w", encoding="utf-8") as f:
        for line in open(src / "corpus.jsonl", encoding="utf-8"):
            o = json.loads(line)
            f.write(f"{o['_id']}\n{o['text']}\n   /\n")
    with open(d / "queries.txt", "w", encoding="utf-8") as f:
        for line in open(src / "queries.jsonl", encoding="utf-8"):
            o = json.loads(line)
            f.write(f"{o['_id']}\n{o['text']}\n/\n")
    judged: dict[str, list[str]] = {}
    for line in open(src / "qrels" / "test.tsv", encoding="utf-8").readlines()[1:]:
        q, doc, _ = line.split("\t")
        judged.setdefault(q, []).append(doc)
    with open(d / "qrels.txt", "w", encoding="utf-8") as f:
        for q, docs in judged.items():
            f.write(f"{q}\n{' '.join(docs)}\n   /\n")


def _dl19_cache(shared: Path, home: Path) -> None:
    """DL19's topics and qrels where ir_datasets caches them (``msmarco-passage/trec-dl-2019/``)."""
    d = home / "msmarco-passage" / "trec-dl-2019"
    d.mkdir(parents=True)
    (d / "queries.tsv").write_bytes((shared / "msmarco-passage" / "topics.dl19-passage.txt").read_bytes())
    (d / "qrels").write_bytes((shared / "msmarco-passage" / "qrels.dl19-passage.txt").read_bytes())


def test_vaswani_from_the_ir_datasets_cache_offline(shared_data, tmp_path):
    home = tmp_path / "irds"
    _vaswani_cache(shared_data, home)
    proc, _ = _load("""
from radcot.data.readers import read_corpus
ds = load_dataset("vaswani")
docs = list(read_corpus(ds.corpus))
print(json.dumps({"name": ds.name, "queries": [list(q) for q in ds.queries()], "qrels": len(ds.qrels()),
                  "judged": len(ds.judged_queries()), "docs": len(docs), "doc1": docs[0].text.strip(),
                  "index": ds.index}))
""", home, tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    beir = [json.loads(line) for line in open(shared_data / "vaswani" / "queries.jsonl", encoding="utf-8")]
    assert got["queries"] == [[q["_id"], q["text"]] for q in beir]
    assert (got["name"], got["qrels"], got["judged"], got["docs"], got["index"]) == ("vaswani", 2083, 93, 11429, None)
    assert got["doc1"].startswith("compact memories have flexible capacities")


def test_dl19_judged_topics_and_qrels_offline(shared_data, tmp_path):
    home = tmp_path / "irds"
    _dl19_cache(shared_data, home)
    proc, _ = _load("""
for name in ("msmarco-passage/trec-dl-2019/judged", "irds:msmarco-passage/trec-dl-2019"):
    ds = load_dataset(name)
    print(json.dumps([ds.name, len(ds.queries()), len(ds.judged_queries()), len(ds.qrels()), ds.index,
                      ds.corpus]))
print(json.dumps(load_dataset("msmarco-passage/trec-dl-2019/judged", index="/data/my-index").index))
""", home, tmp_path)
    assert proc.returncode == 0, proc.stderr
    judged, full, given = (json.loads(line) for line in proc.stdout.splitlines())
    assert judged == ["msmarco-passage/trec-dl-2019/judged", 43, 43, 9260, "msmarco-v1-passage", None]
    assert full == ["msmarco-passage/trec-dl-2019", 43, 43, 9260, "msmarco-v1-passage", None]
    assert given == "/data/my-index"


@pytest.mark.parametrize("name,needs", [
    ("vaswani", ["vaswani/npl.tar.gz", "http://ir.dcs.gla.ac.uk/resources/test_collections/npl/npl.tar.gz"]),
    ("beir/scifact/test", ["beir/scifact/source.zip", "BEIR/datasets/scifact.zip"]),
    ("msmarco-passage/trec-dl-2019/judged", ["msmarco-passage/trec-dl-2019/qrels", "2019qrels-pass.txt",
                                             "msmarco-test2019-queries.tsv.gz"]),
])
def test_missing_files_are_named_in_one_line_in_seconds(tmp_path, name, needs):
    home = tmp_path / "irds"
    proc, seconds = _load(f"load_dataset({name!r})", home, tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("radcot.records.OfflineResourceError: dataset " + name)
    for piece in needs:
        assert piece in last
    assert f"{home}/" in last and "md5" in last and "On a connected machine" in last
    assert seconds < 20


def test_export_follows_changes_in_the_ir_datasets_cache(shared_data, tmp_path):
    home = tmp_path / "irds"
    _vaswani_cache(shared_data, home)
    code = 'ds = load_dataset("vaswani", index="/data/idx"); print(len(ds.queries()), ds.corpus)'
    first, _ = _load(code, home, tmp_path)
    assert first.returncode == 0 and first.stdout.split() == ["93", "None"], first.stderr
    with open(home / "vaswani" / "queries.txt", "a", encoding="utf-8") as f:
        f.write("94\nsuperconducting magnets\n/\n")
    again, _ = _load(code, home, tmp_path)
    assert again.returncode == 0 and again.stdout.split() == ["94", "None"], again.stderr


def test_ids_that_are_not_datasets_say_what_would_be(tmp_path):
    proc, _ = _load('load_dataset("no-such-collection/test")', tmp_path / "irds", tmp_path)
    assert "is neither a known name" in proc.stderr and "an ir_datasets id" in proc.stderr
    proc, _ = _load('load_dataset("vaswani", data_dir="/data")', tmp_path / "irds", tmp_path)
    assert "data_dir is for radcot's own MS MARCO names" in proc.stderr
