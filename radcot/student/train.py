"""Train a FiD student on distillation data: resumable exactly, DDP under ``torchrun``, best checkpoint kept.

A run directory holds everything a run produced::

    RUN_DIR/train_config.json       the TrainConfig (checked on resume)
    RUN_DIR/init-model/             the model a builder spec made (``model="tiny-t5..."``; radcot.student.hooks)
    RUN_DIR/checkpoints/step-N/     weights (safetensors, HF format) + fid_config.json + trainer_state.pt
                                    (optimizer, scheduler, grad scaler, every rank's RNG, data position)
    RUN_DIR/best/                   the checkpoint with the best dev ROUGE-L (or dev loss): load with
                                    FiDStudent.from_pretrained(RUN_DIR / "best")
    RUN_DIR/metrics.jsonl, .csv     one row per logged train step and per evaluation
    RUN_DIR/tensorboard/            the same scalars for TensorBoard (when ``radcot[tensorboard]`` is installed)
    RUN_DIR/device.json             the device and precision used, and why
    RUN_DIR/eval/step-N.jsonl       the dev generations of each evaluation

Checkpoints are written to a temp dir and renamed into place, so a run killed at any moment resumes
from its last complete checkpoint; optimizer, scheduler, RNG and data order are restored, and the
resumed run computes the same losses as an uninterrupted one (tested on CPU).

Data: one epoch is a seeded permutation of the train split (``DistributedSampler``, ``drop_last=False``:
under ``torchrun`` every example is used, the last batch is topped up by wrapping around; not launched
distributed, one process sees all examples -- the original FiD code silently kept 1/n_gpu of them).

Example:
    >>> from radcot.student.train import TrainConfig, train
    >>> run_dir = train(TrainConfig(data="data/distill", model="tiny-t5", out="runs/student",
    ...                             max_steps=200))  # doctest: +SKIP
    >>> # torchrun --nproc_per_node=2 -m radcot train --data data/distill --model tiny-t5 --out runs/ddp
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from radcot._deps import require
from radcot.records import RadcotError
from radcot.utils import atomic_dir, progress, write_json

logger = logging.getLogger("radcot.student")

CONFIG_FILE = "train_config.json"
STATE_FILE = "trainer_state.pt"
CSV_COLUMNS = ("kind", "step", "epoch", "loss", "lr", "grad_norm", "examples", "dev_loss", "rougeL",
               "n_dev", "elapsed_s")
#: fields that may differ when resuming (they do not change what is computed)
RESUME_MUTABLE = {"eval_every", "save_every", "log_every", "keep_checkpoints", "eval_batch_size", "device",
                  "log_examples", "decoding"}
#: parameter-name substrings that get no weight decay by default (T5's layer norms; biases, which T5 has none of)
NO_DECAY_DEFAULT = ("layer_norm", ".bias")


class TrainingError(RadcotError, RuntimeError):
    """Training cannot start or continue (bad run directory, config mismatch on resume, ...)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``RUN_DIR/train_config.json``.

    Args:
        data: distillation data directory (``radcot build-data``).
        model: a Hugging Face T5 name (``google/flan-t5-base``), a local T5/student directory, or a model
            builder spec (:data:`radcot.student.hooks.MODEL_BUILDERS`), e.g. the demo's offline
            ``tiny-t5[:d_model=128,layers=2,...]``, built from the training texts into ``RUN_DIR/init-model``.
        out: the run directory.
        n_context: passages per query (default: the data's ``k``; 1 for no-context data).
        text_maxlength: max tokens of one (query, passage) input (paper: 300).
        target_maxlength: max tokens of the teacher CoT target.
        template: the per-passage input template (default: the paper's).
        max_steps: optimizer steps.
        batch_size: examples per micro-batch per process.
        grad_accum: micro-batches per optimizer step.
        lr, weight_decay, clip: AdamW learning rate and weight decay, gradient-norm clipping (paper: 1e-4, 0.1, 1.0).
        weight_decay_exclude: parameter-name substrings whose parameters get no weight decay (default
            :data:`NO_DECAY_DEFAULT`: layer norms and biases); ``[]`` decays every parameter, as the official
            RADCoT/FiD code does (``AdamW(model.parameters(), weight_decay=...)``).
        scheduler: ``constant`` or ``linear`` (decay to 0 at ``max_steps``), both after ``warmup_steps``.
        warmup_steps: linear warm-up steps.
        eval_every: evaluate on the dev split every this many steps (0: only at the end).
        eval_batch_size: dev examples per generation batch.
        eval_max_new_tokens: generated tokens per dev example (teacher length, 150 by default).
        decoding: :class:`~radcot.student.profile.Decoding` fields the student's profile records for inference
            (``radcot generate``/``serve``, ``Expander``), e.g. ``{"max_new_tokens": 64, "no_repeat_ngram_size": 3}``
            (``--preset demo`` sets the preset's); a field left out records ``eval_max_new_tokens`` tokens and
            ``Decoding``'s default. The dev evaluation itself stays greedy with ``eval_max_new_tokens``.
        eval_max_examples: evaluate on at most this many dev examples (None: all).
        metric_for_best: ``rougeL`` (higher is better) or ``dev_loss`` (lower is better).
        save_every: checkpoint every this many steps (the last step is always saved).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every: log the train loss every this many steps.
        precision: ``auto`` (bf16 autocast on a GPU that supports it, else fp32), ``fp32``, ``bf16``, ``fp16`` (GPU).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        seed: seed of the data order, dropout and (for tiny-t5) the initialisation.
        log_examples: write the query ids of every step's batch to ``RUN_DIR/examples.rank{R}.tsv``.
        select_by: how ``best/`` is chosen: ``rougeL`` (default; ``metric_for_best`` as before), ``loss`` (dev loss)
            or ``retrieval``: at each evaluation the dev CoTs expand the dev queries (``select_formula``), BM25
            (``select_index``) searches ``select_k`` deep, and ``select_metric`` (an ir-measures name) is computed
            on the dev queries that have judgements in ``select_qrels`` (a qrels file, or a BEIR directory's
            ``qrels/train.tsv``; dev queries are held-out training queries, never test queries).
        nproc_per_node: training processes (``radcot.student.launch.launch_training`` starts ``torchrun``
            with this many when > 1; ``batch_size`` is per process).
        augment: a training-example augmenter (the augmentation hook): a name in
            :data:`radcot.student.hooks.AUGMENTERS` (``copy``: the demo's copy augmentation,
            :class:`radcot.demo.augment.CopyAugmenter`) or ``"module:factory"``; None (default) = off.
        augment_args: keyword arguments of the augmenter's factory (``copy``: ``p``, ``max_df``).

    Example:
        >>> TrainConfig(data="d", model="tiny-t5", out="r", lr=3e-4).scheduler
        'constant'
    """

    data: str
    model: str
    out: str
    n_context: int | None = None
    text_maxlength: int = 300
    target_maxlength: int = 256
    template: str | None = None
    max_steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.1
    weight_decay_exclude: list[str] = dataclasses.field(default_factory=lambda: list(NO_DECAY_DEFAULT))
    clip: float = 1.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    eval_every: int = 100
    eval_batch_size: int = 16
    eval_max_new_tokens: int = 150
    decoding: dict = dataclasses.field(default_factory=dict)
    eval_max_examples: int | None = 200
    metric_for_best: str = "rougeL"
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    log_examples: bool = False
    nproc_per_node: int = 1
    select_by: str = "rougeL"
    select_metric: str = "nDCG@10"
    select_index: str | None = None
    select_qrels: str | None = None
    select_formula: str = "radcot"
    select_k: int = 100
    augment: str | None = None
    augment_args: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _check_field_types(self)
        for f in dataclasses.fields(self):  # paths given as Path objects are stored (and saved) as strings
            if isinstance(getattr(self, f.name), os.PathLike):
                setattr(self, f.name, os.fspath(getattr(self, f.name)))
        self.weight_decay_exclude = list(self.weight_decay_exclude)
        positive = ("max_steps", "batch_size", "grad_accum", "text_maxlength", "target_maxlength",
                    "eval_batch_size", "eval_max_new_tokens", "save_every", "keep_checkpoints", "log_every",
                    "nproc_per_node")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_context is not None and self.n_context < 1:
            raise ValueError(f"TrainConfig.n_context must be >= 1, got {self.n_context}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.clip < 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("TrainConfig.weight_decay, clip, warmup_steps and eval_every must be >= 0")
        if self.scheduler not in ("constant", "linear"):
            raise ValueError(f"TrainConfig.scheduler must be 'constant' or 'linear', got {self.scheduler!r}")
        if self.metric_for_best not in ("rougeL", "dev_loss"):
            raise ValueError(f"TrainConfig.metric_for_best must be 'rougeL' or 'dev_loss', got {self.metric_for_best!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"TrainConfig.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        self._check_selection()
        self._check_augment()
        self.inference_decoding()  # a bad decoding field fails here, not at the first checkpoint
        if self.eval_max_examples is not None and self.eval_max_examples < 1:
            raise ValueError(f"TrainConfig.eval_max_examples must be >= 1 or None, got {self.eval_max_examples}")

    def inference_decoding(self):
        """The :class:`~radcot.student.profile.Decoding` recorded in the student's profile (:attr:`decoding` over
        ``eval_max_new_tokens`` greedy).

        Raises:
            ValueError: an unknown or invalid decoding field (names it and the valid ones).
        """
        from radcot.student.profile import Decoding

        fields = {f.name for f in dataclasses.fields(Decoding)}
        unknown = sorted(set(self.decoding) - fields)
        if unknown:
            raise ValueError(f"TrainConfig.decoding has unknown fields {unknown}; valid fields: {sorted(fields)}")
        try:
            return Decoding(**{"max_new_tokens": self.eval_max_new_tokens, **self.decoding})
        except ValueError as e:
            raise ValueError(f"TrainConfig.{e}") from None

    def _check_augment(self) -> None:
        """The augmenter resolves and accepts ``augment_args`` (built once on no targets)."""
        if self.augment_args and not self.augment:
            raise ValueError(f"TrainConfig.augment_args {self.augment_args} need TrainConfig.augment (e.g. 'copy')")
        if self.augment:
            from radcot.student.hooks import make_augmenter

            try:
                make_augmenter(self.augment, [], self.augment_args)
            except ValueError as e:
                raise ValueError(f"TrainConfig.augment {self.augment!r}: {e}") from None

    def _check_selection(self) -> None:
        if self.select_by not in ("rougeL", "loss", "retrieval"):
            raise ValueError(f"TrainConfig.select_by must be 'rougeL', 'loss' or 'retrieval', got {self.select_by!r}")
        if self.select_k < 1:
            raise ValueError(f"TrainConfig.select_k must be >= 1, got {self.select_k}")
        if self.select_by != "retrieval":
            return
        missing = [n for n in ("select_index", "select_qrels") if not getattr(self, n)]
        if missing:
            raise ValueError(f"TrainConfig.select_by='retrieval' needs {' and '.join(missing)}: a BM25 index directory "
                             f"and the qrels of the training (dev-split) queries")
        import ir_measures

        try:
            measure = ir_measures.parse_measure(self.select_metric)
        except (ValueError, NameError, SyntaxError, TypeError) as e:
            raise ValueError(f"TrainConfig.select_metric {self.select_metric!r} is not an ir-measures name "
                             f"(e.g. nDCG@10, RR@10, AP): {e}") from e
        self.select_metric = str(measure)  # canonical (NDCG@10 -> nDCG@10, MRR@10 -> RR@10): the metrics key

    @property
    def selection_metric(self) -> str:
        """The metrics-row key ``best/`` is chosen by (``rougeL``, ``dev_loss`` or the retrieval metric)."""
        return {"loss": "dev_loss", "retrieval": self.select_metric}.get(self.select_by, self.metric_for_best)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys raise (a typo must not be ignored). ``steps`` means ``max_steps``."""
        d = _upgrade_augment(dict(d))
        if "steps" in d:
            d["max_steps"] = d.pop("steps")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid fields: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Read a JSON or YAML config file; ``overrides`` (not None) replace its fields.

        Raises:
            ValueError: the file is not valid JSON/YAML or not a mapping (names the file and line).
        """
        d = _read_config_file(Path(path))
        if Path(path).suffix in (".yaml", ".yml"):
            d = _yaml_numbers(d)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d)


#: TrainConfig fields of radcot <= 0.2, now ``augment: copy`` with ``augment_args`` (:func:`_upgrade_augment`)
_OLD_AUGMENT_FIELDS = {"copy_augment": "p", "copy_augment_max_df": "max_df"}


def _upgrade_augment(d: dict) -> dict:
    """A config dict of radcot <= 0.2 (``copy_augment: 0.5``) with the augmentation hook instead."""
    old = {k: d.pop(k) for k in list(d) if k in _OLD_AUGMENT_FIELDS}
    if old.get("copy_augment"):
        if d.get("augment") not in (None, "copy"):
            raise ValueError(f"copy_augment is the augmenter 'copy'; it cannot be combined with augment: "
                             f"{d['augment']!r}")
        d["augment"] = "copy"
        d["augment_args"] = {**{_OLD_AUGMENT_FIELDS[k]: v for k, v in old.items()}, **(d.get("augment_args") or {})}
    return d


def _read_config_file(path: Path) -> dict:
    """A TrainConfig file's mapping; a malformed file raises ValueError naming the file, line and the fix."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            from radcot.safe_yaml import parse_yaml

            d = parse_yaml(text, str(path)) or {}  # duplicate keys, alias bombs: refused with file:line (ValueError)
        else:
            d = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .yaml/.yml name is read as YAML") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of TrainConfig fields (lr: ..., max_steps: ...), "
                         f"got {type(d).__name__}")
    return d


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict:
    """A JSON object's mapping; a key given twice raises ValueError (json would silently keep the last value)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{path}: duplicate key {key!r} in one JSON object: JSON would silently keep the last "
                             f"value; remove one of them")
        seen[key] = value
    return seen


class ConfigTypeError(RadcotError, TypeError):
    """A TrainConfig field (or a ``train()`` argument) of the wrong type; the message names it and the fix."""


def _check_field_types(config: "TrainConfig") -> None:
    """Every field of ``config`` has its annotated type (numbers are not strings, a list is not a str).

    Raises:
        ConfigTypeError: names the field, the value and what it must be.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _has_type(value, hints[f.name]):
            raise ConfigTypeError(f"TrainConfig.{f.name} must be {_type_words(hints[f.name])}, got {value!r} "
                                  f"({type(value).__name__}){_type_fix(value, hints[f.name])}")


def _has_type(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, (str, os.PathLike))
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_has_type(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, Mapping)
    return True  # a type this check does not know: __post_init__'s own checks apply


def _type_words(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return "a list of " + {str: "strings", int: "integers", float: "numbers"}.get(item, _type_words(item))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "None",
             dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _type_fix(value: Any, hint: Any) -> str:
    if isinstance(value, str) and _has_type(_number(value), hint):
        return "; write the number without quotes"
    if isinstance(value, str) and typing.get_origin(hint) is list:
        return f"; write a list, e.g. [{value!r}] (or [] for none)"
    return ""


def _number(text: str) -> int | float | str:
    """``text`` as an int or float when it is one (``"1e-4"`` -> 0.0001), else ``text``."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _yaml_numbers(d: dict) -> dict:
    """YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as a string: such values of number fields become numbers."""
    hints = typing.get_type_hints(TrainConfig)
    out = dict(d)
    for name, value in d.items():
        if isinstance(value, str) and name in hints and not _has_type(value, hints[name]) \
                and _has_type(_number(value), hints[name]):
            out[name] = _number(value)
    return out


# ------------------------------------------------------------------------------------------ helpers


#: how long a rank waits in a collective (rank 0 evaluates and saves alone while the others wait at a barrier;
#: NCCL's own default, 10 minutes, is shorter than one evaluation of a large student)
DIST_TIMEOUT_S = 3600


def launched_distributed(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was started by ``torchrun`` (any ``--nproc_per_node``, 1 included)."""
    return "WORLD_SIZE" in env and ("MASTER_ADDR" in env or int(env.get("WORLD_SIZE", "1")) > 1)


class _Dist:
    """The process group of a ``torchrun`` launch (a single process otherwise) and the collectives training uses.

    Every collective runs on this rank's ``device``: tensors are created there, ``barrier`` names it, object
    collectives find it as the current CUDA device. On CUDA, ``torch.cuda.set_device`` comes before
    ``init_process_group`` (NCCL, ``device_id`` given so the communicator is formed at once) and before any
    collective; on CPU the backend is gloo.

    Args:
        torch: the torch module.
        device: this rank's device (default: :func:`_pick_device` ``"auto"``); CUDA devices use NCCL, others gloo.
        env: the launcher's environment (``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``).
        timeout_s: collective timeout (:data:`DIST_TIMEOUT_S`).
    """

    def __init__(self, torch, device=None, env: Mapping[str, str] = os.environ, timeout_s: float = DIST_TIMEOUT_S):
        import datetime

        device = _pick_device(torch, "auto", env)[0] if device is None else device
        self.torch, self.device = torch, device
        dist = torch.distributed
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.enabled = launched_distributed(env)
        self.initialized_here = False
        self.cuda = device.type == "cuda"
        if self.enabled and self.cuda:
            torch.cuda.set_device(device)  # before the first NCCL call: object collectives use the current device
        if self.enabled and not dist.is_initialized():
            extra = {"device_id": device} if self.cuda else {}
            dist.init_process_group(backend="nccl" if self.cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s), **extra)
            self.initialized_here = True
        self.rank = dist.get_rank() if self.enabled else 0
        self.main = self.rank == 0

    def barrier(self):
        if self.enabled:
            if self.cuda:
                self.torch.distributed.barrier(device_ids=[self.device.index])
            else:
                self.torch.distributed.barrier()

    def all_gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        self.torch.distributed.all_gather_object(out, obj)  # on the current device (set in __init__)
        return out

    def broadcast(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        self.torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (an all-reduce of a tensor on this rank's device)."""
        if not self.enabled:
            return value
        t = self.torch.tensor([value], dtype=self.torch.float64, device=self.device)
        self.torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def close(self):
        if self.initialized_here:
            self.torch.distributed.destroy_process_group()


def _render(template: str, query: str) -> str:
    """``template`` with ``query`` in and the passage slot empty: a query as the student's input shows it."""
    return " ".join(template.replace("{passage}", "").replace("{query}", query).split())


def _rng_state(torch) -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(torch, state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``checkpoints/step-N`` directory of a run, complete or not, ``[(step, path)]`` sorted by step."""
    root = Path(run_dir) / "checkpoints"
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
    return sorted(out)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (trainer state and weights config present), ``[(step, path)]`` sorted by step."""
    return [(s, p) for s, p in step_dirs(run_dir) if (p / STATE_FILE).is_file() and (p / "config.json").is_file()]


def _read_checkpoint(torch, path: Path) -> tuple[dict | None, str | None]:
    """``(trainer state, None)`` for an intact checkpoint, ``(None, what is wrong)`` for a damaged one."""
    from radcot.student.model import weights_problem

    missing = [n for n in (STATE_FILE, "config.json") if not (path / n).is_file()]
    if missing:
        return None, f"incomplete: no {' or '.join(missing)}"
    problem = weights_problem(path)
    if problem is not None:
        return None, problem
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged pickle/zip raises many kinds (RuntimeError, EOFError, ...)
        return None, f"{STATE_FILE} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    keys = {"optimizer", "scheduler", "rng", "world_size", "step", "epoch", "batch_pos", "examples_seen", "best"}
    if not isinstance(state, dict) or not keys <= set(state):
        return None, f"{STATE_FILE} is not a radcot trainer state"
    return state, None


def clear_run_dir(run_dir: str | os.PathLike) -> None:
    """Remove what ``radcot train`` wrote into ``run_dir`` (:data:`RUN_FILES`); other files stay."""
    run_dir = Path(run_dir)
    paths = [run_dir / name for name in RUN_FILES] + [p for g in RUN_GLOBS for p in run_dir.glob(g)]
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def decay_groups(named_parameters, weight_decay: float, exclude) -> list[dict]:
    """AdamW parameter groups: parameters whose name contains one of ``exclude`` get no weight decay.

    Args:
        named_parameters: ``model.named_parameters()``.
        weight_decay: the decay of the other parameters.
        exclude: name substrings (:data:`NO_DECAY_DEFAULT`; ``[]``: every parameter decays, as the official code).

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]``
        (the second group only when it has parameters).

    Example:
        >>> import torch
        >>> groups = decay_groups(torch.nn.LayerNorm(2).named_parameters(), 0.1, [".bias"])
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.1), (1, 0.0)]
    """
    decay, exempt = [], []
    for name, param in named_parameters:
        (exempt if any(s in name for s in exclude) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return groups


def _check_n_context(config: TrainConfig, meta: Mapping[str, Any], data: Path) -> None:
    """``n_context`` may not exceed the passages the data holds per query: the extra slots would stay empty in
    training, and the student would record an ``n_context`` it never read."""
    k = meta.get("k")
    if config.n_context is None or meta.get("no_context") or not isinstance(k, int):
        if config.n_context is not None and meta.get("no_context") and config.n_context != 1:
            logger.info("train: no-context data: n_context %d is ignored (one input per query)", config.n_context)
        return
    if config.n_context > k:
        raise TrainingError(f"n_context {config.n_context} is more than the {k} passages per query in {data} "
                            f"(radcot_data.json k={k}): rebuild the data with --k {config.n_context} (radcot "
                            f"build-data), or train with --n-context {k} or fewer (n_context={k})")


def _student_retriever(meta: Mapping[str, Any], data: Path):
    """The :class:`~radcot.student.profile.RetrieverRecord` of the data's passages (``student_retriever`` in
    ``radcot_data.json``), or None (no-context data, or data built before radcot recorded it)."""
    from radcot.student.profile import ProfileError, RetrieverRecord

    record = meta.get("student_retriever")
    if record is None:
        return None
    try:
        return RetrieverRecord.from_dict(record)
    except (KeyError, TypeError, ProfileError) as e:
        raise TrainingError(f"{data / 'radcot_data.json'}: student_retriever is malformed ({type(e).__name__}: "
                            f"{e}); rebuild the data with radcot build-data") from None


def _lr_lambda(config: TrainConfig):
    total, warm, kind = config.max_steps, config.warmup_steps, config.scheduler

    def f(step: int) -> float:  # step = optimizer steps taken so far (0-based)
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "linear":
            return max(0.0, (total - step) / max(1, total - warm))
        return 1.0

    return f


def _rouge_l(predictions: list[str], references: list[str]) -> float:
    rouge_scorer = require("rouge_score.rouge_scorer", "ROUGE-L evaluation", extra="student")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if not predictions:
        return 0.0
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


class _MetricsLog:
    """``metrics.jsonl`` + ``metrics.csv``; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool = False):
        self.jsonl, self.csv = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
        self.tb = _tensorboard_writer(run_dir / "tensorboard", resume_step) if tensorboard else None
        rows = []
        if resume_step > 0 and self.jsonl.exists():
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # torn last line of a killed run
                    continue
                if int(row.get("step", 0)) <= resume_step:
                    rows.append(row)
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        with open(self.csv, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", encoding="utf-8", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n").writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{row['kind']}/{key}", value, row["step"])
            self.tb.flush()


def _tensorboard_writer(log_dir: Path, resume_step: int):
    """A ``torch.utils.tensorboard`` writer when tensorboard is installed (``pip install radcot[tensorboard]``), else
    None. On resume, events after the checkpoint's step are superseded (``purge_step``)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=resume_step + 1 if resume_step else None)


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """Rows of ``RUN_DIR/metrics.jsonl`` (``kind``: ``train`` or ``eval`` to filter)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


def _field_defaults() -> dict[str, Any]:
    """TrainConfig's default of every field that has one (``default_factory`` ones included)."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """The TrainConfig a run was started with, as the current radcot spells it (defaults of newer fields filled
    in, ``select_metric`` canonical)."""
    path = run_dir / CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainingError(f"{path} is not valid JSON ({e}); the run directory is damaged: start over with "
                            f"--overwrite (overwrite=True), or choose another --out") from None
    if not isinstance(saved, dict):
        raise TrainingError(f"{path} holds {type(saved).__name__}, not a TrainConfig mapping; start over with "
                            f"--overwrite (overwrite=True), or choose another --out")
    saved = {**_field_defaults(), **saved}  # a run written before a field existed ran with its default
    try:
        return TrainConfig.from_dict(saved).to_dict()
    except (ValueError, TypeError):  # a config an older radcot accepted: compared as written
        return saved


def _check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    saved = _saved_config(run_dir)
    now = config.to_dict()
    diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
            if k not in RESUME_MUTABLE and k != "out" and saved.get(k) != now.get(k)}
    if diff:
        desc = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise TrainingError(f"cannot resume {run_dir}: its config differs ({desc}). Use the same settings, start "
                            f"over with --overwrite (overwrite=True), or choose a new --out directory")


# ------------------------------------------------------------------------------------------ training


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, show_progress: bool | None = None,
          stop_after: int | None = None, scorer: Scorer | None = None) -> Path:
    """Train a FiD student; returns the run directory (best model at ``RUN_DIR/best``).

    Global RNG state: ``train()`` seeds Python's ``random`` and torch's global generators with
    ``config.seed + rank`` (dropout and the data order depend on them) and leaves them in their end-of-run
    state; callers that need their own random stream afterwards should re-seed.

    Args:
        config: the :class:`TrainConfig`.
        resume: continue from the newest intact checkpoint in ``config.out``. A damaged newer checkpoint is named
            in a warning and moved aside (``step-N.damaged``); a run with no intact checkpoint is an error.
            Without ``resume``, an ``out`` holding a run that saved a checkpoint is an error.
        overwrite: replace the training run in ``config.out`` (only a radcot training run: its
            ``train_config.json`` must be there).
        show_progress: progress bar (default: from the log level).
        stop_after: end this invocation after that step, without a final save, as if the process had
            been killed there (for testing resume and for time-sliced jobs).
        scorer: for ``select_by="retrieval"``: ``scorer({query_id: dev CoT}) -> float`` (higher is better), e.g.
            :func:`radcot.selection.retrieval_scorer`; required then, unused otherwise.

    A run that saved no checkpoint (it failed or was killed early) does not hold its directory: a new run with
    any settings starts over there (logged).

    Returns:
        ``Path(config.out)``.

    Raises:
        TrainingError: ``out`` holds another run (without ``resume``/``overwrite``), a run with a different config,
            or no intact checkpoint to resume; a checkpoint cannot be written (disk full); ``select_by="retrieval"``
            without a scorer.
        ConfigTypeError: an argument of the wrong type.
        DistillationDataError: the data directory is not a distillation dataset.
    """
    _check_train_args(config, resume, overwrite, stop_after, scorer)
    torch = require("torch", "student training")
    device, device_reason = _pick_device(torch, config.device)
    dist = _Dist(torch, device)
    try:
        run = _Run(config, dist, torch, scorer)
        run.load_data()
        resume_from = run.prepare_run_dir(resume, overwrite)
        if resume_from is _FINISHED:
            return run.run_dir
        run.choose_device(device_reason)
        run.build_model(resume_from)
        bar = progress(total=config.max_steps, initial=run.step, desc="training", unit="step",
                       show_progress=show_progress if dist.main else False)
        while run.step < config.max_steps:
            loss = run.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if (config.eval_every and run.step % config.eval_every == 0) or run.step == config.max_steps:
                run.evaluate_and_select(bar)
            if run.step % config.save_every == 0 or run.step == config.max_steps:
                run.save_checkpoint()
            if stop_after is not None and stop_after <= run.step < config.max_steps:
                logger.info("train: stopping after step %d as asked (resume with --resume)", run.step)
                bar.close()
                return run.run_dir
        bar.close()
        run.finish()
        return run.run_dir
    finally:
        dist.close()


#: ``scorer({query_id: CoT}) -> float``: the quality of a checkpoint's dev CoTs (higher is better)
Scorer = typing.Callable[[Mapping[str, str]], float]


def _check_train_args(config, resume, overwrite, stop_after, scorer) -> None:
    """``train()``'s arguments have their types, and a retrieval-selected run has its scorer."""
    if not isinstance(config, TrainConfig):
        raise ConfigTypeError(f"train() takes a TrainConfig, got {type(config).__name__}: build one with "
                              f"TrainConfig(data=..., model=..., out=...) or TrainConfig.from_dict(mapping)")
    for name, value in (("resume", resume), ("overwrite", overwrite)):
        if not isinstance(value, bool):
            raise ConfigTypeError(f"train() argument {name} must be True or False, got {value!r}")
    if resume and overwrite:
        raise TrainingError("train(): resume and overwrite exclude each other (continue the run, or replace it)")
    if stop_after is not None and (not isinstance(stop_after, int) or isinstance(stop_after, bool) or stop_after < 1):
        raise ConfigTypeError(f"train() argument stop_after must be an integer >= 1 or None, got {stop_after!r}")
    if scorer is not None and not callable(scorer):
        raise ConfigTypeError(f"train() argument scorer must be a callable scorer(cots) -> float, got "
                              f"{type(scorer).__name__}")
    if config.select_by == "retrieval" and scorer is None:
        raise TrainingError("select_by='retrieval' needs a scorer of the dev CoTs: radcot train builds it from "
                            "select_index/select_qrels; from Python pass train(config, scorer=radcot.selection."
                            "retrieval_scorer(config))")


_FINISHED = object()

#: what ``radcot train`` writes into a run directory (and ``--overwrite`` removes; anything else is left alone)
RUN_FILES = (CONFIG_FILE, "init-model", "checkpoints", "best", "metrics.jsonl", "metrics.csv", "tensorboard",
             "device.json", "eval")
RUN_GLOBS = ("examples.rank*.tsv", ".best.*")


class _Run:
    """One training run's state and its steps (set up, data, device, model, one step, evaluate, checkpoint)."""

    def __init__(self, config: TrainConfig, dist: _Dist, torch, scorer: Scorer | None = None):
        self.config, self.dist, self.torch, self.scorer = config, dist, torch, scorer
        self.run_dir = Path(config.out)
        self.t_start = time.time()
        self.step, self.epoch, self.batch_pos, self.examples_seen = 0, 0, 0, 0
        self.best: dict[str, Any] = {"step": None, "value": None}
        self.resume_step = 0
        self.scaler = None
        self.examples_log = None
        self.damaged: list[tuple[Path, str]] = []

    # ---------------------------------------------------------------- set up
    def prepare_run_dir(self, resume: bool, overwrite: bool):
        """Check the run directory; returns ``(step, path, trainer state)`` to resume from, None to start, or
        _FINISHED."""
        run_dir, config, dist = self.run_dir, self.config, self.dist
        restart = self._restart_reason(resume, overwrite)
        resume_from = self._resume_point() if (resume and restart is None) else None
        self.resume_step = resume_from[0] if resume_from else 0
        if self.resume_step >= config.max_steps and (run_dir / "best").is_dir():
            logger.info("train: %s already finished (%d steps)", run_dir, self.resume_step)
            return _FINISHED
        dist.barrier()  # every rank has inspected run_dir before rank 0 writes into it
        if dist.main:
            if restart:
                logger.info("%s", restart)
                clear_run_dir(run_dir)
            self._set_aside_damaged()
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / CONFIG_FILE, config.to_dict())
            for stale in (run_dir / "checkpoints").glob(".step-*.tmp") if (run_dir / "checkpoints").is_dir() else []:
                shutil.rmtree(stale, ignore_errors=True)  # half-written checkpoint of a killed run
        dist.barrier()
        return resume_from

    def _restart_reason(self, resume: bool, overwrite: bool) -> str | None:
        """Why the earlier run in the run directory is cleared first (None: there is none, or it is resumed)."""
        run_dir = self.run_dir
        produced = bool(step_dirs(run_dir)) or (run_dir / "best").is_dir()
        if not (run_dir / CONFIG_FILE).exists():
            if produced:
                raise TrainingError(f"{run_dir} has checkpoints but no {CONFIG_FILE}; it was not written by radcot "
                                    f"train, and radcot never replaces it: choose another --out")
            return None
        if overwrite:
            return f"train: --overwrite: replacing the training run in {run_dir}"
        if not produced:
            return (f"train: {run_dir} holds a run that saved no checkpoint (it failed or was stopped early): "
                    f"starting over there with the current settings")
        if not resume:
            last = step_dirs(run_dir)[-1][0] if step_dirs(run_dir) else "best/ only"
            raise TrainingError(f"{run_dir} already holds a training run (last checkpoint: step {last}); pass --resume "
                                f"(resume=True) to continue it, --overwrite (overwrite=True) to start over, or choose "
                                f"another --out")
        _check_resume_config(run_dir, self.config)
        return None

    def _resume_point(self):
        """``(step, path, trainer state)`` of the newest intact checkpoint. Damaged newer ones are named in a warning
        (and later moved aside by rank 0); none intact is an error, never a silent start from scratch."""
        for step, path in reversed(step_dirs(self.run_dir)):
            state, problem = _read_checkpoint(self.torch, path)
            if problem is None:
                if self.damaged:
                    names = "; ".join(f"{p} is damaged ({why})" for p, why in self.damaged)
                    logger.warning("train: %s: resuming from %s, the newest intact checkpoint (the damaged ones are "
                                   "moved to step-N.damaged)", names, path.name)
                return step, path, state
            self.damaged.append((path, problem))
        found = "; ".join(f"{p.name}: {why}" for p, why in self.damaged) or "no step-N checkpoint, only best/"
        raise TrainingError(f"nothing to resume in {self.run_dir / 'checkpoints'} ({found}); start over with "
                            f"--overwrite (overwrite=True)")

    def _set_aside_damaged(self) -> None:
        """Rename damaged checkpoints to ``step-N.damaged`` (kept for inspection, never resumed from)."""
        for path, _ in self.damaged:
            target, n = path.with_name(path.name + ".damaged"), 1
            while target.exists():
                n += 1
                target = path.with_name(f"{path.name}.damaged{n}")
            os.replace(path, target)

    # ---------------------------------------------------------------- data
    def load_data(self) -> None:
        from radcot.student.data import NO_CONTEXT_TEMPLATE, PASSAGE_TEMPLATE, load_distillation_data, resolve_template

        config = self.config
        dd, meta = load_distillation_data(config.data)
        self.train_ds = dd["train"]
        self.dev_ds = dd["dev"] if "dev" in dd else None
        self.no_context = bool(meta.get("no_context", False))
        self.n_context = 1 if self.no_context else (config.n_context or int(meta.get("k") or 10))
        _check_n_context(config, meta, Path(config.data))
        self.retriever_record = _student_retriever(meta, Path(config.data))
        template = resolve_template(config.template or (NO_CONTEXT_TEMPLATE if self.no_context else PASSAGE_TEMPLATE))
        if self.no_context and "{passage}" in template:
            # one config for both rows of an experiment: a passage template means nothing to the ablation
            logger.info("train: no-context data; the passage template %r is replaced by %r", template,
                        NO_CONTEXT_TEMPLATE)
            template = NO_CONTEXT_TEMPLATE
        self.template = template
        self.augment = None
        if config.augment:
            from radcot.student.hooks import make_augmenter

            self.augment = make_augmenter(config.augment, self.train_ds["target"], config.augment_args)
            logger.info("train: augmenting training examples with %s %s", config.augment, config.augment_args)

    # ---------------------------------------------------------------- device / precision
    def choose_device(self, why: str) -> None:
        """The precision on the device the process group uses (:func:`_pick_device`, ``why`` it was chosen)."""
        torch, config, device = self.torch, self.config, self.dist.device
        precision, pwhy = _pick_precision(torch, config.precision, device)
        logger.info("train: device %s (%s), precision %s (%s)", device, why, precision, pwhy)
        self.device, self.precision = device, precision
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "device.json", {"device": str(device), "device_reason": why,
                                                      "precision": precision, "precision_reason": pwhy,
                                                      "precision_asked": config.precision})

    def autocast(self):
        if self.amp_dtype is None:
            import contextlib

            return contextlib.nullcontext()
        return self.torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ---------------------------------------------------------------- model, optimizer, resume
    def build_model(self, resume_from) -> None:
        from radcot.student.model import FiDStudent

        torch, config, dist = self.torch, self.config, self.dist
        torch.manual_seed(config.seed + dist.rank)
        random.seed(config.seed + dist.rank)
        fid_kwargs = dict(n_context=self.n_context, text_maxlength=config.text_maxlength,
                          target_maxlength=config.target_maxlength, template=self.template,
                          no_context=self.no_context)
        source = self._model_source(resume_from)
        self.student = student = FiDStudent.from_pretrained(source, **fid_kwargs)
        student.to(self.device)
        student.train()
        self.optimizer = torch.optim.AdamW(
            decay_groups(student.named_parameters(), config.weight_decay, config.weight_decay_exclude), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.model = student
        if dist.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if resume_from is not None:
            self._restore(resume_from[1], resume_from[2])
        self.sampler = torch.utils.data.distributed.DistributedSampler(
            range(len(self.train_ds)), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed,
            drop_last=False)
        self.batches = self._epoch_batches(self.epoch)
        self.metrics = _MetricsLog(self.run_dir, self.resume_step, tensorboard=True) if dist.main else None
        self._open_examples_log()

    def _model_source(self, resume_from):
        from radcot.student.hooks import build_model, resolve_builder

        config = self.config
        if resume_from is not None:
            logger.info("train: resuming %s from step %d", self.run_dir, self.resume_step)
            return resume_from[1]
        if resolve_builder(config.model) is None:
            return config.model
        source = self.run_dir / "init-model"
        if self.dist.main and not (source / "config.json").is_file():
            # the queries as the model reads them: the template's own words ("question:", "context:") then get
            # pieces of their own instead of ~5 pieces each in every input (measured: 39 -> 33 tokens per demo input)
            texts = [_render(self.template, q) for q in self.train_ds["query"]] + list(self.train_ds["target"])
            for ps in self.train_ds["passages"]:
                texts.extend(f"{p['title']} {p['text']}" for p in ps)
            logger.info("train: building %s from %d training texts", config.model, len(texts))
            build_model(config.model, texts[:50_000], source)
        self.dist.barrier()
        return source

    def _restore(self, ckpt: Path, state: dict) -> None:
        """Optimizer, scheduler, scaler, RNG and data position from ``state``, the trainer state of ``ckpt``."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state["world_size"] != self.dist.world:
            raise TrainingError(f"{ckpt} was written by {state['world_size']} processes, now "
                                f"{self.dist.world}: resume with the same number of processes")
        _set_rng_state(self.torch, state["rng"][self.dist.rank])
        self.step, self.epoch, self.batch_pos = state["step"], state["epoch"], state["batch_pos"]
        self.examples_seen, self.best = state["examples_seen"], state["best"]

    def _open_examples_log(self) -> None:
        if not self.config.log_examples:
            return
        ex_path = self.run_dir / f"examples.rank{self.dist.rank}.tsv"
        kept = []
        if self.resume_step and ex_path.exists():
            kept = [ln for ln in ex_path.read_text(encoding="utf-8").splitlines()
                    if ln.split("\t")[0].isdigit() and int(ln.split("\t")[0]) <= self.resume_step]
        ex_path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        self.examples_log = open(ex_path, "a", encoding="utf-8")

    # ---------------------------------------------------------------- data order
    def _epoch_batches(self, e: int) -> list[list[int]]:
        self.sampler.set_epoch(e)
        idx = list(self.sampler)
        bs = self.config.batch_size
        return [idx[i:i + bs] for i in range(0, len(idx), bs)]

    def next_batch(self) -> list[int]:
        if self.batch_pos >= len(self.batches):
            self.epoch, self.batch_pos = self.epoch + 1, 0
            self.batches = self._epoch_batches(self.epoch)
        b = self.batches[self.batch_pos]
        self.batch_pos += 1
        return b

    # ---------------------------------------------------------------- one optimizer step
    def train_step(self) -> float:
        """Forward/backward over ``grad_accum`` micro-batches, clip, step; logs the row; returns the mean loss."""
        torch, config, dist = self.torch, self.config, self.dist
        loss_sum, n_ex = 0.0, 0
        for micro in range(config.grad_accum):
            loss_sum_micro, n = self._micro_step(last=micro == config.grad_accum - 1)
            loss_sum += loss_sum_micro
            n_ex += n
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), config.clip)) \
            if config.clip > 0 else float("nan")
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.examples_seen += n_ex * dist.world
        if self.examples_log is not None:
            self.examples_log.flush()
        loss_mean = dist.mean(loss_sum)
        if not math.isfinite(loss_mean):
            raise TrainingError(f"training diverged at step {self.step} (loss {loss_mean}); lower --lr or use fp32/bf16")
        if dist.main and (self.step % config.log_every == 0 or self.step == config.max_steps or self.step == 1):
            self.metrics.write({"kind": "train", "step": self.step, "epoch": self.epoch, "loss": loss_mean, "lr": lr,
                                "grad_norm": grad_norm, "examples": self.examples_seen,
                                "elapsed_s": round(time.time() - self.t_start, 3)})
        return loss_mean

    def _micro_step(self, last: bool) -> tuple[float, int]:
        config, dist = self.config, self.dist
        examples = [self.train_ds[i] for i in self.next_batch()]
        if self.augment is not None:  # seeded by step and position: a resumed run sees the same examples
            examples = [self.augment(ex, seed=f"{config.seed}-{self.step}-{self.dist.rank}-{j}")
                        for j, ex in enumerate(examples)]
        if self.examples_log is not None:
            self.examples_log.writelines(f"{self.step + 1}\t{ex['query_id']}\n" for ex in examples)
        batch = {k: v.to(self.device) for k, v in self.student.collator(examples).items()}
        sync = last or not dist.enabled
        ctx = self.model.no_sync() if (dist.enabled and not sync) else _null()
        with ctx:
            with self.autocast():
                loss = self.model(**batch, use_cache=False).loss / config.grad_accum
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return float(loss.detach()), len(examples)

    # ---------------------------------------------------------------- evaluation and checkpoints
    def evaluate_and_select(self, bar) -> None:
        """Evaluate on dev (rank 0), log the row, keep ``best/`` when the metric improves."""
        dist, config = self.dist, self.config
        result = self.evaluate_dev() if dist.main else None
        if dist.main and result is not None:
            self.metrics.write({"kind": "eval", "step": self.step, "epoch": self.epoch, **result,
                                "elapsed_s": round(time.time() - self.t_start, 3)})
            extra = f"  {config.select_metric} {result[config.select_metric]:.4f}" if config.select_by == "retrieval" else ""
            bar.write(f"step {self.step}: dev loss {result['dev_loss']:.4f}  ROUGE-L {result['rougeL']:.4f}{extra}",
                      file=sys.stderr)  # progress, not output: stdout stays the command's result (radcot run's table)
            value = result[config.selection_metric]
            if self._is_better(value):
                self.best = {"step": self.step, "value": value, "metric": config.selection_metric}
                self.save_best({"best": self.best, **result})
        self.best = dist.broadcast(self.best)
        dist.barrier()

    def evaluate_dev(self) -> dict | None:
        torch, config, dev_ds, student = self.torch, self.config, self.dev_ds, self.student
        if dev_ds is None or len(dev_ds) == 0:
            return None
        n = len(dev_ds) if config.eval_max_examples is None else min(len(dev_ds), config.eval_max_examples)
        rows = [dev_ds[i] for i in range(n)]
        preds, losses = [], []
        student.eval()
        device = self.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            for i in range(0, n, config.eval_batch_size):
                chunk = rows[i:i + config.eval_batch_size]
                batch = {k: v.to(device) for k, v in student.collator(chunk).items()}
                with self.autocast():
                    out = student(**batch, use_cache=False)
                    losses.append(float(out.loss) * len(chunk))
                    ids = student.generate(batch["input_ids"], batch["attention_mask"], batch["passage_mask"],
                                           max_new_tokens=config.eval_max_new_tokens, num_beams=1, do_sample=False)
                preds.extend(student.tokenizer.batch_decode(ids, skip_special_tokens=True))
        student.train()
        refs = [r["target"] for r in rows]
        result = {"dev_loss": sum(losses) / n, "rougeL": _rouge_l(preds, refs), "n_dev": n}
        if config.select_by == "retrieval":
            result[config.select_metric] = self._score({r["query_id"]: p for r, p in zip(rows, preds)})
        with open(_mkdir(self.run_dir / "eval") / f"step-{self.step}.jsonl", "w", encoding="utf-8") as f:
            for r, p in zip(rows, preds):
                f.write(json.dumps({"query_id": r["query_id"], "query": r["query"], "prediction": p,
                                    "target": r["target"]}, ensure_ascii=False) + "\n")
        return result

    def _score(self, cots: Mapping[str, str]) -> float:
        """The injected scorer's value of the dev CoTs (``select_by="retrieval"``); it must be a finite number."""
        value = self.scorer(cots)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrainingError(f"the checkpoint scorer returned {value!r} for {len(cots)} dev CoTs at step "
                                f"{self.step}; it must return a finite number (higher is better)")
        return float(value)

    def _is_better(self, value: float) -> bool:
        if self.best["value"] is None:
            return True
        lower_is_better = self.config.selection_metric == "dev_loss"
        return value < self.best["value"] if lower_is_better else value > self.best["value"]

    def save_checkpoint(self) -> None:
        torch, dist = self.torch, self.dist
        rng = dist.all_gather(_rng_state(torch))
        if dist.main:
            final = self.run_dir / "checkpoints" / f"step-{self.step}"
            pos = {"step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos,
                   "examples_seen": self.examples_seen, "best": self.best}
            with self._writing(final), atomic_dir(final) as tmp:
                self.student.save_into(tmp, {"step": self.step})
                self._profile(tmp).save()
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                            "rng": rng, "world_size": dist.world, **pos}, tmp / STATE_FILE)
                write_json(tmp / "trainer_state.json", {**pos, "world_size": dist.world})
            for _, old in list_checkpoints(self.run_dir)[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def save_best(self, reason: dict) -> None:
        best = self.run_dir / "best"
        with self._writing(best), atomic_dir(best) as tmp:
            self.student.save_into(tmp, {"step": self.step, "train_config": self.config.to_dict(),
                                         "precision": self.precision, **reason})
            self._profile(tmp).save()

    def _profile(self, directory: Path):
        """The student's profile (radcot_student.json) for a checkpoint written to ``directory``: the data's
        retriever, and inference as configured (``n_context``, ``decoding`` over ``eval_max_new_tokens``,
        ``select_formula``)."""
        from radcot.student.profile import Inference, StudentProfile

        inference = Inference(n_context=self.n_context, decoding=self.config.inference_decoding(),
                              formula=self.config.select_formula)
        return StudentProfile(directory, directory, self.retriever_record, inference)

    @contextlib.contextmanager
    def _writing(self, target: Path):
        """Turn a failed checkpoint write (disk full, file-size limit, I/O error) into one TrainingError that names
        ``target`` and the newest checkpoint left intact (the temp dir is already gone: :func:`atomic_dir`)."""
        try:
            yield
        except (OSError, RuntimeError, _SafetensorError) as e:
            raise TrainingError(_write_failure(e, target, self.run_dir)) from e

    def finish(self) -> None:
        dist = self.dist
        if dist.main and self.best["step"] is None:
            logger.warning("train: no dev split to select on; RUN_DIR/best is the final model (step %d)", self.step)
            self.save_best({"best": {"step": self.step, "value": None, "metric": None}})
        dist.barrier()
        if self.examples_log is not None:
            self.examples_log.close()
        if self.metrics is not None and self.metrics.tb is not None:
            self.metrics.tb.close()
        logger.info("train: %d steps done in %.1f s -> %s (best: %s)", self.step, time.time() - self.t_start,
                    self.run_dir, self.best)


def _pick_device(torch, asked: str, env: Mapping[str, str] = os.environ):
    """``(torch.device, reason)`` for ``TrainConfig.device`` in this process (under torchrun: this rank's GPU).

    Raises:
        TrainingError: CUDA asked for but not available; under torchrun, more ranks than GPUs on this node, or one
            GPU index given to every rank (NCCL cannot run two ranks on one GPU).
    """
    local_rank = int(env.get("LOCAL_RANK", "0"))
    distributed = launched_distributed(env)
    if asked == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu"), "auto: this torch sees no CUDA GPU"
        device, why = torch.device("cuda", local_rank if distributed else 0), "auto: CUDA is available"
    else:
        try:
            device, why = torch.device(asked), "asked for"
        except RuntimeError as e:
            raise TrainingError(f"TrainConfig.device {asked!r} is not a device ({e}); use auto, cpu, cuda or "
                                f"cuda:N") from None
    if device.type != "cuda":
        return device, why
    if not torch.cuda.is_available():
        raise TrainingError(f"device {asked!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                            f"use --device cpu (or auto)")
    if distributed and device.index is not None and asked != "auto" and int(env.get("WORLD_SIZE", "1")) > 1:
        raise TrainingError(f"device {asked!r} puts every torchrun rank on one GPU, which NCCL refuses; use --device "
                            f"cuda (or auto): rank r trains on cuda:LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES")
    if device.index is None:
        device = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise TrainingError(f"{device} asked for, but only {torch.cuda.device_count()} GPU(s) are visible"
                            + (f": torchrun started more processes per node than there are GPUs (NCCL cannot put two "
                               f"ranks on one GPU); use --nproc_per_node {torch.cuda.device_count()}"
                               if distributed else ""))
    return device, why


def _pick_precision(torch, asked: str, device) -> tuple[str, str]:
    """``(effective precision, reason)``: bf16/fp16 on a CPU fall back to fp32 (logged as a warning)."""
    if asked == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU supports bf16"
        return "fp32", f"auto: {'the GPU has no bf16' if device.type == 'cuda' else 'CPU'}"
    if asked in ("bf16", "fp16") and device.type != "cuda":
        logger.warning("train: precision %s asked for, but training runs on %s: falling back to fp32 "
                       "(mixed precision is for GPUs)", asked, device)
        return "fp32", f"{asked} asked for, fell back to fp32 on {device.type}"
    return asked, "asked for"


try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors comes with transformers
    class _SafetensorError(Exception):
        pass

#: errno values of a full disk, a full quota and an exceeded file-size limit (RLIMIT_FSIZE)
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_SPACE_TEXT = ("No space left", "Disk quota", "File too large")


def _write_failure(e: BaseException, target: Path, run_dir: Path) -> str:
    """One line: what could not be written, why, the free space, and the checkpoint that is left intact."""
    reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0])[:200]
    full = getattr(e, "errno", None) in NO_SPACE_ERRNOS or any(t in str(e) for t in _NO_SPACE_TEXT)
    try:
        free = f"{shutil.disk_usage(run_dir).free / 2**20:.0f} MiB free on that disk"
    except OSError:
        free = "free space unknown"
    intact = [p for _, p in list_checkpoints(run_dir) if p != target]
    kept = f"the previous checkpoint {intact[-1]} is intact" if intact else "no earlier checkpoint exists"
    if target.name == "best" and target.is_dir():
        kept = f"{target} still holds the previous best model; {kept}"
    what = "the disk is full or a file-size limit was hit" if full else "the write failed"
    return (f"could not write {target} ({reason}): {what} ({free}); {kept}. Free space (or fix the disk) and rerun "
            f"with --resume (resume=True)")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
