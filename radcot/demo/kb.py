"""The demo world's knowledge-base teacher: a deterministic STAND-IN for an LLM that knows the world.

No LLM knows the invented entities of :mod:`radcot.demo.world`, and none runs offline at demo speed, so
the demo's teacher reads the world's facts (``kb.jsonl``) and writes a rationale and an answer in the
RADCoT output style (``Rationale: ... Answer: ...``, as the official text-davinci-003 CoTs). It matches a
query to a fact from the query *text* alone -- the entity named in it (longest name first) and the
relation asked for (keyword patterns) -- never from the query id, so it answers paraphrases too.

Its outputs are *not* LLM outputs: they are as good as a teacher that knows every fact can be (unless
``error_rate`` > 0 swaps some answers for wrong ones of the same type, deterministically). Treat numbers
obtained with it as an upper bound for what a knowledgeable teacher gives, and say so when reporting them.

Example:
    >>> from radcot.teacher import get_backend, teach
    >>> kb = get_backend("kb", world="data/demo")  # doctest: +SKIP
    >>> teach(kb, "data/demo/queries.test.tsv", "runs/kb-cots.jsonl")  # doctest: +SKIP
    >>> kb.answer("where was Velkor Danth born")  # doctest: +SKIP
    'Rationale: Velkor Danth is a glassblower employed by ... Answer: Velkor Danth was born in Orrim.'
"""
from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Any, Sequence

from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem

#: relation -> regex over the lower-cased query (tried in this order; the first match wins)
RELATION_PATTERNS: list[tuple[str, str]] = [
    ("born_in", r"\bborn\b|\bbirth"),
    ("employer", r"\bemploy|\bwork(s|ing)? for\b|\bcompany\b"),
    ("occupation", r"\bfor a living\b|\bjob\b|\bprofession|\boccupation|\bkind of work\b|\btrade\b"),
    ("mentor", r"\btaught\b|\bteacher\b|\binstruct|\btrain(ed)?\b|\bmentor"),
    ("river", r"\briver\b|\bflows?\b|\bruns? through\b"),
    ("town_founder", r"\bfound(ed|er)\b|\bstart(ed)?\b|\bestablish"),
    ("org_founder", r"\bfound(ed|er)\b|\bstart(ed)?\b|\bestablish"),
    ("headquarters", r"\bbased\b|\bheadquarter|\blocated\b|\blocation\b|\boffices?\b"),
    ("product", r"\bmake\b|\bmakes\b|\bproduc|\bsell\b|\bgoods\b"),
]

# Answer sentences per relation: (rationale sentence, answer sentence). {s}: subject's full name,
# {short}: short name, {o}: object name, {o_desc}: a description of the object from the KB.
_COT_TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "born_in": [("The records of {short}'s early life name {o}{o_desc} as {short}'s birthplace, so {short} is a "
                 "native of {o}.", "{s} was born in {o}."),
                ("{short} came into the world in {o}{o_desc}; {o} is {short}'s birthplace.", "{o}.")],
    "occupation": [("By trade, {short} is a {o}, and neighbours know {short} as a skilled {o}.",
                    "{s} works as a {o}."),
                   ("{short} makes a living from the craft of a {o}.", "{s} is a {o}.")],
    "employer": [("{short} is on the payroll of {o}{o_desc} and draws a salary from it; {o} hired {short} "
                  "years ago.", "{s} is employed by {o}."),
                 ("{short} belongs to the staff of {o}{o_desc}.", "{o}.")],
    "mentor": [("{short} apprenticed under {o}{o_desc} and learned the craft from {o_short}.",
                "{s} was taught by {o}."),
               ("{short} was the pupil of {o}{o_desc}, whose tutelage shaped {short}'s work.", "{o}.")],
    "river": [("{s} sits on the banks of the {o}; the waters of the {o} pass through {s}.",
               "The {o} flows through {s}."),
              ("Barges on the {o} pass the quays of {s}, which lies on the {o}.", "The {o}.")],
    "town_founder": [("{s} was laid out by {o}{o_desc}, who set down the first stones and raised the first houses "
                      "of {s}.", "{s} was founded by {o}."),
                     ("Settlers led by {o} cleared the ground where {s} stands.", "{o}.")],
    "org_founder": [("{o}{o_desc} set up {s}, which began as the private venture of {o_short}.",
                     "{s} was founded by {o}."),
                    ("The venture that became {s} was the idea of {o}{o_desc}.", "{o}.")],
    "headquarters": [("{s} keeps its main offices in {o}{o_desc}; its head office stands in {o}.",
                      "{s} is based in {o}."),
                     ("Letters to {s} go to its premises in {o}{o_desc}.", "{o}.")],
    "product": [("The workshops of {s} turn out {o}, and {s} is known across the province for its {o}.",
                 "{s} makes {o}."),
                ("Merchants come to {s} to buy {o}.", "{o}.")],
}

