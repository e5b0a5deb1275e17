"""``radcot run CONFIG --rehearse``: run a paper config end to end offline, with miniature stand-ins.

The TREC DL / MS MARCO configs need MS MARCO, an LLM endpoint and a GPU. A rehearsal runs the SAME config
(rows, stages, metrics, prompt, expansion formula, ``n_context``, generation settings) with only the heavy
resources swapped, each swap logged as one ``rehearse: <what> -> <stand-in>`` line:

- data: a deterministic MS MARCO-format miniature generated from the demo world's generator
  (:func:`make_miniature`): ``collection.tsv``, ``queries.train.tsv``, the DL19/DL20/dev-subset topics and
  graded 0-3 qrels (binary for dev, as MS MARCO's) under the file names the named datasets read from a
  local ``data_dir`` (:data:`radcot.data.registry.NAMED`); the pipeline indexes ``collection.tsv`` with the
  real BM25 code;
- teacher for the training queries: the config's ``openai`` backend pointed at a local OpenAI-compatible
  server (``radcot teacher-serve --backend kb``) started for the rehearsal (:func:`teacher_server`);
- the LLM-CoT row: a replay of CoT files in the official release format (``qid \\t query \\t cot \\t cosine``);
- students: flan-t5-shaped stand-ins (:func:`radcot.student.standin.build_flan_t5_standin`), one per size,
  trained for a handful of steps at the config's other settings; a student model that is a local directory
  (``--set rows.NAME.student.model=DIR``, ``params.models_dir``) is used as given;
- several training processes (``student.train.nproc_per_node > 1``) become 2 CPU ranks.

Everything generated lives under ``<runs_dir>/_rehearsal/<hash>/`` and is byte-identical on every call,
so stage hashes agree across the three DL configs.

Example:
    >>> from radcot.rehearse import run_rehearsal
    >>> exp_dir = run_rehearsal("pipelines/trec-dl-2019.yaml")  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from radcot.records import RadcotError
from radcot.utils import env_var

logger = logging.getLogger("radcot.rehearse")

#: bump when the miniature's content changes (it is part of the directory name)
MINIATURE_VERSION = 1
#: the world the miniature is generated from (small enough for ~2 min per config on 2 cores)
WORLD = {"seed": 2019, "scale": 0.2, "n_test": 66}
#: student training in a rehearsal: a handful of steps, evaluated and saved along the way
#: (eval_max_new_tokens is the in-training dev evaluation only; generate: settings stay the config's)
TRAIN_SWAPS = {"max_steps": 3, "eval_every": 2, "save_every": 2, "eval_max_examples": 4, "eval_max_new_tokens": 32}
#: official release file name per named dataset (teacher-cot-davinci003/<file>)
COT_FILES = {"msmarco-passage/trec-dl-2019": "dl19.tsv", "msmarco-passage/trec-dl-2020": "dl20.tsv",
             "msmarco-passage/dev-subset": "dev-subset.tsv"}
#: which third of the world's test queries each dataset gets; dev qrels are binary like MS MARCO's
_SPLITS = {"msmarco-passage/trec-dl-2019": 0, "msmarco-passage/trec-dl-2020": 1, "msmarco-passage/dev-subset": 2}
_UNJUDGED_TOPICS = 3  # DL topic files list topics without judgements too (DL19: 200 topics, 43 judged)
_TRAIN_QID0, _EVAL_QID0 = 100_000, 900_000


class RehearsalError(RadcotError, ValueError):
    """A config that cannot be rehearsed (names the key and why)."""


@dataclasses.dataclass(frozen=True)
class Miniature:
    """Paths of a generated miniature (see :func:`make_miniature`)."""

    root: Path

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def msmarco_dir(self) -> Path:
        return self.root / "msmarco"

    def cot_file(self, dataset: str) -> Path:
        return self.root / "teacher-cot-davinci003" / COT_FILES[dataset]

    def model_dir(self, size: str) -> Path:
        return self.root / "models" / f"flan-t5-{size}"


def say(what: str, standin: Any) -> str:
    """Log (and return) one swap line: ``rehearse: <what> -> <stand-in>``."""
    line = f"rehearse: {what} -> {standin}"
    logger.info(line)
    return line


# ------------------------------------------------------------------------------------------ miniature

def miniature_root(runs_dir: str | os.PathLike | None = None) -> Path:
    """``<runs_dir>/_rehearsal/<hash of the generator settings>``."""
    runs = Path(runs_dir or os.environ.get("RADCOT_RUNS_DIR", "runs"))
    key = hashlib.sha256(repr((MINIATURE_VERSION, sorted(WORLD.items()))).encode()).hexdigest()[:12]
    return runs / "_rehearsal" / f"mini-{key}"


def make_miniature(runs_dir: str | os.PathLike | None = None) -> Miniature:
    """Generate (once) the MS MARCO-format miniature, its official-format CoT files and student stand-ins."""
    from radcot.locks import output_lock
    from radcot.utils import atomic_dir, write_json

    root = miniature_root(runs_dir)
    mini = Miniature(root)
    if (root / "DONE.json").is_file():
        return mini
    with output_lock(root, "rehearsal miniature"):
        if (root / "DONE.json").is_file():
            return mini
        with atomic_dir(root) as tmp:
            _generate(Miniature(Path(tmp)))
            write_json(Path(tmp) / "DONE.json", {"version": MINIATURE_VERSION, "world": WORLD})
    logger.info("rehearsal miniature written to %s", root)
    return mini


def _generate(mini: Miniature) -> None:
    from radcot.demo.world import make_world

    make_world(mini.world, **WORLD)
    pids = _write_msmarco(mini)
    _write_official_cots(mini)
    texts = [line.split("\t", 1)[1] for line in
             (mini.msmarco_dir / "collection.tsv").read_text(encoding="utf-8").splitlines()]
    texts += [line.split("\t", 1)[1] for line in
              (mini.msmarco_dir / "queries.train.tsv").read_text(encoding="utf-8").splitlines()]
    _build_students(mini, texts)
    logger.debug("miniature: %d passages", len(pids))


def _read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_msmarco(mini: Miniature) -> dict[str, str]:
    """collection.tsv, queries.train.tsv, per dataset topics + qrels; returns world doc id -> pid."""
    from radcot.data.readers import read_corpus, read_qrels

    out = mini.msmarco_dir
    out.mkdir(parents=True)
    docs = sorted(read_corpus(mini.world / "corpus.jsonl"), key=lambda d: d.doc_id)
    pids = {d.doc_id: str(i) for i, d in enumerate(docs)}
    _write(out / "collection.tsv", [f"{pids[d.doc_id]}\t{_clean(d.text)}" for d in docs])
    train = _read_tsv(mini.world / "queries.train.tsv")
    _write(out / "queries.train.tsv", [f"{_TRAIN_QID0 + i}\t{text}" for i, (_, text) in enumerate(train)])
    test = _read_tsv(mini.world / "queries.test.tsv")
    qrels: dict[str, list] = {}
    for q in read_qrels(mini.world / "qrels" / "test.tsv"):
        qrels.setdefault(q.query_id, []).append(q)
    from radcot.data.registry import NAMED

    for name, part in _SPLITS.items():
        mine = [(f"{_EVAL_QID0 + i}", wid, text) for i, (wid, text) in enumerate(test) if i % 3 == part]
        judged = mine[:-_UNJUDGED_TOPICS] if name != "msmarco-passage/dev-subset" else mine
        _write(out / NAMED[name].topics_file, [f"{qid}\t{text}" for qid, _, text in mine])
        lines = [line for qid, wid, _ in judged for line in
                 _qrel_lines(qid, qrels.get(wid, []), pids, binary=name.endswith("dev-subset"))]
        _write(out / NAMED[name].qrels_file, lines)
    return pids


def _qrel_lines(qid: str, judged: list, pids: dict[str, str], binary: bool) -> list[str]:
    """TREC qrels for one query: graded 0-3 (DL style) or binary 1 (MS MARCO dev style).

    The world grades 2 (passage stating the fact) and 1 (mentioning it). DL grading: the first stating
    passage 3 ("perfectly relevant"), other stating ones 2, mentions 1, and two judged non-relevant (0)
    passages drawn deterministically.
    """
    stating = sorted((pids[q.doc_id] for q in judged if q.relevance >= 2), key=int)
    if binary:
        return [f"{qid} 0 {pid} 1" for pid in stating]
    mentions = sorted((pids[q.doc_id] for q in judged if q.relevance == 1), key=int)
    grades = {pid: (3 if i == 0 else 2) for i, pid in enumerate(stating)}
    grades.update({pid: 1 for pid in mentions if pid not in grades})
    rng = random.Random(int(qid))
    for pid in rng.sample(sorted(pids.values(), key=int), 6):
        if len(grades) >= len(stating) + len(mentions) + 2:
            break
        grades.setdefault(pid, 0)
    return [f"{qid} Q0 {pid} {g}" for pid, g in sorted(grades.items(), key=lambda t: int(t[0]))]


def _write_official_cots(mini: Miniature) -> None:
    """The LLM-CoT row's input: ``qid \\t query \\t cot \\t cosine`` per eval topic, as the RADCoT release."""
    from radcot.data.registry import NAMED
    from radcot.demo.kb import KBTeacher

    kb = KBTeacher(mini.world)
    for name in _SPLITS:
        rows = []
        for qid, text in _read_tsv(mini.msmarco_dir / NAMED[name].topics_file):
            cot = _clean(kb.answer(text) or "")
            cosine = 0.5 + (int(hashlib.sha256(qid.encode()).hexdigest(), 16) % 5000) / 10000
            rows.append(f"{qid}\t{text}\t{cot}\t{cosine:.4f}")
        path = mini.cot_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, rows)


