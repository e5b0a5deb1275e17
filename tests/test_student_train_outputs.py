"""What a training run leaves behind, and what it refuses: --overwrite, runs that saved nothing, damaged checkpoints
on --resume, a full disk during a save, n_context beyond the data, the student profile at every save, the optimizer's
weight-decay groups, and argument types at the API boundary."""
from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)
from _student_fixtures import K

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]


def _config(data, model, out, **kw):
    from radcot.student.train import TrainConfig

    base = dict(data=str(data), model=str(model), out=str(out), max_steps=2, batch_size=2, lr=1e-3, text_maxlength=32,
                target_maxlength=16, eval_every=0, eval_max_examples=2, eval_max_new_tokens=4, save_every=1,
                log_every=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    """``radcot ARGV`` in this process: exit code and the ``radcot train: error:`` lines."""
    from radcot.cli import main

    rc = main(list(argv))
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]


def _flags(data, model, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--model", str(model), "--out", str(out), "--steps", "2", "--batch-size",
            "2", "--text-maxlength", "32", "--target-maxlength", "16", "--eval-max-examples", "2",
            "--eval-max-new-tokens", "4", "--save-every", "1", "--no-progress", *extra]


# ------------------------------------------------------------------------------------------ --overwrite


def test_overwrite_replaces_only_a_training_run(cranfield_distill, tiny_t5, tmp_path, capsys):
    """A finished run blocks its --out until --overwrite, which starts over with the new settings and leaves files
    radcot did not write; a directory radcot did not write is refused even with --overwrite."""
    from radcot.student.train import read_metrics

    out = tmp_path / "run"
    assert _cli(capsys, *_flags(cranfield_distill, tiny_t5, out)) == (0, [])
    (out / "notes.txt").write_text("mine")
    rc, err = _cli(capsys, *_flags(cranfield_distill, tiny_t5, out, "--lr", "2e-3"))
    assert rc == 1 and len(err) == 1 and "--overwrite" in err[0] and "--resume" in err[0]
    assert _cli(capsys, *_flags(cranfield_distill, tiny_t5, out, "--lr", "2e-3", "--overwrite")) == (0, [])
    assert json.loads((out / "train_config.json").read_text())["lr"] == 2e-3
    assert [r["step"] for r in read_metrics(out, "train")] == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("x")
    rc, err = _cli(capsys, *_flags(cranfield_distill, tiny_t5, foreign, "--overwrite"))
    assert rc == 1 and "radcot did not write" in err[0] and "not even with --overwrite" in err[0]
    with pytest.raises(SystemExit) as ex:
        _cli(capsys, *_flags(cranfield_distill, tiny_t5, out, "--overwrite", "--resume"))
    assert ex.value.code == 2


def test_a_run_that_saved_nothing_does_not_pin_its_config(cranfield_distill, tiny_t5, tmp_path, caplog):
    """A run stopped before its first checkpoint: a new run with other settings starts over there (logged), with
    or without resume; a run with a checkpoint still needs --resume or --overwrite."""
    import logging

    from radcot.student.train import TrainingError, list_checkpoints, read_metrics, train

    out = tmp_path / "run"
    train(_config(cranfield_distill, tiny_t5, out, max_steps=4, save_every=10), show_progress=False, stop_after=1)
    assert (out / "train_config.json").is_file() and not list_checkpoints(out)
    with caplog.at_level(logging.INFO, logger="radcot.student"):
        train(_config(cranfield_distill, tiny_t5, out, lr=5e-4), show_progress=False)
    assert "saved no checkpoint" in caplog.text and "starting over" in caplog.text
    assert json.loads((out / "train_config.json").read_text())["lr"] == 5e-4
    assert [r["step"] for r in read_metrics(out, "train")] == [1, 2]
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(_config(cranfield_distill, tiny_t5, out, lr=1e-4), show_progress=False)


