"""radcot.student.profile: a student records which passages it reads and how it writes.

Fast tests use index directories that hold only their ``radcot_index.json`` (what identity checks read); the
last test opens a real Lucene index through a profile.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from radcot.student.profile import (PROFILE_FILE, Decoding, IndexRecord, Inference, ProfileError, RetrieverRecord,
                                    StudentProfile, index_identity)


def _index(tmp_path: Path, name: str, kind: str, collection: str, num_docs: int = 100) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "radcot_index.json").write_text(json.dumps({"kind": kind, "collection_fingerprint": collection,
                                                     "num_docs": num_docs, "complete": True}))
    return d


def _checkpoint(tmp_path: Path, n_context: int = 10) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "fid_config.json").write_text(json.dumps({"n_context": n_context, "template": "{query} {passage}"}))
    (d / "model.safetensors").write_bytes(b"weights-v1")
    return d


def _profile(tmp_path: Path, index: Path, kind: str = "dense") -> StudentProfile:
    ckpt = _checkpoint(tmp_path)
    rec = RetrieverRecord(kind, (IndexRecord(kind, str(index), index_identity(index)),), {})
    return StudentProfile(ckpt, ckpt, rec, Inference(50, Decoding(max_new_tokens=64, no_repeat_ngram_size=3)))


@pytest.mark.fast
def test_round_trip_keeps_every_setting(tmp_path):
    idx = _index(tmp_path, "dense", "dense", "abc")
    p = _profile(tmp_path, idx)
    p.save()
    q = StudentProfile.load(p.directory)
    assert q == p and q.recorded
    assert q.inference.decoding.generate_kwargs() == {"max_new_tokens": 64, "num_beams": 1, "no_repeat_ngram_size": 3}
    assert StudentProfile.load(p.directory / PROFILE_FILE) == p  # the file itself


@pytest.mark.fast
def test_a_profile_elsewhere_points_at_its_checkpoint(tmp_path):
    idx = _index(tmp_path, "dense", "dense", "abc")
    p = _profile(tmp_path, idx)
    row = tmp_path / "students" / "radcot"
    p.save(row)
    q = StudentProfile.load(row)
    assert q.directory == row and q.checkpoint == p.checkpoint.resolve()
    assert json.loads((row / PROFILE_FILE).read_text())["checkpoint"] == str(p.checkpoint.resolve())


@pytest.mark.fast
def test_run_dir_resolves_to_best(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text("{}")
    assert StudentProfile.load(run).checkpoint == run / "best"


@pytest.mark.fast
def test_a_student_given_by_a_relative_path_is_its_own_checkpoint(tmp_path, monkeypatch):
    """`radcot generate --student student` (a relative run directory) looked for its weights in
    student/best/student/best: the profile's own directory was joined to itself."""
    p = _profile(tmp_path, _index(tmp_path, "dense", "dense", "abc"))
    p.save()
    run = tmp_path / "run"
    run.mkdir()
    p.checkpoint.rename(run / "best")
    monkeypatch.chdir(tmp_path)
    assert StudentProfile.load("run").checkpoint == Path("run") / "best"
    assert StudentProfile.load(Path("run") / "best").checkpoint == Path("run") / "best"
    assert StudentProfile.load(Path("run") / "best" / PROFILE_FILE).checkpoint == Path("run") / "best"


@pytest.mark.fast
def test_checkpoint_without_profile_is_unrecorded(tmp_path):
    p = StudentProfile.load(_checkpoint(tmp_path, n_context=7))
    assert not p.recorded and p.retriever is None and p.inference.n_context == 7
    assert p.inference.decoding == Decoding()


@pytest.mark.fast
def test_given_index_of_another_kind_is_refused(tmp_path):
    p = _profile(tmp_path, _index(tmp_path, "dense", "dense", "abc"))
    bm25 = _index(tmp_path, "bm25", "bm25", "abc")
    with pytest.raises(ProfileError, match="it is a bm25 index, the student read a dense index"):
        p.open_retriever(bm25)


@pytest.mark.fast
def test_given_index_of_another_collection_is_refused(tmp_path):
    p = _profile(tmp_path, _index(tmp_path, "dense", "dense", "abc"))
    other = _index(tmp_path, "other", "dense", "xyz")
    with pytest.raises(ProfileError, match="collection_fingerprint is 'xyz'.*force"):
        p.open_retriever(other)


@pytest.mark.fast
def test_recorded_index_gone_names_it(tmp_path):
    idx = _index(tmp_path, "dense", "dense", "abc")
    p = _profile(tmp_path, idx)
    (idx / "radcot_index.json").unlink()
    idx.rmdir()
    with pytest.raises(ProfileError, match="no\\s+longer exists"):
        p.open_retriever()


@pytest.mark.fast
def test_malformed_profiles_name_the_file(tmp_path):
    ckpt = _checkpoint(tmp_path)
    (ckpt / PROFILE_FILE).write_text('{"format": 1, "inference": {"n_context": 0}}')
    with pytest.raises(ProfileError, match=f"{PROFILE_FILE}.*n_context must be an integer >= 1"):
        StudentProfile.load(ckpt)
    (ckpt / PROFILE_FILE).write_text('{"format": 99}')
    with pytest.raises(ProfileError, match="format 1"):
        StudentProfile.load(ckpt)
    with pytest.raises(ProfileError, match="holds no trained student"):
        StudentProfile.load(tmp_path)


@pytest.mark.fast
def test_fingerprint_changes_with_weights_and_settings(tmp_path):
    p = _profile(tmp_path, _index(tmp_path, "dense", "dense", "abc"))
    a = p.fingerprint()
    assert p.replace(inference=Inference(50, Decoding(max_new_tokens=65))).fingerprint() != a
    (p.checkpoint / "model.safetensors").write_bytes(b"weights-v2")
    assert p.fingerprint() != a


def test_opens_the_recorded_bm25_index_with_its_settings(cranfield_bm25_index, tmp_path):
    from radcot.retrieval import load_retriever

    rec = RetrieverRecord.of(load_retriever(cranfield_bm25_index, k1=1.2, b=0.75))
    assert rec.kind == "bm25" and rec.params == {"k1": 1.2, "b": 0.75}
    ckpt = _checkpoint(tmp_path)
    StudentProfile(ckpt, ckpt, rec, Inference(10)).save()
    r = StudentProfile.load(ckpt).open_retriever()
    assert r.kind == "bm25" and (r.config["k1"], r.config["b"]) == (1.2, 0.75)
    assert r.search("boundary layer", k=3)