def _build_students(mini: Miniature, texts: list[str]) -> None:
    from radcot.student.data import NO_CONTEXT_TEMPLATE, PASSAGE_TEMPLATE
    from radcot.student.standin import FLAN_T5_STANDIN_SIZES, build_flan_t5_standin

    texts = texts + [PASSAGE_TEMPLATE, NO_CONTEXT_TEMPLATE] * 20
    for seed, size in enumerate(FLAN_T5_STANDIN_SIZES):
        build_flan_t5_standin(texts, mini.model_dir(size), size=size, vocab_size=1000, seed=seed)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _write(path: Path, lines: Sequence[str]) -> None:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))


# ------------------------------------------------------------------------------------------ config swaps

def standin_size(model: str) -> str | None:
    """``small``/``base``/``large`` for a flan-t5/t5 hub name (xl, xxl -> large); None for other models."""
    m = re.search(r"t5(?:-v1_1)?-(small|base|large|xl|xxl)\b", str(model))
    if not m:
        return None
    return {"xl": "large", "xxl": "large"}.get(m.group(1), m.group(1))


def rehearsal_config(config: dict, mini: Miniature, teacher_url: str, teacher_model: str,
                     cuda: bool = False) -> tuple[dict, list[str]]:
    """The config with its heavy resources swapped for the miniature's stand-ins; returns (config, swap lines).

    ``config`` is a resolved pipeline config (``Pipeline(...).config``: params substituted, every default filled
    in); the result is validated again when the rehearsal's :class:`~radcot.pipeline.Pipeline` is built. The teacher's
    URL is not written into the config (the server's port changes every time, the stage hash must not):
    the caller exports it as ``$OPENAI_BASE_URL``, which the ``openai`` backend reads.
    """
    cfg = copy.deepcopy(config)
    swaps = [say("experiment", f"{cfg['experiment']}-rehearsal (its own runs directory)")]
    cfg["experiment"] = f"{cfg['experiment']}-rehearsal"
    name = _swap_dataset(cfg, mini, swaps)
    _swap_retriever(cfg, swaps)
    _swap_teacher(cfg, teacher_url, teacher_model, swaps)
    _swap_cots(cfg, mini.cot_file(name), swaps)
    tq = cfg["training_queries"]
    if tq["mode"] == "split" and tq["queries"]:
        swaps.append(say("training_queries.queries", mini.msmarco_dir / "queries.train.tsv"))
        tq["queries"] = str(mini.msmarco_dir / "queries.train.tsv")
    _swap_students(cfg, mini, cuda, swaps)
    return cfg, swaps


