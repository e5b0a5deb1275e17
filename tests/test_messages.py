"""Error messages name what exists: every command, flag and --set key they suggest is real.

The offline errors are triggered for real (HF_HUB_OFFLINE with an empty cache, a missing MS MARCO
directory, a missing prebuilt index, the preflight), then every `radcot CMD --flag`, `--set key=` and `hf`
suggestion in them is checked against the real argparse parsers, the config schema and the `hf` CLI.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from radcot.records import RadcotError

REPO = Path(__file__).resolve().parent.parent
_RADCOT = re.compile(r"radcot ([a-z][a-z-]*)((?:\s+(?:--[a-z][a-z-]*|[A-Z_]+|PATH|DIR|\{[^}]*\}))*)")
_SET = re.compile(r"--set ([A-Za-z_][\w.-]*)=")


def _help(capsys, command: str) -> str:
    from radcot.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0, command
    return capsys.readouterr().out


def _check_radcot_commands(message: str, capsys) -> int:
    from radcot.cli import COMMANDS

    n = 0
    for m in _RADCOT.finditer(message):
        command = m.group(1)
        assert command in COMMANDS, f"message suggests `radcot {command}`, which does not exist: {message}"
        flags = re.findall(r"--[a-z][a-z-]*", m.group(2))
        text = _help(capsys, command)
        for flag in flags:
            assert re.search(rf"{flag}\b", text), f"`radcot {command}` has no {flag} (suggested in: {message})"
        n += 1
    return n


def _check_set_keys(message: str) -> int:
    """Each ``--set key=`` names a key the DL configs accept (schema sections, rows by name, their params)."""
    from radcot.experiment.config import apply_overrides, load_config
    from radcot.experiment.schema import RESERVED_PARAMS, config_problems

    n = 0
    dl19 = load_config(REPO / "pipelines" / "trec-dl-2019.yaml")
    for key in _SET.findall(message):
        key = key.replace(".ROW.", ".radcot-small.")
        if key.startswith("params."):
            assert key.split(".", 1)[1] in {**dl19["params"], **RESERVED_PARAMS}, f"--set {key}: the DL configs have no such param"
        else:
            cfg = apply_overrides(dl19, [f"{key}=/some/dir"])
            cfg = {**cfg, "params": {}, "dataset": {"path": "x"}, "teacher_eval": None,
                   "training_queries": {"mode": "split"}, "teacher": {"backend": "replay"}}
            problems = [p for p in config_problems(cfg) if "unknown key" in p or "Input should" in p]
            assert not problems, f"--set {key} is not a config key: {problems}"
        n += 1
    return n


def _check_hf(message: str) -> int:
    if "hf download" not in message:
        return 0
    assert "huggingface-cli" not in message
    hf = shutil.which("hf") or str(Path(sys.executable).parent / "hf")
    out = subprocess.run([hf, "download", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--local-dir" in out.stdout
    return 1


def _check(message: str, capsys) -> int:
    assert "--data-dir" not in message and "huggingface-cli" not in message
    return _check_radcot_commands(message, capsys) + _check_set_keys(message) + _check_hf(message)


def test_offline_student_model_message(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    from radcot.student.model import FiDStudent

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(RadcotError) as e:
        FiDStudent.from_pretrained("google/flan-t5-small")
    msg = str(e.value)
    assert "hf download google/flan-t5-small --local-dir DIR" in msg
    assert _check(msg, capsys) >= 3


@pytest.mark.fast
def test_missing_msmarco_dir_message(tmp_path, capsys):
    from radcot.data.registry import load_dataset

    with pytest.raises(RadcotError) as e:
        load_dataset("msmarco-passage/trec-dl-2019", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "--set params.msmarco_dir=DIR" in msg and "--set params.index=INDEX_DIR" in msg
    assert _check(msg, capsys) >= 3


@pytest.mark.java
def test_missing_prebuilt_index_message(capsys):
    from radcot.data.registry import resolve_index
    from radcot.net import network_timeout

    with pytest.raises(RadcotError) as e, network_timeout(10):
        resolve_index("no-such-prebuilt-index-v9")
    msg = str(e.value)
    assert "--set params.index=DIR" in msg
    assert _check(msg, capsys) >= 2


@pytest.mark.fast
def test_preflight_and_schema_messages(demo_world, tmp_path, monkeypatch, capsys):
    from radcot.pipeline import Pipeline, PipelineError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    p = Pipeline.from_yaml(REPO / "pipelines" / "trec-dl-2019.yaml",
                           ["dataset.name=null", f"dataset.path={demo_world}", "dataset.index=nowhere/index",
                            "training_queries.queries=null", "rows=[{name: bm25}, {name: radcot-small, student: "
                            "{model: google/flan-t5-small}}]", "teacher.backend=kb", f"teacher.args={{world: {demo_world}}}"])
    problems = p.check()
    assert len(problems) == 2, problems
    assert sum(_check(m, capsys) for m in problems) >= 4
    with pytest.raises(PipelineError) as e:
        Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", ["dataset.pth=x"])
    assert "did you mean 'path'" in str(e.value)
