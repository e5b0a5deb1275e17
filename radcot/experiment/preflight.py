"""The preflight: before any stage runs, resolve everything a pipeline will need and list every problem.

Checked (each in seconds, network probes bounded by :mod:`radcot.net`): the dataset's topics and qrels,
the index (a local directory, a downloaded pyserini prebuilt index, or one that can be downloaded now),
every student model (``tiny-t5`` specs, a local directory with a config and a tokenizer, or a hub name in
the local Hugging Face cache or answered by the hub), dense encoders named by ``dense_encoder``, the teacher
endpoints (``GET {base_url}/models`` for ``openai`` backends), files named by ``replay``/``kb`` backends, CoT rows
and training-query files. ``radcot run --check`` runs only this.

Its input is a :class:`PreflightInput`: the validated config, a dataset accessor and which setting each
``${param}`` filled in. Each problem is one line that names the setting to change -- the ``params.NAME`` a value
came from when it came from one (``--set params.train_queries=FILE``) -- and carries no Java stack frames (a JVM
exception becomes its one-line Java message).

Example:
    >>> from radcot.pipeline import Pipeline
    >>> Pipeline.from_yaml("pipelines/demo.yaml").check()  # doctest: +SKIP
    []
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from radcot.experiment.schema import PipelineConfig, TeacherSection
from radcot.records import RadcotError

logger = logging.getLogger("radcot.pipeline")

PROBE_TIMEOUT_S = 5.0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
_PREBUILT_HOST = "https://rgw.cs.uwaterloo.ca"
#: a Java stack frame as jnius prints it: ``io.anserini.search.topicreader.TopicReader.getTopics(TopicReader.java:127)``
_JAVA_FRAME = re.compile(r"\s*(?:at\s+)?[\w$]+(?:\.[\w$<>]+)+\([\w$]+\.java:\d+\)")
_JAVA_WRAPPER = re.compile(r"(?:JavaException:\s*)?JVM exception occurred:\s*")


@dataclasses.dataclass(frozen=True)
class PreflightInput:
    """What the preflight checks.

    Args:
        config: the validated pipeline config.
        dataset: returns the evaluation dataset (raises :class:`~radcot.records.RadcotError` when it cannot load).
        rows: only what these rows need (None: every row).
        origins: ``{setting: param}`` for settings a ``${param}`` filled in (``training_queries.queries`` ->
            ``train_queries``): problems then name ``params.train_queries``.
    """

    config: PipelineConfig
    dataset: Callable[[], Any]
    rows: Sequence[str] | None = None
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def setting(self, path: str, shown: str | None = None) -> str:
        """``path`` as the user changes it: ``shown`` (default ``path``), plus ``(from params.NAME)`` when a
        ``${NAME}`` filled it in."""
        name = self.origins.get(path)
        return f"{shown or path} (from params.{name}: --set params.{name}=...)" if name else (shown or path)

    def selected(self) -> list:
        return [r for r in self.config.rows if not self.rows or r.name in self.rows]


def one_line(problem: str) -> str:
    """A problem without Java stack frames (a JVM exception becomes its one-line Java message), on one line."""
    text = _JAVA_WRAPPER.sub("", problem)
    text = _JAVA_FRAME.sub("", text)
    text = " ".join(text.split())
    m = re.search(r"(\b[\w.$]+(?:Exception|Error): [^()]*?) \1", text)  # jnius repeats the Java message
    while m:
        text = text.replace(m.group(0), m.group(1))
        m = re.search(r"(\b[\w.$]+(?:Exception|Error): [^()]*?) \1", text)
    return text


def _load_dataset(inp: PreflightInput) -> tuple[Any, list[str]]:
    """The dataset (None when it does not load) and its problems."""
    from radcot.net import network_timeout

    ds_cfg = inp.config.dataset
    where = inp.setting("dataset.data_dir") if ds_cfg.name else inp.setting("dataset.path")
    try:
        with network_timeout(PROBE_TIMEOUT_S * 2):
            ds = inp.dataset()
    except RadcotError as e:
        return None, [f"{where}: {e}"]
    problems = []
    if ds.queries_path is None or not Path(ds.queries_path).is_file():
        problems.append(f"{where}: {ds.name} has no queries file (queries.jsonl / queries.tsv / topics)")
    if ds.qrels_path is None or not Path(ds.qrels_path).is_file():
        problems.append(f"{where}: {ds.name} has no qrels file (qrels/test.tsv)")
    return ds, problems


def _prebuilt_cached(name: str) -> bool:
    cache = Path(os.environ.get("PYSERINI_CACHE", Path.home() / ".cache" / "pyserini")) / "indexes"
    return cache.is_dir() and any(name in child.name for child in cache.iterdir())


def _index_problems(inp: PreflightInput, ds) -> list[str]:
    from radcot.net import reachable

    if ds is None:
        return []
    if not ds.index:
        return [] if ds.corpus is not None else [f"dataset: {ds.name} has no corpus to index; set "
                                                 f"{inp.setting('dataset.index')} to an index"]
    index = str(ds.index)
    setting = inp.setting("dataset.index")
    if Path(index).is_dir():
        return []
    if os.sep in index or index.startswith("."):
        return [f"{setting}: directory {index} does not exist (build one with `radcot index --collection PATH "
                f"--index {index}`)"]
    if _prebuilt_cached(index) or reachable(_PREBUILT_HOST, PROBE_TIMEOUT_S):
        return []
    return [f"{setting}: prebuilt index {index!r} is not downloaded and its server did not answer within "
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


def _student_problems(inp: PreflightInput) -> list[str]:
    """Every selected student row's model, and the dense encoders of dense/fused context."""
    problems: list[str] = []
    seen: dict[str, str | None] = {}
    for row in inp.selected():
        if row.kind != "student":
            continue
        spec = inp.config.student_for(row)
        where = inp.setting(f"rows.{row.name}.student.model")
        if spec.model not in seen:
            seen[spec.model] = _model_problem(where, spec.model)
            if seen[spec.model]:
                problems.append(seen[spec.model])
        encoder = spec.dense_encoder if spec.context and spec.context_retriever != "bm25" else None
        if encoder is not None and encoder not in seen:
            seen[encoder] = _encoder_problem(f"rows.{row.name}.student.dense_encoder", encoder)
            if seen[encoder]:
                problems.append(seen[encoder])
    return problems


