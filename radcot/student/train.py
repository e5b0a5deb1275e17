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

import csv
import dataclasses
import json
import logging
import math
import os
import random
import re
import shutil
import time
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
                  "log_examples"}


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
        scheduler: ``constant`` or ``linear`` (decay to 0 at ``max_steps``), both after ``warmup_steps``.
        warmup_steps: linear warm-up steps.
        eval_every: evaluate on the dev split every this many steps (0: only at the end).
        eval_batch_size: dev examples per generation batch.
        eval_max_new_tokens: generated tokens per dev example (teacher length, 150 by default).
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
    clip: float = 1.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    eval_every: int = 100
    eval_batch_size: int = 16
    eval_max_new_tokens: int = 150
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
        for name in ("data", "model", "out"):
            setattr(self, name, str(getattr(self, name)))
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
        if self.eval_max_examples is not None and self.eval_max_examples < 1:
            raise ValueError(f"TrainConfig.eval_max_examples must be >= 1 or None, got {self.eval_max_examples}")

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
        if self.select_formula not in ("radcot", "query2doc", "none"):
            raise ValueError(f"TrainConfig.select_formula must be radcot, query2doc or none (BM25), "
                             f"got {self.select_formula!r}")
        import ir_measures

        try:
            ir_measures.parse_measure(self.select_metric)
        except (ValueError, NameError, SyntaxError, TypeError) as e:
            raise ValueError(f"TrainConfig.select_metric {self.select_metric!r} is not an ir-measures name "
                             f"(e.g. nDCG@10, RR@10, AP): {e}") from e

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
            import yaml

            try:
                d = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f":{mark.line + 1}" if mark is not None else ""
                raise ValueError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        else:
            d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .yaml/.yml name is read as YAML") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of TrainConfig fields (lr: ..., max_steps: ...), "
                         f"got {type(d).__name__}")
    return d


# ------------------------------------------------------------------------------------------ helpers


