"""Training: falling loss on real data, exact resume, config checks (DDP: tests/test_student_ddp.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]


def test_training_loss_falls_and_best_is_kept(trained_student):
    """40 CPU steps of a tiny FiD on Cranfield (BM25 top-3 + stand-in CoTs): the loss must fall clearly."""
    from radcot.student.model import FiDStudent
    from radcot.student.train import list_checkpoints, read_metrics

    train_rows = read_metrics(trained_student, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 41))
    first = sum(r["loss"] for r in train_rows[:5]) / 5
    last = sum(r["loss"] for r in train_rows[-5:]) / 5
    print(f"train loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last < 0.85 * first
    evals = read_metrics(trained_student, "eval")
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["dev_loss"] < evals[0]["dev_loss"]
    best = json.loads((trained_student / "best" / "fid_config.json").read_text())
    assert best["best"]["metric"] == "rougeL" and best["best"]["step"] in (20, 40)
    assert [s for s, _ in list_checkpoints(trained_student)] == [20, 40]
    assert (trained_student / "metrics.csv").read_text().startswith("kind,step,epoch,loss")
    assert len((trained_student / "eval" / "step-40.jsonl").read_text().splitlines()) == 16
    FiDStudent.from_pretrained(trained_student / "best")  # loads


def _small_config(data, model, out, **kw):
    from radcot.student.train import TrainConfig

    base = dict(data=str(data), model=str(model), out=str(out), max_steps=10, batch_size=4, grad_accum=2, lr=1e-3,
                scheduler="linear", warmup_steps=2, text_maxlength=64, target_maxlength=48, save_every=3,
                eval_every=0, eval_max_new_tokens=8, eval_max_examples=4, log_every=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "step-10" / "model.safetensors"))


def test_resume_is_exact(cranfield_distill, tiny_t5, tmp_path):
    """Killed after step 7 (last checkpoint: 6), resumed: every loss up to step 10 and the final weights are
    identical to an uninterrupted run (optimizer, linear schedule, dropout RNG and data order restored)."""
    from radcot.student.train import list_checkpoints, read_metrics, train

    a = train(_small_config(cranfield_distill, tiny_t5, tmp_path / "a"), show_progress=False)
    b_cfg = _small_config(cranfield_distill, tiny_t5, tmp_path / "b")
    train(b_cfg, show_progress=False, stop_after=7)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [3, 6]
    assert not (tmp_path / "b" / "best").exists()
    train(b_cfg, resume=True, show_progress=False)
    la = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(a, "train")]
    lb = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(tmp_path / "b", "train")]
    assert [s for s, _, _ in lb] == list(range(1, 11))  # step 7 logged once (the killed run's row dropped)
    assert la == lb
    # the linear schedule, by hand: lr 1e-3, 2 warm-up steps, 10 steps; the row of step s shows the lr that step
    # used, 1e-3 * min((s) / 2, (10 - (s - 1)) / (10 - 2))
    expected = [0.5e-3, 1e-3, 1e-3, 7 / 8 * 1e-3, 6 / 8 * 1e-3, 5 / 8 * 1e-3, 4 / 8 * 1e-3, 3 / 8 * 1e-3, 2 / 8 * 1e-3,
                1 / 8 * 1e-3]
    assert [r[2] for r in la] == pytest.approx(expected, rel=1e-9)
    wa, wb = _weights(a), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a different seed really changes the losses (the comparison above can fail)
    c = train(_small_config(cranfield_distill, tiny_t5, tmp_path / "c", seed=4, max_steps=3), show_progress=False)
    assert [r["loss"] for r in read_metrics(c, "train")] != [x[1] for x in la[:3]]


def test_lr_schedule_values():
    """Linear warm-up then linear decay to 0 at max_steps (or constant), at hand-derived steps."""
    from radcot.student.train import TrainConfig, _lr_lambda

    f = _lr_lambda(TrainConfig(data="d", model="m", out="o", max_steps=10, warmup_steps=4, scheduler="linear"))
    # warm-up: (step + 1) / 4; then (10 - step) / (10 - 4)
    assert [f(s) for s in (0, 1, 3, 4, 7, 9, 10)] == pytest.approx([0.25, 0.5, 1.0, 1.0, 0.5, 1 / 6, 0.0])
    g = _lr_lambda(TrainConfig(data="d", model="m", out="o", max_steps=10, warmup_steps=2, scheduler="constant"))
    assert [g(s) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    h = _lr_lambda(TrainConfig(data="d", model="m", out="o", max_steps=4, scheduler="linear"))
    assert [h(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_bf16_on_cpu_falls_back_to_fp32_and_says_so(cranfield_distill, tiny_t5, tmp_path, caplog):
    import logging

    from radcot.student.train import train

    with caplog.at_level(logging.INFO, logger="radcot.student"):
        run = train(_small_config(cranfield_distill, tiny_t5, tmp_path / "p", max_steps=1, precision="bf16",
                                  device="cpu"), show_progress=False)
    info = json.loads((run / "device.json").read_text())
    assert info["precision"] == "fp32" and info["precision_asked"] == "bf16" and info["device"] == "cpu"
    assert "falling back to fp32" in caplog.text and "device cpu" in caplog.text
    assert json.loads((run / "best" / "fid_config.json").read_text())["precision"] == "fp32"


def test_resume_checks_the_run_directory(cranfield_distill, tiny_t5, tmp_path):
    from radcot.student.train import TrainingError, train

    cfg = _small_config(cranfield_distill, tiny_t5, tmp_path / "r", max_steps=2)
    train(cfg, show_progress=False)
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg, show_progress=False)
    with pytest.raises(TrainingError, match="lr: 0.001 in the run, 0.002 now"):
        train(_small_config(cranfield_distill, tiny_t5, tmp_path / "r", max_steps=2, lr=2e-3), resume=True)
    # finished run + resume: nothing to do
    assert train(cfg, resume=True, show_progress=False) == tmp_path / "r"


def test_train_config_validates_and_round_trips(tmp_path):
    from radcot.student.train import TrainConfig

    with pytest.raises(ValueError, match="scheduler"):
        TrainConfig(data="d", model="m", out="o", scheduler="cosine")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(data="d", model="m", out="o", batch_size=0)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"data": "d", "model": "m", "out": "o", "learning_rate": 1})
    cfg = TrainConfig(data="d", model="m", out="o", lr=3e-4)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_file(tmp_path / "c.json", max_steps=7) == TrainConfig(data="d", model="m", out="o",
                                                                                   lr=3e-4, max_steps=7)


@pytest.mark.slow
def test_cli_training_killed_with_sigkill_resumes_exactly(cranfield_distill, tiny_t5, tmp_path):
    """`radcot train` killed with SIGKILL after its step-6 checkpoint, then `--resume`d: the losses of every
    step and the final weights equal those of an uninterrupted `radcot train` (both one thread)."""
    import signal
    import time

    from radcot.student.train import list_checkpoints, read_metrics

    cfg = _small_config(cranfield_distill, tiny_t5, "unused", max_steps=30, save_every=3).to_dict()
    cfg.pop("out")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "radcot", "train", "--config", str(tmp_path / "cfg.json"), "--no-progress"]

    full = subprocess.run(cmd + ["--out", str(tmp_path / "full")], env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-6").is_dir():
        assert proc.poll() is None, "training ended before its step-6 checkpoint"
        assert time.time() < deadline, "no step-6 checkpoint after 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    steps_at_kill = [s for s, _ in list_checkpoints(killed)]
    assert max(steps_at_kill) < 30 and not (killed / "best").exists(), "the kill came too late to test anything"

    resumed = subprocess.run(cmd + ["--out", str(killed), "--resume"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    la = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full", "train")]
    lb = [(r["step"], r["loss"]) for r in read_metrics(killed, "train")]
    assert [s for s, _ in lb] == list(range(1, 31))
    assert la == lb
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "checkpoints" / "step-30" / "model.safetensors"))
    wb = load_file(str(killed / "checkpoints" / "step-30" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_tensorboard_scalars_match_metrics_jsonl(trained_student):
    """With radcot[tensorboard] installed, the run's event file holds the same train losses and dev ROUGE-L."""
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install radcot[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from radcot.student.train import read_metrics

    acc = EventAccumulator(str(trained_student / "tensorboard"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in read_metrics(trained_student, "train")]
    rouge = [(e.step, e.value) for e in acc.Scalars("eval/rougeL")]
    assert rouge == [(r["step"], pytest.approx(r["rougeL"], rel=1e-6)) for r in read_metrics(trained_student, "eval")]


@pytest.mark.parametrize("template,words", [
    ("question: {query} context: {passage}", "question: wing context: flow"),
    (None, 'Answer the following question "wing" based on the given passage. flow Give the rationale')])
def test_a_tiny_spec_tokenizer_learns_the_template_words(cranfield_distill, tmp_path, template, words):
    """The template's own words ("question:", "context:"; the paper's default when none is given) get pieces of
    their own, not ~5 each in every input."""
    from transformers import AutoTokenizer

    from radcot.student.train import train

    config = _small_config(cranfield_distill, "tiny-t5:d_model=32,layers=1,heads=2,d_ff=64,vocab_size=2000",
                           tmp_path / "run", max_steps=1, template=template)
    tok = AutoTokenizer.from_pretrained(train(config, show_progress=False) / "init-model")
    template_words = [w for w in words.split() if w not in ('"wing"', "wing", "flow")]
    pieces = [p for p in tok.tokenize(words) if p.strip("▁").isalpha() and p.strip("▁") not in ("wing", "flow")]
    assert pieces == ["▁" + w.strip(':."') for w in template_words], pieces