def _encoder_problem(where: str, encoder: str) -> str | None:
    """None when the sentence-transformers encoder resolves to a local directory or a cached/hub model."""
    from radcot.retrieval.dense import resolve_encoder

    _, source = resolve_encoder(encoder)
    if Path(source).is_dir():
        return None
    if os.path.isabs(source) or source.startswith("."):
        return f"{where}: encoder directory {source} does not exist"
    return _hub_model_problem(where, source)


def _teacher_problems(inp: PreflightInput, section: str, t: TeacherSection) -> list[str]:
    from radcot.net import NetworkError, get_json

    args = t.args
    if t.backend == "openai":
        base = str(args.get("base_url") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        key_env = args.get("api_key_env", "OPENAI_API_KEY")
        key = os.environ.get(key_env) if key_env else None
        if "api.openai.com" in base and not key:
            return [f"{section}.args: the OpenAI API needs a key: export {key_env}=... (or set "
                    f"{inp.setting(f'{section}.args.base_url')} to an OpenAI-compatible server)"]
        try:
            get_json(f"{base}/models", timeout=PROBE_TIMEOUT_S,
                     headers={"Authorization": f"Bearer {key}"} if key else None)
        except NetworkError as e:
            return [f"{section}: the teacher endpoint does not answer: {e} (check "
                    f"{inp.setting(f'{section}.args.base_url')})"]
        return []
    files = {"replay": "path", "kb": "world"}
    if t.backend in files:
        key = files[t.backend]
        paths = args.get(key)
        setting = inp.setting(f"{section}.args.{key}")
        if not paths:
            return [f"{setting}: not set (the {t.backend} backend reads it); add it or --set {section}.args.{key}=PATH"]
        paths = paths if isinstance(paths, list) else [paths]
        return [f"{setting}: {x} does not exist{_cwd_note(x)}" for x in paths if not Path(str(x)).exists()]
    return []


def _cwd_note(path: Any) -> str:
    return "" if os.path.isabs(str(path)) else f" (relative to the current directory {os.getcwd()})"


def _teachers_needed(inp: PreflightInput) -> list[str]:
    selected = inp.selected()
    needed = []
    if any(r.kind == "student" for r in selected):
        needed.append("teacher")
    if any(r.kind == "cots" and r.cots == "teacher" for r in selected):
        needed.append("teacher_eval" if inp.config.teacher_eval is not None else "teacher")
    return sorted(set(needed))


def _file_problems(inp: PreflightInput) -> list[str]:
    problems = []
    for i, r in enumerate(inp.config.rows):
        if r in inp.selected() and r.kind == "cots" and r.cots != "teacher" and not Path(r.cots).exists():
            problems.append(f"{inp.setting(f'rows[{i}].cots', f'rows.{r.name}.cots')}: CoT file {r.cots} does not "
                            f"exist{_cwd_note(r.cots)}")
    tq = inp.config.training_queries
    needs_queries = any(r.kind == "student" for r in inp.selected())
    if needs_queries and tq.mode == "split" and tq.queries and not Path(tq.queries).is_file():
        problems.append(f"{inp.setting('training_queries.queries')}: {tq.queries} does not exist"
                        f"{_cwd_note(tq.queries)}")
    return problems


def preflight(inp: PreflightInput) -> list[str]:
    """Every problem that would stop the pipeline (only what ``inp.rows`` need, when given), one line each
    naming the setting to change; empty when ready."""
    import time

    t0 = time.perf_counter()
    ds, problems = _load_dataset(inp)
    problems += _index_problems(inp, ds) + _student_problems(inp) + _file_problems(inp)
    for section in _teachers_needed(inp):
        problems += _teacher_problems(inp, section, inp.config.teacher_for(section))
    logger.info("preflight: %d problem(s) in %.1f s", len(problems), time.perf_counter() - t0)
    return [one_line(p) for p in problems]