def _swap_dataset(cfg: dict, mini: Miniature, swaps: list[str]) -> str:
    ds = cfg.get("dataset") or {}
    name = ds.get("name")
    if name not in COT_FILES:
        raise RehearsalError(f"--rehearse stands in for MS MARCO: dataset.name must be one of {sorted(COT_FILES)}, "
                             f"got {name or ds.get('path')!r}; other configs run offline as they are")
    swaps.append(say(f"dataset {name} (data_dir {ds.get('data_dir')}, index {ds.get('index')})",
                     f"MS MARCO-format miniature {mini.msmarco_dir} (collection.tsv indexed by BM25)"))
    ds["data_dir"], ds["index"] = str(mini.msmarco_dir), None
    return name


def _swap_retriever(cfg: dict, swaps: list[str]) -> None:
    r = cfg.setdefault("retriever", {})
    for key, value in (("threads", min(int(r["threads"]), 2)), ("heap", "1g")):
        if r.get(key) != value:
            swaps.append(say(f"retriever.{key} {r.get(key)}", value))
            r[key] = value


def _swap_teacher(cfg: dict, url: str, model: str, swaps: list[str]) -> None:
    t = cfg["teacher"]
    if t.get("backend") in ("replay", "kb"):
        return  # already offline
    args = dict(t.get("args") or {}) if t.get("backend") == "openai" else {}
    swaps.append(say(f"teacher {t.get('backend')} {t.get('args', {}).get('base_url') or ''} "
                     f"{t.get('args', {}).get('model') or ''}".replace("  ", " ").strip(),
                     f"openai backend at {url} (radcot teacher-serve --backend kb, model {model})"))
    # the URL (a fresh port each time) goes through $OPENAI_BASE_URL, not the config: the stage hash stays put
    args.pop("base_url", None)
    args["model"] = model
    t["backend"], t["args"] = "openai", args


