"""Teacher backend that replays existing outputs keyed by query id.

Reads the official RADCoT davinci-003 CoTs (``qid \\t query \\t cot \\t alignment_cosine``,
``teacher-cot-davinci003/{dl19,dl20,dev-subset}.tsv``), query2doc-style ``qid \\t text`` files, or a
radcot teacher JSONL (see :func:`radcot.teacher.runner.read_teacher_output`). A query id absent from
every file (or present only as a failure/empty output) is answered with a :class:`TeacherError`
naming the files, so the runner records it as failed.

Example:
    >>> from radcot.teacher import get_backend, teach
    >>> be = get_backend("replay", path="teacher-cot-davinci003/dl19.tsv")  # doctest: +SKIP
    >>> teach(be, "topics.dl19-passage.txt", "dl19.cots.jsonl")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from radcot.teacher._checks import check_path, check_str
from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem
from radcot.teacher.runner import config_path, is_usable, read_teacher_output


class ReplayBackend(TeacherBackend):
    """Answer queries from recorded teacher outputs.

    Args:
        path: one file or a list of files (later files win for a query id present in several).
        model: name recorded as the model (default: the JSONL's recorded model, else ``replay:<file names>``).
    """

    name = "replay"
    batch_size = 64

    def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike], model: str | None = None):
        if isinstance(path, (str, os.PathLike)):
            paths = [path]
        elif isinstance(path, (list, tuple)):
            paths = [check_path("ReplayBackend", f"path[{i}]", p) for i, p in enumerate(path)]
        else:
            raise TypeError(f"ReplayBackend: path must be a file path or a list of file paths, got {path!r} "
                            f"({type(path).__name__})")
        if not paths:
            raise ValueError("the replay backend needs at least one file (--replay-file F)")
        check_str("ReplayBackend", "model", model, optional=True, nonempty=True)
        self.paths = [Path(p) for p in paths]
        self.records: dict[str, dict] = {}
        recorded_models = []
        for p in self.paths:
            self.records.update(read_teacher_output(p))
            cfg = config_path(p)
            if p.suffix == ".jsonl" and cfg.exists():
                recorded_models.append(json.loads(cfg.read_text(encoding="utf-8")).get("model"))
        if model is None:
            names = ",".join(p.name for p in self.paths)
            if len(set(recorded_models)) == 1 and recorded_models[0]:
                rec = str(recorded_models[0])
                model = rec if rec.startswith("replay:") else f"replay:{rec}"
            else:
                model = f"replay:{names}"
        self.model = model

    def config(self) -> dict[str, Any]:
        return {"paths": [str(p) for p in self.paths], "n_records": len(self.records)}

    def generate(self, items: Sequence[TeachItem], params: GenerationParams) -> list[Generation | TeacherError]:
        out: list[Generation | TeacherError] = []
        for item in items:
            rec = self.records.get(item.query.query_id)
            if rec is None:
                out.append(TeacherError(
                    f"query id {item.query.query_id!r} is not in the replay file(s) "
                    f"{', '.join(map(str, self.paths))} ({len(self.records)} query ids there)"
                ))
            elif not is_usable(rec) and rec.get("error") is not None:
                out.append(TeacherError(f"query id {item.query.query_id!r} failed in the replayed run: {rec['error']}"))
            else:
                out.append(Generation(
                    text=rec.get("text") or "",
                    finish_reason=rec.get("finish_reason") or "stop",
                    prompt_tokens=int(rec.get("prompt_tokens") or 0),
                    completion_tokens=int(rec.get("completion_tokens") or 0),
                ))
        return out
