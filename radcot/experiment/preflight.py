"""The preflight: before any stage runs, resolve everything a pipeline will need and list every problem.

Checked (each in seconds, network probes bounded by :mod:`radcot.net`): the dataset's topics and qrels,
the index (a local directory, a downloaded pyserini prebuilt index, or one that can be downloaded now),
every student model (``tiny-t5`` specs, a local directory with a config and a tokenizer, or a hub name in
the local Hugging Face cache or answered by the hub), the teacher endpoints (``GET {base_url}/models`` for
``openai`` backends), files named by ``replay``/``kb`` backends, CoT rows and training-query files.
``radcot run --check`` runs only this.

Example:
    >>> from radcot.pipeline import Pipeline
    >>> Pipeline.from_yaml("pipelines/demo.yaml").check()  # doctest: +SKIP
    []
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from radcot.records import RadcotError

if TYPE_CHECKING:  # pragma: no cover
    from radcot.pipeline import Pipeline

logger = logging.getLogger("radcot.pipeline")

PROBE_TIMEOUT_S = 5.0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
_PREBUILT_HOST = "https://rgw.cs.uwaterloo.ca"


def _dataset_problems(p: "Pipeline") -> list[str]:
    from radcot.net import network_timeout

    try:
        with network_timeout(PROBE_TIMEOUT_S * 2):
            ds = p.dataset
    except RadcotError as e:
        return [f"dataset: {e}"]
    problems = []
    if ds.queries_path is None or not Path(ds.queries_path).is_file():
        problems.append(f"dataset: {ds.name} has no queries file (queries.jsonl / queries.tsv / topics)")
    if ds.qrels_path is None or not Path(ds.qrels_path).is_file():
        problems.append(f"dataset: {ds.name} has no qrels file (qrels/test.tsv)")
    return problems


def _prebuilt_cached(name: str) -> bool:
    cache = Path(os.environ.get("PYSERINI_CACHE", Path.home() / ".cache" / "pyserini")) / "indexes"
    return cache.is_dir() and any(name in child.name for child in cache.iterdir())


def _index_problems(p: "Pipeline") -> list[str]:
    from radcot.net import reachable

    ds = p._dataset
    if ds is None:
        return []
    if not ds.index:
        return [] if ds.corpus is not None else [f"dataset: {ds.name} has no corpus to index and no dataset.index"]
    index = str(ds.index)
    if Path(index).is_dir():
        return []
    if os.sep in index or index.startswith("."):
        return [f"dataset.index: directory {index} does not exist (build one with `radcot index --collection PATH "
                f"--index {index}`)"]
    if _prebuilt_cached(index) or reachable(_PREBUILT_HOST, PROBE_TIMEOUT_S):
        return []
    return [f"dataset.index: prebuilt index {index!r} is not downloaded and its server did not answer within "
            f"{PROBE_TIMEOUT_S:g} s; pass a local index directory with --set dataset.index=DIR (in the DL configs: "
            f"--set params.index=DIR)"]


def _model_problem(where: str, model: str) -> str | None:
    """None when the student model will load; else what is wrong and how to fix it."""
    if model.startswith("tiny-t5"):
        return None
    path = Path(model)
    if path.is_dir():
        missing = [] if (path / "config.json").is_file() else ["config.json"]
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            missing.append(f"a tokenizer ({', '.join(_TOKENIZER_FILES)})")
        return f"{where}: model directory {model} lacks {' and '.join(missing)}" if missing else None
    if os.path.isabs(model) or model.startswith(".") or model.count("/") > 1:
        return f"{where}: model directory {model} does not exist"
    return _hub_model_problem(where, model)


def _hub_model_problem(where: str, model: str) -> str | None:
    fix = (f"download it (`hf download {model} --local-dir DIR`) and pass --set {where}=DIR, or "
           f"--set params.models_dir=DIR holding {model}/")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return f"{where}: {model} needs huggingface_hub (pip install radcot[student])"
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return None
    from radcot.net import NetworkError, get_json, hub_status

    if not (hub := hub_status()).reachable:  # HF_HUB_OFFLINE, or the hub probed once per process
        return f"{where}: {model} is not in the local Hugging Face cache and {hub.reason}; {fix}"

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        get_json(f"{endpoint}/api/models/{model}", timeout=PROBE_TIMEOUT_S)
    except NetworkError as e:
        return f"{where}: {model} is not in the local Hugging Face cache and the hub did not confirm it ({e}); {fix}"
    return None


def _student_problems(p: "Pipeline", rows: Sequence[str] | None) -> list[str]:
    problems = []
    seen: dict[str, str | None] = {}
    for name, model in p.student_models().items():
        if rows and name not in rows:
            continue
        if model not in seen:
            seen[model] = _model_problem(f"rows.{name}.student.model", model)
            if seen[model]:
                problems.append(seen[model])
    return problems


def _teacher_problems(section: str, t: Mapping[str, Any]) -> list[str]:
    from radcot.net import NetworkError, get_json

    args = t.get("args") or {}
    backend = t.get("backend")
    if backend == "openai":
        base = str(args.get("base_url") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        key_env = args.get("api_key_env", "OPENAI_API_KEY")
        key = os.environ.get(key_env) if key_env else None
        if "api.openai.com" in base and not key:
            return [f"{section}.args: the OpenAI API needs a key: export {key_env}=..."]
        try:
            get_json(f"{base}/models", timeout=PROBE_TIMEOUT_S,
                     headers={"Authorization": f"Bearer {key}"} if key else None)
        except NetworkError as e:
            return [f"{section}: the teacher endpoint does not answer: {e} (check {section}.args.base_url)"]
        return []
    files = {"replay": "path", "kb": "world"}
    if backend in files:
        key = files[backend]
        paths = args.get(key)
        if not paths:
            return [f"{section}.args.{key}: not set (the {backend} backend reads it); add it or --set {section}.args.{key}=PATH"]
        paths = paths if isinstance(paths, list) else [paths]
        return [f"{section}.args.{key}: {x} does not exist" for x in paths if not Path(str(x)).exists()]
    return []


def _teachers_needed(p: "Pipeline", rows: Sequence[str] | None) -> list[str]:
    selected = [r for r in p.rows if not rows or r.name in rows]
    needed = []
    if any(r.kind == "student" for r in selected):
        needed.append("teacher")
    if any(r.kind == "cots" and r.spec.get("cots") == "teacher" for r in selected):
        needed.append("teacher_eval" if p.config.get("teacher_eval") else "teacher")
    return sorted(set(needed))


def _file_problems(p: "Pipeline", rows: Sequence[str] | None) -> list[str]:
    problems = []
    for r in p.rows:
        if (not rows or r.name in rows) and r.kind == "cots" and r.spec["cots"] != "teacher" \
                and not Path(r.spec["cots"]).exists():
            problems.append(f"rows.{r.name}.cots: CoT file {r.spec['cots']} does not exist")
    tq = p.config["training_queries"]
    if tq.get("mode") == "split" and tq.get("queries") and not Path(str(tq["queries"])).is_file():
        problems.append(f"training_queries.queries: {tq['queries']} does not exist")
    return problems


def preflight(p: "Pipeline", rows: Sequence[str] | None = None) -> list[str]:
    """Every problem that would stop ``p`` (only what ``rows`` need, when given); empty when ready."""
    import time

    t0 = time.perf_counter()
    problems = _dataset_problems(p) + _index_problems(p) + _student_problems(p, rows) + _file_problems(p, rows)
    for section in _teachers_needed(p, rows):
        problems += _teacher_problems(section, p.config[section])
    logger.info("preflight: %d problem(s) in %.1f s", len(problems), time.perf_counter() - t0)
    return problems
