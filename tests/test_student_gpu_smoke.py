"""bench/gpu_ddp_smoke.py, the one-command GPU check of DDP training, runs end to end on CPU (gloo, --cpu)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sentencepiece", reason="the flan-t5-shaped stand-in's tokenizer needs sentencepiece")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_smoke_script_passes_on_cpu_with_gloo(tmp_path):
    """2 gloo ranks: train (stopped after step 2), checkpoint (world size 2), resume to step 4, generate: 4 PASS
    lines and exit 0. Without a GPU and without --cpu it says so and exits 2."""
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    script = str(REPO / "bench" / "gpu_ddp_smoke.py")
    proc = subprocess.run([sys.executable, script, "--cpu", "--keep", str(tmp_path / "work")], env=env,
                          capture_output=True, text=True, timeout=900)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [ln.split()[:2] for ln in lines if ln.startswith(("PASS", "FAIL"))] == [
        ["PASS", "train"], ["PASS", "checkpoint"], ["PASS", "resume"], ["PASS", "generate"]]
    assert "world_size 2" in proc.stdout and lines[-1].startswith("ALL PASS")
    if not torch.cuda.is_available():
        no_gpu = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=300)
        assert no_gpu.returncode == 2 and "--cpu" in no_gpu.stderr
