"""Launch student training the way a real run is launched: ``torchrun`` when several processes are asked for.

Example:
    >>> from radcot.student.launch import launch_training
    >>> from radcot.student.train import TrainConfig
    >>> launch_training(TrainConfig(data="distill", model="tiny-t5", out="runs/s", nproc_per_node=2))  # doctest: +SKIP
"""
from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from radcot.student.train import (ConfigTypeError, Scorer, TrainConfig, TrainingError, launched_distributed,
                                  train)

logger = logging.getLogger("radcot.student")

#: lines of the launched command's output quoted in the error when it fails
TAIL_LINES = 40


def inside_distributed_launch() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets ``WORLD_SIZE``)."""
    return launched_distributed(os.environ)


def torchrun_command(config_file: str | os.PathLike, nproc: int, *, resume: bool = False, overwrite: bool = False,
                     show_progress: bool | None = None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m radcot train --config FILE ...``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "radcot", "train", "--config", str(config_file)]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    if show_progress is False:
        cmd.append("--no-progress")
    return cmd


def launch_training(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                    show_progress: bool | None = None, scorer: Scorer | None = None) -> Path:
    """Train in this process, or under ``torchrun`` with ``config.nproc_per_node`` processes.

    With ``nproc_per_node > 1`` outside a distributed launch, runs ``torchrun`` (gloo on CPU, NCCL on CUDA:
    chosen by each rank) as a subprocess, streams its output to stderr and waits; otherwise calls
    :func:`radcot.student.train.train` directly.

    Args:
        config: the :class:`~radcot.student.train.TrainConfig`.
        resume: continue from the last checkpoint in ``config.out``.
        overwrite: replace the training run in ``config.out``.
        show_progress: progress bar (default: from the log level).
        scorer: the checkpoint scorer for ``select_by="retrieval"`` when training in this process
            (:func:`radcot.selection.retrieval_scorer`); under torchrun each rank's ``radcot train`` builds its own
            from the config.

    Returns:
        the run directory, ``Path(config.out)``.

    Raises:
        TrainingError: the launched training failed (the message ends with the tail of its output).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigTypeError(f"launch_training() takes a TrainConfig, got {type(config).__name__}: build one with "
                              f"TrainConfig(data=..., model=..., out=...) or TrainConfig.from_dict(mapping)")
    if config.nproc_per_node <= 1 or inside_distributed_launch():
        return train(config, resume=resume, overwrite=overwrite, show_progress=show_progress, scorer=scorer)
    with tempfile.TemporaryDirectory(prefix="radcot-launch-") as tmp:
        cfg_file = Path(tmp) / "train_config.json"
        cfg_file.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        cmd = torchrun_command(cfg_file, config.nproc_per_node, resume=resume, overwrite=overwrite,
                               show_progress=show_progress)
        logger.info("train: launching %d processes: %s", config.nproc_per_node, " ".join(cmd))
        rc, errors, tail = _run_streaming(cmd)
    if rc != 0:
        first = f"; the ranks said: {' | '.join(errors)}" if errors else ""
        raise TrainingError(f"distributed training ({config.nproc_per_node} processes) failed with exit code {rc}"
                            f"{first}; last lines of its output:\n" + "\n".join(tail))
    return Path(config.out)


def _run_streaming(cmd: list[str]) -> tuple[int, list[str], list[str]]:
    """Run ``cmd``, copying its merged stdout/stderr to our stderr line by line.

    Returns:
        ``(exit code, the ranks' one-line radcot errors (distinct, at most 5), the last lines)``.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    errors: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
            if line.startswith("radcot") and "error:" in line and len(errors) < 5 and line.strip() not in errors:
                errors.append(line.strip())
        return proc.wait(), errors, list(tail)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
