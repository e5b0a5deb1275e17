"""Named prompt templates for the teacher, and user templates from files.

Templates use ``{query}`` (replaced literally; other braces are left alone). ``query2doc`` takes
optional few-shot examples (``{examples}``) from a JSONL (``{"query", "passage"}``) or TSV
(``query \\t passage``) file.

Example:
    >>> from radcot.teacher.prompts import get_prompt
    >>> print(get_prompt("radcot").render("do goldfish grow"))
    Answer the following question "do goldfish grow".
    Give the rationale before answering.
    <BLANKLINE>
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from radcot.records import DataFormatError, RadcotError

#: The paper's teacher prompt (as in the official release; text-davinci-003, 150 tokens, temperature 0).
RADCOT_PROMPT = 'Answer the following question "{query}".\nGive the rationale before answering.\n'

#: query2doc (Wang et al., 2023): few-shot "write a passage that answers the given query".
QUERY2DOC_PROMPT = "Write a passage that answers the given query:\n\n{examples}Query: {query}\nPassage:"

#: A CoT that ends with search keywords (handy for short BM25 expansions).
COT_KEYWORDS_PROMPT = (
    'Answer the following question "{query}".\nGive the rationale before answering, '
    "then list the most important search keywords on a last line starting with \"Keywords:\".\n"
)

PROMPTS: dict[str, str] = {
    "radcot": RADCOT_PROMPT,
    "query2doc": QUERY2DOC_PROMPT,
    "cot-keywords": COT_KEYWORDS_PROMPT,
}


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A named template; :meth:`render` fills ``{query}`` (and ``{examples}``)."""

    name: str
    template: str
    examples_text: str = ""  # the rendered few-shot block (query2doc), recorded in the run config

    def __post_init__(self):
        for field in ("name", "template", "examples_text"):
            if not isinstance(getattr(self, field), str):
                raise TypeError(f"Prompt: {field} must be a string, got {type(getattr(self, field)).__name__}")
        if "{query}" not in self.template:
            raise RadcotError(
                f"prompt template {self.name!r} has no {{query}} placeholder: {self.template[:80]!r}. "
                "Put {query} where the query text goes"
            )

    def render(self, query: str) -> str:
        """The prompt for one query text."""
        if not isinstance(query, str):
            raise TypeError(f"Prompt.render: query must be the query text (a string), got {type(query).__name__}")
        return self.template.replace("{examples}", self.examples_text).replace("{query}", query)


def read_examples(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Few-shot examples: JSONL with ``query`` and ``passage`` (or ``text``), or TSV ``query \\t passage``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_examples: path must be a file path (str or pathlib.Path), got {type(path).__name__}")
    path = Path(path)
    out: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix.lower() in (".jsonl", ".json"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(path, i, "a JSON object per line", f"{line[:60]!r} ({e.msg})") from None
                passage = obj.get("passage", obj.get("text")) if isinstance(obj, dict) else None
                if not isinstance(obj, dict) or "query" not in obj or passage is None:
                    raise DataFormatError(path, i, 'fields "query" and "passage"', line[:80].strip())
                out.append((str(obj["query"]), str(passage)))
            else:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise DataFormatError(path, i, "2 tab-separated fields (query \\t passage)", f"{len(parts)} fields")
                out.append((parts[0], parts[1]))
    if not out:
        raise DataFormatError(path, None, "at least one few-shot example", "an empty file")
    return out


def get_prompt(
    prompt: "str | Prompt" = "radcot",
    file: str | os.PathLike | None = None,
    examples_file: str | os.PathLike | None = None,
    max_examples: int | None = None,
) -> Prompt:
    """Resolve a prompt: a name in :data:`PROMPTS`, a template string with ``{query}``, or a file.

    Args:
        prompt: template name or template text (ignored when ``file`` is given).
        file: a text file holding a template with ``{query}`` (its stem becomes the prompt name).
        examples_file: few-shot examples for ``{examples}`` (query2doc style).
        max_examples: use only the first N examples.

    Example:
        >>> get_prompt("query2doc").render("bm25").endswith("Query: bm25\\nPassage:")
        True
    """
    if not isinstance(prompt, (str, Prompt)):
        raise TypeError(f"get_prompt: prompt must be a name ({', '.join(sorted(PROMPTS))}), a template string with "
                        f"{{query}} or a Prompt, got {prompt!r} ({type(prompt).__name__})")
    for name, value in (("file", file), ("examples_file", examples_file)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"get_prompt: {name} must be a file path or None, got {type(value).__name__}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise TypeError(f"get_prompt: max_examples must be a positive integer or None, got {max_examples!r}")
    if isinstance(prompt, Prompt) and file is None and examples_file is None:
        return prompt
    if file is not None:
        name, template = f"file:{Path(file).name}", Path(file).read_text(encoding="utf-8")
    elif isinstance(prompt, Prompt):
        name, template = prompt.name, prompt.template
    elif prompt in PROMPTS:
        name, template = prompt, PROMPTS[prompt]
    elif "{query}" in prompt:
        name, template = "custom", prompt
    else:
        raise RadcotError(
            f"unknown prompt {prompt!r}: use one of {sorted(PROMPTS)}, a template containing {{query}}, "
            "or --prompt-file FILE"
        )
    examples = ""
    if examples_file is not None:
        if "{examples}" not in template:
            raise RadcotError(f"prompt {name!r} has no {{examples}} placeholder, so --examples-file cannot be used")
        pairs = read_examples(examples_file)[: max_examples or None]
        examples = "".join(f"Query: {q}\nPassage: {p}\n\n" for q, p in pairs)
    return Prompt(name, template, examples)