class _Dist:
    """Process-group facts (a single process when not launched by torchrun)."""

    def __init__(self, torch):
        self.torch = torch
        dist = torch.distributed
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = self.world > 1
        self.initialized_here = False
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
            self.initialized_here = True
        self.rank = dist.get_rank() if self.enabled else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.main = self.rank == 0

    def barrier(self):
        if self.enabled:
            self.torch.distributed.barrier()

    def all_gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        self.torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        self.torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = self.torch.tensor([value], dtype=self.torch.float64)
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


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, ``[(step, path)]`` sorted by step."""
    root = Path(run_dir) / "checkpoints"
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / STATE_FILE).is_file() and (p / "config.json").is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


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


def _check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    saved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    saved = {**defaults, **saved}  # a run written before a field existed ran with its default
    now = config.to_dict()
    diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
            if k not in RESUME_MUTABLE and k != "out" and saved.get(k) != now.get(k)}
    if diff:
        desc = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise TrainingError(f"cannot resume {run_dir}: its config differs ({desc}). Use the same settings, "
                            f"or a new --out directory for a new run")


# ------------------------------------------------------------------------------------------ training


def train(config: TrainConfig, *, resume: bool = False, show_progress: bool | None = None,
          stop_after: int | None = None) -> Path:
    """Train a FiD student; returns the run directory (best model at ``RUN_DIR/best``).

    Global RNG state: ``train()`` seeds Python's ``random`` and torch's global generators with
    ``config.seed + rank`` (dropout and the data order depend on them) and leaves them in their end-of-run
    state; callers that need their own random stream afterwards should re-seed.

    Args:
        config: the :class:`TrainConfig`.
        resume: continue from the last complete checkpoint in ``config.out`` if there is one (else start).
            Without it, an ``out`` that already holds a run is an error.
        show_progress: progress bar (default: from the log level).
        stop_after: end this invocation after that step, without a final save, as if the process had
            been killed there (for testing resume and for time-sliced jobs).

    Returns:
        ``Path(config.out)``.

    Raises:
        TrainingError: ``out`` holds another run (without ``resume``) or a run with a different config.
        DistillationDataError: the data directory is not a distillation dataset.
    """
    torch = require("torch", "student training")
    dist = _Dist(torch)
    try:
        run = _Run(config, dist, torch)
        resume_from = run.prepare_run_dir(resume)
        if resume_from is _FINISHED:
            return run.run_dir
        run.load_data()
        run.choose_device()
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


_FINISHED = object()


class _Run:
    """One training run's state and its steps (set up, data, device, model, one step, evaluate, checkpoint)."""

    def __init__(self, config: TrainConfig, dist: _Dist, torch):
        self.config, self.dist, self.torch = config, dist, torch
        self.run_dir = Path(config.out)
        self.t_start = time.time()
        self.step, self.epoch, self.batch_pos, self.examples_seen = 0, 0, 0, 0
        self.best: dict[str, Any] = {"step": None, "value": None}
        self.resume_step = 0
        self.scaler = None
        self.examples_log = None

    # ---------------------------------------------------------------- set up
    def prepare_run_dir(self, resume: bool):
        """Check the run directory; returns the checkpoint to resume from (None: start; _FINISHED: done)."""
        run_dir, config, dist = self.run_dir, self.config, self.dist
        ckpts = list_checkpoints(run_dir)
        if (run_dir / CONFIG_FILE).exists():
            if not resume:
                raise TrainingError(f"{run_dir} already holds a training run; pass --resume (resume=True) to continue "
                                    f"it, or choose another --out")
            _check_resume_config(run_dir, config)
        elif ckpts:
            raise TrainingError(f"{run_dir} has checkpoints but no {CONFIG_FILE}; it was not written by radcot train")
        resume_from = ckpts[-1] if (resume and ckpts) else None
        self.resume_step = resume_from[0] if resume_from else 0
        if self.resume_step >= config.max_steps and (run_dir / "best").is_dir():
            logger.info("train: %s already finished (%d steps)", run_dir, self.resume_step)
            return _FINISHED
        dist.barrier()  # every rank has inspected run_dir before rank 0 writes into it
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / CONFIG_FILE, config.to_dict())
            for stale in (run_dir / "checkpoints").glob(".step-*.tmp") if (run_dir / "checkpoints").is_dir() else []:
                shutil.rmtree(stale, ignore_errors=True)  # half-written checkpoint of a killed run
        dist.barrier()
        return resume_from

    # ---------------------------------------------------------------- data
    def load_data(self) -> None:
        from radcot.student.data import NO_CONTEXT_TEMPLATE, PASSAGE_TEMPLATE, load_distillation_data

        config = self.config
        dd, meta = load_distillation_data(config.data)
        self.train_ds = dd["train"]
        self.dev_ds = dd["dev"] if "dev" in dd else None
        self.no_context = bool(meta.get("no_context", False))
        self.n_context = 1 if self.no_context else (config.n_context or int(meta.get("k") or 10))
        template = config.template or (NO_CONTEXT_TEMPLATE if self.no_context else PASSAGE_TEMPLATE)
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
    def choose_device(self) -> None:
        torch, config = self.torch, self.config
        device, why = _pick_device(torch, config.device, self.dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
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
        decay, no_decay = [], []
        for name, p in student.named_parameters():
            (no_decay if ("layer_norm" in name or name.endswith(".bias")) else decay).append(p)
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.model = student
        if dist.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if resume_from is not None:
            self._restore(resume_from[1])
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

    def _restore(self, ckpt: Path) -> None:
        state = self.torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
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
            bar.write(f"step {self.step}: dev loss {result['dev_loss']:.4f}  ROUGE-L {result['rougeL']:.4f}{extra}")
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
            result.update(self._retrieval_score(rows, preds))
        with open(_mkdir(self.run_dir / "eval") / f"step-{self.step}.jsonl", "w", encoding="utf-8") as f:
            for r, p in zip(rows, preds):
                f.write(json.dumps({"query_id": r["query_id"], "query": r["query"], "prediction": p,
                                    "target": r["target"]}, ensure_ascii=False) + "\n")
        return result

    def _retrieval_score(self, rows: list[dict], cots: list[str]) -> dict:
        """Expand the dev queries with their generated CoTs, search BM25, evaluate on the judged ones."""
        from radcot.evaluation import evaluate
        from radcot.expansion import expand_text

        config = self.config
        if getattr(self, "_retriever", None) is None:  # opened once per run
            from radcot.data.readers import read_qrels
            from radcot.retrieval.bm25 import BM25Retriever

            self._retriever = BM25Retriever(config.select_index)
            qpath = Path(config.select_qrels)
            self._select_qrels = read_qrels(qpath, split="train" if qpath.is_dir() else None)
        dev_ids = {r["query_id"] for r in rows}
        qrels = {}
        for q in self._select_qrels:
            if q.query_id in dev_ids:
                qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
        if not qrels:
            raise TrainingError(f"select_by=retrieval: none of the {len(dev_ids)} dev queries has judgements in "
                                f"{config.select_qrels}; pass the qrels of the training queries")
        queries = {r["query_id"]: expand_text(r["query"], c, config.select_formula)
                   for r, c in zip(rows, cots) if r["query_id"] in qrels}
        run = self._retriever.batch_search(queries, k=config.select_k)
        value = evaluate(qrels, run, [config.select_metric])[config.select_metric]
        return {config.select_metric: float(value), "n_select": len(queries)}

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
            with atomic_dir(final) as tmp:
                self.student.save_into(tmp, {"step": self.step})
                torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                            "rng": rng, "world_size": dist.world, **pos}, tmp / STATE_FILE)
                write_json(tmp / "trainer_state.json", {**pos, "world_size": dist.world})
            for _, old in list_checkpoints(self.run_dir)[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def save_best(self, reason: dict) -> None:
        self.student.save_pretrained(self.run_dir / "best", {"step": self.step, "train_config": self.config.to_dict(),
                                                             "precision": self.precision, **reason})

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


def _pick_device(torch, asked: str, local_rank: int):
    """``(torch.device, reason)`` for ``TrainConfig.device``."""
    if asked != "auto":
        return torch.device(asked), "asked for"
    if torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}"), "auto: CUDA is available"
    return torch.device("cpu"), "auto: this torch sees no CUDA GPU"


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


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