def _swap_cots(cfg: dict, cot_file: Path, swaps: list[str]) -> None:
    te = cfg.get("teacher_eval")
    if te and te.get("backend") == "replay":
        swaps.append(say(f"teacher_eval replay {te.get('args', {}).get('path')}", f"{cot_file} (official format)"))
        te["args"] = {**(te.get("args") or {}), "path": str(cot_file)}
    for row in cfg.get("rows") or []:
        if row.get("cots") not in (None, "teacher"):
            swaps.append(say(f"rows.{row['name']}.cots {row['cots']}", cot_file))
            row["cots"] = str(cot_file)


def _swap_students(cfg: dict, mini: Miniature, cuda: bool, swaps: list[str]) -> None:
    student = cfg.setdefault("student", {})
    places = [("student", student)] + [(f"rows.{r['name']}.student", r["student"]) for r in cfg.get("rows") or []
                                       if isinstance(r.get("student"), dict)]
    for where, s in places:
        size = standin_size(s.get("model", ""))
        if size and Path(str(s["model"])).is_dir():  # a model you named (--set, params.models_dir) is trained as is
            logger.info("rehearse: %s.model %s is a local directory: used as given, not swapped", where, s["model"])
        elif size:
            swaps.append(say(f"{where}.model {s['model']}", f"{mini.model_dir(size)} (flan-t5-{size}-shaped stand-in)"))
            s["model"] = str(mini.model_dir(size))
        if where == "student" or s.get("train"):
            _swap_train(where, s.setdefault("train", {}), cuda, swaps)


