"""Shared fixtures: real data from ``$RADCOT_TEST_DATA`` (default ``../shared/data``), tiny real indexes.

Tests that need a collection skip with a reason when it is absent (users' machines do not have it).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    return Path(os.environ.get("RADCOT_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real test collections; skips when absent."""
    root = _shared_data()
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (set RADCOT_TEST_DATA to the shared data folder)")
    return root


def _collection(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"{name} collection not found at {path} (set RADCOT_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def vaswani(shared_data) -> Path:
    """BEIR-layout Vaswani (11,429 docs, 93 queries)."""
    return _collection(shared_data, "vaswani")


@pytest.fixture(scope="session")
def cranfield(shared_data) -> Path:
    """BEIR-layout Cranfield (1,400 docs, 225 queries)."""
    return _collection(shared_data, "cranfield")


@pytest.fixture(scope="session")
def msmarco_dir(shared_data) -> Path:
    path = shared_data / "msmarco-passage"
    if not path.is_dir():
        pytest.skip(f"msmarco-passage topics/qrels not found at {path}")
    return path


@pytest.fixture(scope="session")
def demo_world() -> Path:
    """The embedded synthetic collection shipped in data/demo (BEIR layout + training queries)."""
    path = REPO / "data" / "demo"
    if not (path / "corpus.jsonl").is_file():
        pytest.fail(f"embedded demo collection missing at {path}: run `radcot make-world --out {path}`")
    return path


@pytest.fixture(scope="session")
def cranfield_bm25_index(cranfield, tmp_path_factory) -> Path:
    """A real Lucene index of Cranfield (title+text), built once per session. Copy it before mutating."""
    from radcot.retrieval.bm25 import BM25Retriever

    out = tmp_path_factory.mktemp("idx") / "cranfield-bm25"
    BM25Retriever.build(cranfield, out)
    return out


@pytest.fixture(scope="session")
def vaswani_bm25_index(vaswani, tmp_path_factory) -> Path:
    """A real Lucene index of Vaswani (title+text), built once per session."""
    from radcot.retrieval.bm25 import BM25Retriever

    out = tmp_path_factory.mktemp("idx") / "vaswani-bm25"
    BM25Retriever.build(vaswani, out)
    return out


@pytest.fixture
def copy_dir(tmp_path):
    """Copy a directory into this test's tmp dir (for session-scoped artefacts a test mutates)."""

    def _copy(src: Path) -> Path:
        dst = tmp_path / Path(src).name
        shutil.copytree(src, dst)
        return dst

    return _copy