# ------------------------------------------------------------------------------------------ damaged checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated-weights", "truncated-state", "missing-state"])
def test_resume_skips_a_damaged_checkpoint_and_says_so(cranfield_distill, tiny_t5, tmp_path, caplog, damage):
    """Killed after step 5 (checkpoints 2 and 4), step-4 then damaged: --resume names it in one warning, moves it
    aside and resumes exactly from step-2 (losses equal an uninterrupted run's); never silently from scratch."""
    import logging

    from radcot.student.train import read_metrics, train

    kw = dict(max_steps=6, save_every=2, batch_size=2, grad_accum=1)
    ref = train(_config(cranfield_distill, tiny_t5, tmp_path / "ref", **kw), show_progress=False)
    out = tmp_path / "run"
    train(_config(cranfield_distill, tiny_t5, out, **kw), show_progress=False, stop_after=5)
    step4 = out / "checkpoints" / "step-4"
    {"truncated-weights": lambda: _truncate(step4 / "model.safetensors"),
     "truncated-state": lambda: _truncate(step4 / "trainer_state.pt"),
     "missing-state": lambda: (step4 / "trainer_state.pt").unlink()}[damage]()
    with caplog.at_level(logging.INFO, logger="radcot.student"):
        train(_config(cranfield_distill, tiny_t5, out, **kw), resume=True, show_progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(step4) in warnings[0] and "resuming from step-2" in warnings[0]
    assert (out / "checkpoints" / "step-4.damaged").is_dir()
    assert [(r["step"], r["loss"]) for r in read_metrics(out, "train")] == \
        [(r["step"], r["loss"]) for r in read_metrics(ref, "train")]


def test_resume_with_no_intact_checkpoint_is_an_error(cranfield_distill, tiny_t5, tmp_path):
    from radcot.student.train import TrainingError, train

    out = tmp_path / "run"
    cfg = _config(cranfield_distill, tiny_t5, out, max_steps=4, save_every=2)
    train(cfg, show_progress=False, stop_after=3)
    _truncate(out / "checkpoints" / "step-2" / "model.safetensors")
    with pytest.raises(TrainingError, match=r"nothing to resume in .*step-2: model.safetensors is truncated.*"
                                            r"--overwrite"):
        train(cfg, resume=True, show_progress=False)


# ------------------------------------------------------------------------------------------ a full disk


def _file_size_limit(limit: int):
    """For ``preexec_fn``: files this process writes may not exceed ``limit`` bytes. With SIGXFSZ ignored, a write
    past the limit fails with EFBIG ("File too large"), as a full disk fails with ENOSPC."""

    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_failed_save_is_one_line_and_the_previous_checkpoint_stays(cranfield_distill, tiny_t5, tmp_path):
    """`radcot train --resume` under a 64 KiB file-size limit (the tiny model's weights are ~0.8 MB): the step-4
    save fails; one line names it, the reason and the intact step-2; no temp dir is left; resuming without the
    limit then finishes (dev evaluation, and best/, only at step 6)."""
    from radcot.student.model import FiDStudent
    from radcot.student.train import list_checkpoints, train

    out = tmp_path / "run"
    cfg = _config(cranfield_distill, tiny_t5, out, max_steps=6, save_every=2)
    train(cfg, show_progress=False, stop_after=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "radcot", "train", "--data", str(cranfield_distill), "--model", str(tiny_t5),
           "--out", str(out), "--steps", "6", "--batch-size", "2", "--lr", "1e-3", "--text-maxlength", "32",
           "--target-maxlength", "16", "--eval-every", "0", "--eval-max-examples", "2", "--eval-max-new-tokens", "4",
           "--save-every", "2", "--log-every", "1", "--seed", "3", "--resume", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=_file_size_limit(64 * 1024))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("radcot train: error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert f"could not write {out / 'checkpoints' / 'step-4'} (" in errors[0]
    assert "File too large" in errors[0] and "file-size limit" in errors[0] and "MiB free" in errors[0]
    assert f"the previous checkpoint {out / 'checkpoints' / 'step-2'} is intact" in errors[0]
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    FiDStudent.from_pretrained(out / "checkpoints" / "step-2")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(out)] == [4, 6] and (out / "best").is_dir()


# ------------------------------------------------------------------------------------------ n_context


def test_n_context_beyond_the_data_is_refused(cranfield_distill, tiny_t5, tmp_path, capsys):
    """Data built with k=3: n_context 50 would train on 3 passages and 47 empty slots and record 50; refused before
    anything is written (API and CLI), with both fixes. Fewer passages than k are fine."""
    from radcot.student.train import TrainingError, train

    with pytest.raises(TrainingError, match=rf"n_context 50 is more than the {K} passages.*--k 50.*--n-context {K}"):
        train(_config(cranfield_distill, tiny_t5, tmp_path / "api", n_context=50, max_steps=1))
    assert not (tmp_path / "api").exists()
    rc, err = _cli(capsys, *_flags(cranfield_distill, tiny_t5, tmp_path / "cli", "--n-context", "50"))
    assert rc == 1 and len(err) == 1 and err[0].startswith("radcot train: error: n_context 50")
    run = train(_config(cranfield_distill, tiny_t5, tmp_path / "two", n_context=2, max_steps=1), show_progress=False)
    assert json.loads((run / "best" / "fid_config.json").read_text())["n_context"] == 2


# ------------------------------------------------------------------------------------------ the student profile


def test_every_checkpoint_carries_the_student_profile(cranfield_distill, cranfield_bm25_index, tiny_t5, tmp_path,
                                                      copy_dir):
    """step-N/ and best/ hold radcot_student.json: the data's recorded retriever, inference with the training
    n_context, eval_max_new_tokens and select_formula; data without the record gives retriever null."""
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.student.profile import Decoding, Inference, RetrieverRecord, StudentProfile
    from radcot.student.train import train

    data = copy_dir(cranfield_distill)
    record = RetrieverRecord.of(BM25Retriever(cranfield_bm25_index))
    meta = json.loads((data / "radcot_data.json").read_text())
    (data / "radcot_data.json").write_text(json.dumps({**meta, "student_retriever": record.to_dict()}))
    run = train(_config(data, tiny_t5, tmp_path / "run", eval_max_new_tokens=5, select_formula="query2doc"),
                show_progress=False)
    for d in (run / "checkpoints" / "step-1", run / "checkpoints" / "step-2", run / "best"):
        p = StudentProfile.load(d)
        assert p.recorded and p.checkpoint == d and p.retriever == record
        assert p.inference == Inference(n_context=K, decoding=Decoding(max_new_tokens=5), formula="query2doc")
    decoded = train(_config(data, tiny_t5, tmp_path / "decoded", max_steps=1,
                            decoding={"max_new_tokens": 7, "no_repeat_ngram_size": 3}), show_progress=False)
    assert StudentProfile.load(decoded / "best").inference.decoding == Decoding(max_new_tokens=7, no_repeat_ngram_size=3)
    older = Path(shutil.copytree(cranfield_distill, tmp_path / "older-data"))  # data built before the record existed
    (older / "radcot_data.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "student_retriever"}))
    plain = train(_config(older, tiny_t5, tmp_path / "plain", max_steps=1), show_progress=False)
    p = StudentProfile.load(plain / "best")
    assert p.recorded and p.retriever is None and p.inference.n_context == K


# ------------------------------------------------------------------------------------------ weight decay


def test_weight_decay_groups(untied_t5):
    """Default: layer norms (and biases) exempt, exactly the rule radcot always used; [] decays every parameter as
    the official code (AdamW(model.parameters(), weight_decay=...))."""
    import transformers

    from radcot.student.train import NO_DECAY_DEFAULT, TrainConfig, decay_groups

    t5 = transformers.T5ForConditionalGeneration.from_pretrained(untied_t5)
    names = {id(p): n for n, p in t5.named_parameters()}
    default = decay_groups(t5.named_parameters(), 0.1, TrainConfig(data="d", model="m", out="o").weight_decay_exclude)
    assert [g["weight_decay"] for g in default] == [0.1, 0.0]
    exempt = {names[id(p)] for p in default[1]["params"]}
    assert exempt == {n for n in names.values() if "layer_norm" in n or n.endswith(".bias")} and exempt
    assert list(NO_DECAY_DEFAULT) == ["layer_norm", ".bias"]
    everything = decay_groups(t5.named_parameters(), 0.1, [])
    assert len(everything) == 1 and len(everything[0]["params"]) == len(names)


def test_official_decay_reaches_the_optimizer_and_old_runs_resume(cranfield_distill, tiny_t5, tmp_path):
    """weight_decay_exclude=[]: the saved optimizer has one group, every parameter decayed; a run whose
    train_config.json predates the field resumes (it ran with the default)."""
    from radcot.student.train import train

    run = train(_config(cranfield_distill, tiny_t5, tmp_path / "official", max_steps=1, weight_decay_exclude=[]),
                show_progress=False)
    groups = torch.load(run / "checkpoints" / "step-1" / "trainer_state.pt", weights_only=False)["optimizer"][
        "param_groups"]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1
    cfg = _config(cranfield_distill, tiny_t5, tmp_path / "old", max_steps=2)
    train(cfg, show_progress=False, stop_after=1)
    saved = json.loads((tmp_path / "old" / "train_config.json").read_text())
    del saved["weight_decay_exclude"]
    (tmp_path / "old" / "train_config.json").write_text(json.dumps(saved))
    train(cfg, resume=True, show_progress=False)


# ------------------------------------------------------------------------------------------ types at the boundary


@pytest.mark.fast
@pytest.mark.parametrize("field,value,words", [
    ("data", None, "TrainConfig.data must be a string, got None"),
    ("lr", "1e-4", "TrainConfig.lr must be a number, got '1e-4' (str); write the number without quotes"),
    ("max_steps", 2.5, "TrainConfig.max_steps must be an integer, got 2.5"),
    ("max_steps", True, "TrainConfig.max_steps must be an integer, got True"),
    ("log_examples", "yes", "TrainConfig.log_examples must be true or false"),
    ("n_context", "5", "TrainConfig.n_context must be an integer or None, got '5' (str); write the number"),
    ("weight_decay_exclude", "layer_norm", "must be a list of strings, got 'layer_norm' (str); write a list"),
])
def test_train_config_field_types(field, value, words):
    from radcot.records import RadcotError
    from radcot.student.train import TrainConfig

    with pytest.raises(TypeError) as err:
        TrainConfig(**{"data": "d", "model": "m", "out": "o", field: value})
    assert words in str(err.value) and isinstance(err.value, RadcotError)


@pytest.mark.fast
def test_config_files_and_train_arguments_are_typed(tmp_path):
    """YAML reads 1e-4 (no dot) as text: a number field takes it as the number; a word in a number field is an
    error naming the field; train() checks its own arguments."""
    from radcot.student.train import ConfigTypeError, TrainConfig, train

    paths = TrainConfig(data=tmp_path / "d", model="m", out=tmp_path / "o", select_by="retrieval",
                        select_index=tmp_path / "i", select_qrels=tmp_path / "q")
    assert all(isinstance(v, str) for k, v in paths.to_dict().items() if k in ("data", "out", "select_index"))
    (tmp_path / "c.yaml").write_text("data: d\nmodel: m\nout: o\nlr: 1e-4\nweight_decay_exclude: []\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yaml")
    assert cfg.lr == 1e-4 and cfg.weight_decay_exclude == []
    (tmp_path / "bad.yaml").write_text("data: d\nmodel: m\nout: o\nmax_steps: ten\n")
    with pytest.raises(ConfigTypeError, match="TrainConfig.max_steps must be an integer, got 'ten'"):
        TrainConfig.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ConfigTypeError, match="train\\(\\) takes a TrainConfig, got dict.*from_dict"):
        train({"data": "d", "model": "m", "out": "o"})
    with pytest.raises(ConfigTypeError, match="resume must be True or False, got 'yes'"):
        train(cfg, resume="yes")
    with pytest.raises(ConfigTypeError, match="scorer must be a callable"):
        train(cfg, scorer=5)
    from radcot.student.launch import launch_training

    with pytest.raises(ConfigTypeError, match="launch_training\\(\\) takes a TrainConfig, got dict"):
        launch_training({"data": "d", "model": "m", "out": "o", "nproc_per_node": 2})


# ------------------------------------------------------------------------------------------ stdout


def test_dev_evaluation_lines_go_to_stderr_not_stdout(cranfield_distill, tiny_t5, tmp_path, capfd):
    """``step N: dev loss ...`` is progress: on stderr, so ``radcot run``'s stdout holds only its table."""
    from radcot.student.train import train

    train(_config(cranfield_distill, tiny_t5, tmp_path / "run", max_steps=2, eval_every=1), show_progress=False)
    out, err = capfd.readouterr()
    assert "dev loss" not in out
    assert "step 1: dev loss" in err and "step 2: dev loss" in err