_UNKNOWN = ("Rationale: I could not find the entity or the fact this question asks about in the knowledge base. "
            "Answer: unknown.")


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class KBTeacher(TeacherBackend):
    """Answer queries about a synthetic world from its facts, in the RADCoT CoT style (a stand-in teacher).

    Args:
        world: the world directory (with ``kb.jsonl``) written by :func:`radcot.demo.world.make_world`.
        error_rate: fraction of answers replaced (deterministically, by a hash of the query) with a wrong
            object of the same type -- a knob for studying noisy teachers. 0 (default) = always right.
        describe: start the rationale with a sentence describing the entity (its occupation and employer,
            a town's river, a company's trade), as an LLM's rationale does.
        unknown: what to do with a query no fact matches: ``"say"`` answers "unknown" (default),
            ``"error"`` raises a :class:`TeacherError` for it (the runner records it as failed).

    Example:
        >>> t = KBTeacher("data/demo")  # doctest: +SKIP
        >>> t.match("who employs Velkor Danth")  # doctest: +SKIP
        ('P0001', 'employer')
    """

    name = "kb"
    batch_size = 256

    def __init__(self, world: str | os.PathLike, error_rate: float = 0.0, describe: bool = True,
                 unknown: str = "say"):
        from radcot.demo.world import KnowledgeBase, RELATIONS

        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        if unknown not in ("say", "error"):
            raise ValueError(f"unknown must be 'say' or 'error', got {unknown!r}")
        self.world = Path(world)
        self.kb = KnowledgeBase.load(self.world)
        self.error_rate, self.describe, self.unknown = error_rate, describe, unknown
        self.model = f"kb:{self.world.name}"
        self.relations = RELATIONS
        # entity names, longest first, matched on word boundaries (case-insensitive)
        names: list[tuple[str, str]] = []
        for e in self.kb.entities.values():
            names.append((e["name"].lower(), e["id"]))
            if e["type"] == "org" and e.get("short"):
                names.append((e["short"].lower(), e["id"]))
        names.sort(key=lambda t: (-len(t[0]), t[0], t[1]))
        self._names = names
        self._name_re = re.compile(r"\b(" + "|".join(re.escape(n) for n, _ in names) + r")\b") if names else None
        self._first_id = {}
        for n, eid in names:
            self._first_id.setdefault(n, eid)
        # relation -> sorted distinct (object id or "", object name): the pool wrong answers come from
        pools: dict[str, set[tuple[str, str]]] = {}
        for f in self.kb.facts:
            pools.setdefault(f["relation"], set()).add((f.get("object") or "", f["object_name"]))
        self._objects_by_relation = {rel: sorted(objs) for rel, objs in pools.items()}

    # ------------------------------------------------------------------------------------------ matching

    def match(self, query: str) -> tuple[str, str | None] | None:
        """The ``(entity_id, relation)`` a query asks about (relation None if not recognised), or None."""
        q = " ".join(query.lower().split())
        if self._name_re is None:
            return None
        m = self._name_re.search(q)
        if m is None:
            return None
        eid = self._first_id[m.group(1)]
        etype = self.kb.entities[eid]["type"]
        rest = q[: m.start()] + " " + q[m.end():]
        for rel, pattern in RELATION_PATTERNS:
            if self.relations.get(rel, ("",))[0] != etype:
                continue
            if re.search(pattern, rest) and self.kb.fact(eid, rel) is not None:
                return eid, rel
        return eid, None

    # ----------------------------------------------------------------------------------------- writing

    def _describe(self, eid: str, skip: str | None) -> str:
        e = self.kb.entities[eid]
        facts = {f["relation"]: f["object_name"] for f in self.kb.facts_of(eid)}
        if e["type"] == "person":
            bits = []
            if "occupation" in facts and skip != "occupation":
                bits.append(f"a {facts['occupation']}")
            if "employer" in facts and skip != "employer":
                bits.append(f"employed by {facts['employer']}")
            return f"{e['name']} is {' '.join(bits)}." if bits else ""
        if e["type"] == "town":
            return f"{e['name']} is a town on the {facts['river']}." if "river" in facts and skip != "river" else ""
        if e["type"] == "org":
            bits = []
            if "product" in facts and skip != "product":
                bits.append(f"a company that makes {facts['product']}")
            else:
                bits.append("a company")
            if "headquarters" in facts and skip != "headquarters":
                bits.append(f"based in {facts['headquarters']}")
            return f"{e['name']} is {' '.join(bits)}."
        return ""

    def _object_desc(self, object_id: str | None) -> str:
        if not object_id or object_id not in self.kb.entities:
            return ""
        o = self.kb.entities[object_id]
        facts = {f["relation"]: f["object_name"] for f in self.kb.facts_of(object_id)}
        if o["type"] == "town" and "river" in facts:
            return f" (a town on the {facts['river']})"
        if o["type"] == "person" and "occupation" in facts:
            return f" (a {facts['occupation']})"
        if o["type"] == "org" and "product" in facts:
            return f" (which makes {facts['product']})"
        return ""

    def answer(self, query: str) -> str | None:
        """The CoT for one query (``Rationale: ... Answer: ...``), or None when no entity matches."""
        m = self.match(query)
        if m is None:
            return None
        eid, rel = m
        e = self.kb.entities[eid]
        if rel is None:  # entity known, relation not recognised: summarise what is known
            parts = [self._describe(eid, None)]
            return f"Rationale: {' '.join(p for p in parts if p)} Answer: unknown.".replace("  ", " ")
        fact = self.kb.fact(eid, rel)
        obj_id, obj_name = fact.get("object"), fact["object_name"]
        h = _stable(query)
        if self.error_rate > 0 and (h % 10_000) / 10_000 < self.error_rate:
            pool = [o for o in self._objects_by_relation[rel] if o[1] != obj_name]
            if pool:
                obj_id, obj_name = pool[(h // 10_000) % len(pool)]
                obj_id = obj_id or None
        obj_short = self.kb.entities[obj_id]["short"] if obj_id in self.kb.entities else obj_name
        rationale, answer = _COT_TEMPLATES[rel][h % len(_COT_TEMPLATES[rel])]
        fill = {"s": e["name"], "short": e["short"], "o": obj_name, "o_short": obj_short,
                "o_desc": self._object_desc(obj_id)}
        intro = self._describe(eid, rel) if self.describe else ""
        text = " ".join(p for p in (intro, rationale.format(**fill)) if p)
        return f"Rationale: {text[0].upper() + text[1:]} Answer: {answer.format(**fill)}"

    def generate(self, items: Sequence[TeachItem], params: GenerationParams) -> list[Generation | TeacherError]:
        out: list[Generation | TeacherError] = []
        for item in items:
            text = self.answer(item.query.text)
            if text is None:
                if self.unknown == "error":
                    out.append(TeacherError(f"query {item.query.query_id!r} ({item.query.text!r}) names no entity "
                                            f"of the world {self.world}"))
                    continue
                text = _UNKNOWN
            # the KB teacher ignores max_tokens in tokens but honours it roughly in words
            words = text.split()
            finish = "stop"
            if len(words) > params.max_tokens:
                text, finish = " ".join(words[: params.max_tokens]), "length"
            out.append(Generation(text=text, finish_reason=finish, prompt_tokens=len(item.prompt.split()),
                                  completion_tokens=len(text.split())))
        return out

    def config(self) -> dict[str, Any]:
        from radcot.utils import sha256_file

        kb_file = self.world / "kb.jsonl" if self.world.is_dir() else self.world
        return {"world": str(self.world), "kb_sha256": sha256_file(kb_file), "error_rate": self.error_rate,
                "describe": self.describe, "unknown": self.unknown,
                "note": "stand-in for an LLM that knows the synthetic world; not an LLM"}


__all__ = ["KBTeacher", "RELATION_PATTERNS"]
