"""Cross-version checks: load a saved model with transformers 4.x in a subprocess and compare with 5.x.

transformers 4.57 (with the tokenizers / huggingface_hub versions it requires) is installed from the
package index with ``pip install --target`` into ``~/.cache/radcot-tests/transformers-4.57.6`` once
(``$RADCOT_TEST_CACHE`` overrides the root); every later run reuses it. The rest of its dependencies
(torch, safetensors, numpy, ...) come from the running venv.

Usage (also for students trained elsewhere, e.g. by a pipeline rehearsal)::

    from _xversion import assert_same_logits_across_versions
    assert_same_logits_across_versions(RUN_DIR / "best")      # skips if 4.x cannot be installed
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import pytest

#: transformers 4.x and the versions its METADATA requires (tokenizers<=0.23.0,>=0.22.0; huggingface-hub<1.0)
TRANSFORMERS4 = ("transformers==4.57.6", "tokenizers==0.22.2", "huggingface-hub==0.36.2")

_SCRIPT = r"""
import json, sys, torch, transformers
spec = json.load(open(sys.argv[1]))
out = {"version": transformers.__version__, "logits": []}
for item in spec["items"]:
    m = transformers.T5ForConditionalGeneration.from_pretrained(item["dir"]).eval()
    with torch.no_grad():
        lg = m(input_ids=torch.tensor(item["input_ids"]), decoder_input_ids=torch.tensor(item["decoder_input_ids"])).logits
    out["logits"].append(lg.tolist())
json.dump(out, open(sys.argv[2], "w"))
"""


def cache_root() -> Path:
    return Path(os.environ.get("RADCOT_TEST_CACHE", Path.home() / ".cache" / "radcot-tests"))


def transformers4_target() -> Path:
    """A directory holding transformers 4.57 for ``PYTHONPATH``; installed once, then cached. Skips the calling
    test (with pip's error as the reason) when it cannot be installed."""
    from filelock import FileLock

    target = cache_root() / ("transformers-" + TRANSFORMERS4[0].split("==")[1])
    done = target / ".complete"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done.is_file():
            return target
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *TRANSFORMERS4]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            err = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln] or proc.stderr.splitlines()[-1:]
            pytest.skip(f"cannot install {' '.join(TRANSFORMERS4)} with pip --target: {' | '.join(err)[:400]}")
        done.write_text(" ".join(TRANSFORMERS4) + "\n")
    return target


def logits_with_transformers4(model_dirs, input_ids: Sequence[Sequence[int]],
                              decoder_input_ids: Sequence[Sequence[int]]) -> list:
    """Logits ``(B, T, V)`` (as torch tensors) of ``T5ForConditionalGeneration.from_pretrained(dir)`` under
    transformers 4.57, one per directory (``model_dirs``: a path or a list of paths), in one subprocess."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, os.PathLike)) else list(model_dirs)
    return _run_transformers4([(d, input_ids, decoder_input_ids) for d in dirs])


def _run_transformers4(items) -> list:
    import torch

    target = transformers4_target()
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"items": [{"dir": str(d), "input_ids": [list(r) for r in enc],
                                               "decoder_input_ids": [list(r) for r in dec]} for d, enc, dec in items]}))
        env = dict(os.environ, PYTHONPATH=str(target), TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(spec), str(out)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"transformers 4 subprocess failed:\n{proc.stderr[-3000:]}"
        result = json.loads(out.read_text())
    assert result["version"].startswith("4."), f"the subprocess imported transformers {result['version']}, not 4.x"
    return [torch.tensor(x) for x in result["logits"]]


def logits_with_transformers5(model_dir, input_ids, decoder_input_ids):
    """The same logits computed in this process (transformers 5)."""
    import torch
    import transformers

    m = transformers.T5ForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return m(input_ids=torch.tensor(input_ids), decoder_input_ids=torch.tensor(decoder_input_ids)).logits


def probe_ids(model_dir, seed: int = 0):
    """Deterministic encoder/decoder token ids within the model's vocabulary: ``(input_ids, decoder_input_ids)``."""
    import torch

    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    enc = torch.randint(3, vocab, (2, 12), generator=g)
    dec = torch.cat([torch.zeros(2, 1, dtype=torch.long), torch.randint(3, vocab, (2, 7), generator=g)], 1)
    return enc.tolist(), dec.tolist()


def assert_same_logits_across_versions(model_dirs, atol: float = 1e-4) -> float:
    """Every directory's logits under transformers 4.57 equal those under 5.x within ``atol``; returns the
    largest difference seen."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, os.PathLike)) else list(model_dirs)
    items = [(d, *probe_ids(d)) for d in dirs]
    worst = 0.0
    for (d, enc, dec), old in zip(items, _run_transformers4(items)):
        new = logits_with_transformers5(d, enc, dec)
        diff = float((old - new).abs().max())
        worst = max(worst, diff)
        assert diff <= atol, f"{d}: transformers 4 and 5 logits differ by up to {diff:.3g} (atol {atol})"
    return worst