def _swap_train(where: str, train: dict, cuda: bool, swaps: list[str]) -> None:
    for key, value in TRAIN_SWAPS.items():
        swaps.append(say(f"{where}.train.{key} {train.get(key)}", value))
        train[key] = value
    if int(train.get("warmup_steps") or 0) > TRAIN_SWAPS["max_steps"]:
        swaps.append(say(f"{where}.train.warmup_steps {train['warmup_steps']}", 1))
        train["warmup_steps"] = 1
    if not cuda and train.get("precision") in ("bf16", "fp16"):
        swaps.append(say(f"{where}.train.precision {train['precision']}", "fp32 (no GPU)"))
        train["precision"] = "fp32"
    if int(train.get("nproc_per_node") or 1) > 1:
        swaps.append(say(f"{where}.train.nproc_per_node {train['nproc_per_node']}", "2 (CPU ranks)"))
        train["nproc_per_node"] = 2


# ------------------------------------------------------------------------------------------ teacher server

_SERVING = re.compile(r"radcot teacher-serve: serving (\S+) at (\S+)")


@contextlib.contextmanager
def teacher_server(world: str | os.PathLike, prompt: str = "radcot", timeout: float = 120.0) -> Iterator[tuple[str, str]]:
    """Start ``radcot teacher-serve --backend kb`` on a free port; yield ``(base_url, model)``; stop it after.

    The server is stopped (SIGTERM, then SIGKILL after 10 s) however the block ends.
    """
    cmd = [sys.executable, "-m", "radcot", "-q", "teacher-serve", "--backend", "kb", "--backend-arg",
           f"world={Path(world).resolve()}", "--port", "0", "--prompt", prompt, "--batch-size", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        url, model = _wait_for_url(proc, timeout)
        drain = threading.Thread(target=proc.stdout.read, daemon=True)  # keep the pipe from filling up
        drain.start()
        yield url, model
    finally:
        _stop(proc)


def _wait_for_url(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    found: list[tuple[str, str]] = []

    def read():
        for line in proc.stdout:
            m = _SERVING.search(line)
            if m:
                found.append((m.group(2), m.group(1)))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        code = proc.poll()
        raise RehearsalError(f"the rehearsal's teacher server ({' '.join(proc.args)}) "
                             + (f"exited with code {code}" if code is not None else f"printed no URL in {timeout:.0f} s")
                             + " (its error is above)")
    return found[0]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------ driver

def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise a logger to WARNING for the block (httpx logs every local request at INFO), then restore it."""
    log = logging.getLogger(name)
    old = log.level
    log.setLevel(max(old, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(old)


def run_rehearsal(path: str | os.PathLike, overrides: Sequence[str] = (), runs_dir: str | os.PathLike | None = None,
                  rows: Sequence[str] | None = None, show_progress: bool | None = None) -> Path:
    """Rehearse ``pipelines/X.yaml``: swap heavy resources for stand-ins, run it, return the experiment dir."""
    from radcot.pipeline import Pipeline

    t0 = time.perf_counter()
    original = Pipeline.from_yaml(path, overrides, runs_dir=runs_dir, show_progress=show_progress)
    mini = make_miniature(original.runs_dir)
    prompt = original.cfg.teacher.prompt
    with teacher_server(mini.world, prompt=prompt) as (url, model), env_var("OPENAI_BASE_URL", url), _quiet("httpx"):
        config, _ = rehearsal_config(original.config, mini, url, model, cuda=_cuda())
        pipeline = Pipeline(config, source=path, runs_dir=original.runs_dir, show_progress=show_progress)
        exp_dir = pipeline.run(rows=rows)
    logger.info("rehearse: %s finished in %.0f s (%s)", path, time.perf_counter() - t0, exp_dir)
    return exp_dir


__all__ = ["Miniature", "RehearsalError", "make_miniature", "rehearsal_config", "run_rehearsal", "teacher_server"]
