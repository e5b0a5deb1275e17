"""Serve any teacher backend with ``radcot teacher-serve``: :class:`PromptBackend`.

``radcot teacher-serve`` (the app is :mod:`radcot.serving.teacher_app`, on the same FastAPI/uvicorn stack
as ``radcot serve``) lets one machine's model serve many ``radcot teach --backend openai`` workers. It
hands prompt-level backends (:class:`~radcot.teacher.hf.HFBackend`) rendered prompts directly; any
other backend (``kb``, ``replay``...) is served through :class:`PromptBackend`, which reads the query
back out of the rendered prompt (e.g. ``radcot run --rehearse`` serves the demo world's ``kb`` teacher to
the pipeline's ``openai`` backend).

Example:
    >>> from radcot.demo.kb import KBTeacher
    >>> from radcot.teacher.prompts import get_prompt
    >>> pb = PromptBackend(KBTeacher("data/demo"))  # doctest: +SKIP
    >>> pb.query_of(get_prompt("radcot").render("where was Velkor Danth born"))  # doctest: +SKIP
    'where was Velkor Danth born'
"""
from __future__ import annotations

from radcot.records import Query
from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem


class PromptBackend:
    """Serve a query-level :class:`TeacherBackend` (``kb``, ``replay``...) behind the prompt-level server API.

    The server hands over rendered prompts; this adapter recovers each query by matching the prompt
    template (``{query}`` becomes the query; a prompt that does not match is used whole as the query)
    and asks the backend. Requests get ids ``serve-1``, ``serve-2``...: backends keyed by query id (replay)
    therefore need their ids in the prompt, which is why this suits text-keyed backends like ``kb``.

    Args:
        backend: the backend to serve.
        prompt: the prompt (a name or a template with ``{query}``) clients render (default ``radcot``).
    """

    chat = False  # chat messages are joined as plain text, then matched against the template

    def __init__(self, backend: TeacherBackend, prompt: str = "radcot"):
        import re

        from radcot.teacher.prompts import get_prompt

        if not isinstance(backend, TeacherBackend):
            raise TypeError(f"PromptBackend: backend must be a TeacherBackend (e.g. get_backend('kb', world=DIR)), got "
                            f"{type(backend).__name__}")
        self.backend = backend
        self.model_name = backend.model_name
        self.batch_size = getattr(backend, "batch_size", 1) or 1
        template = get_prompt(prompt).template.strip()
        pattern = re.escape(template).replace(re.escape("{examples}"), ".*?").replace(re.escape("{query}"), "(.*)", 1)
        self._pattern = re.compile(pattern, re.DOTALL)
        self._n = 0

    def query_of(self, text: str) -> str:
        """The query inside a rendered prompt (the whole text when the template does not match)."""
        m = self._pattern.fullmatch(text.strip())
        return m.group(1) if m else text

    def complete(self, texts: list[str], params: GenerationParams) -> list[Generation]:
        """Each text's answer from the wrapped backend (its :class:`TeacherError` raised, failing the batch)."""
        from radcot.teacher._checks import check_texts

        texts = check_texts("PromptBackend.complete", "texts", texts)
        items = []
        for text in texts:
            self._n += 1
            items.append(TeachItem(Query(f"serve-{self._n}", self.query_of(text)), text))
        out = self.backend.generate(items, params)
        for g in out:
            if isinstance(g, TeacherError):
                raise g
        return out

    def close(self) -> None:
        self.backend.close()


__all__ = ["PromptBackend"]
