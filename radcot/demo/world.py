"""A deterministic synthetic "world" for the offline demo: fictional entities, facts, passages, queries.

No MS MARCO, LLM or pretrained T5 is reachable offline, so the demo needs a collection on which the
RADCoT claim can be checked honestly in minutes on 2 CPU cores. This module generates one from a seed:

- **Entities** with invented names built from syllables (so no model has seen them): people, towns,
  rivers and companies.
- **Typed facts**: a person's birthplace, occupation, employer and mentor; a town's river and founder;
  a company's founder, head office and product.
- **Passages** (``corpus.jsonl``): every fact is stated in one to three passages, worded *differently from
  how queries ask for it* -- a query asks "where was Velkor Danth born", the passage says "Danth's
  birthplace, the hamlet of Orrim, ..." (often with the surname only). Profile passages about the same
  person reuse the query's words ("born", "work", the full name) without stating the fact, and people
  share surnames, so plain BM25 ranks distractors first: the vocabulary mismatch a CoT has to bridge.
- **Queries** (``queries.jsonl``), one per held-out fact for the test split and one or two paraphrases
  per remaining fact for training, with **graded qrels**: 2 for a passage that states the fact about its
  subject, 1 for a passage that mentions it from the object's side (e.g. a town listing its natives).
- ``kb.jsonl``: the entities and facts (the knowledge base of :class:`radcot.demo.kb.KBTeacher`);
  ``MANIFEST.json``: seed, sizes and the SHA-256 of every file.

The same seed and sizes give byte-identical files (no clock, no set iteration, no hash randomisation).

Example:
    >>> from radcot.demo.world import make_world
    >>> manifest = make_world("/tmp/demo-world", seed=13, scale=0.1)  # doctest: +SKIP
    >>> manifest["sizes"]["passages"]  # doctest: +SKIP
    371
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

from radcot.records import RadcotError

logger = logging.getLogger(__name__)

#: bump when the generator's output changes for the same seed and sizes
WORLD_FORMAT_VERSION = 1

#: files of a world directory, in manifest order
WORLD_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv", "kb.jsonl",
               "queries.train.tsv", "queries.test.tsv")

# ------------------------------------------------------------------------------------------- vocabulary

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "sh",
           "st", "t", "th", "tr", "v", "z", "q", "y"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou", "y"]
_CODAS = ["", "n", "r", "l", "th", "s", "m", "rk", "nd", "x", "sk", "ll", "rn", "nt", "sh"]
_INNER_CODAS = ["", "", "", "l", "r", "n", "s"]

OCCUPATIONS = [
    "glassblower", "cartographer", "ferryman", "brewer", "tanner", "stonemason", "luthier", "apothecary",
    "bookbinder", "cooper", "weaver", "clockmaker", "shipwright", "chandler", "surveyor", "archivist",
    "beekeeper", "blacksmith", "potter", "miller", "saddler", "engraver", "dyer", "rope maker",
    "bellfounder", "lamplighter", "tinsmith", "shepherd", "vintner", "locksmith",
]

PRODUCTS = [
    "copper kettles", "hemp rope", "lamp oil", "clockwork toys", "woollen cloth", "glass beads", "oak barrels",
    "leather saddles", "rag paper", "bronze bells", "iron nails", "ink", "brass telescopes", "smoked cheese",
    "sea salt", "beeswax candles", "fishing nets", "tin lanterns", "wool blankets", "pewter plates",
    "linen sails", "cider", "roof slates", "carved chess sets", "pocket compasses",
]

ORG_SUFFIXES = ["Works", "Company", "Foundry", "Mills", "Trading House", "Guild", "Brothers", "Manufactory"]

#: relation -> (subject type, object type or "value")
RELATIONS: dict[str, tuple[str, str]] = {
    "born_in": ("person", "town"),
    "occupation": ("person", "value"),
    "employer": ("person", "org"),
    "mentor": ("person", "person"),
    "river": ("town", "river"),
    "town_founder": ("town", "person"),
    "org_founder": ("org", "person"),
    "headquarters": ("org", "town"),
    "product": ("org", "value"),
}

#: how queries ask (``{s}``: the subject's full name). Words here are kept out of the fact passages.
QUERY_TEMPLATES: dict[str, list[str]] = {
    "born_in": ["where was {s} born", "in which town was {s} born", "{s} place of birth",
                "what town was {s} born in"],
    "occupation": ["what does {s} do for a living", "what is the job of {s}", "{s} profession",
                   "what is {s}'s occupation"],
    "employer": ["who employs {s}", "which company does {s} work for", "{s} employer",
                 "who is {s}'s employer"],
    "mentor": ["who taught {s}", "who was the teacher of {s}", "who instructed {s}", "{s} teacher"],
    "river": ["what river flows through {s}", "which river runs through {s}", "{s} river",
              "what is the river of {s}"],
    "town_founder": ["who founded {s}", "who started the town of {s}", "founder of {s}",
                     "who established {s}"],
    "org_founder": ["who founded {s}", "who started {s}", "founder of {s}", "who established {s}"],
    "headquarters": ["where is {s} based", "where is {s} headquartered", "in which town is {s} located",
                     "{s} headquarters location"],
    "product": ["what does {s} make", "what does {s} produce", "what products does {s} sell",
                "{s} products"],
}

# Subject-side statements of a fact (grade 2). {s}: how the subject is referred to (often the surname
# only), {o}: the object, {o_short}: the object's short name.
FACT_TEMPLATES: dict[str, list[str]] = {
    "born_in": [
        "{s}'s birthplace, the hamlet of {o}, still keeps a small archive of the family's letters.",
        "{s} is a native of {o} and spent a childhood there among the orchards.",
        "{s} came into the world in {o}, in a house near the market square.",
        "The parish register of {o} records the arrival of the infant {s}.",
    ],
    "occupation": [
        "By trade {s} is a {o}, and the workshop is rarely quiet.",
        "{s} makes ends meet as a {o}, taking commissions from across the province.",
        "Neighbours know {s} as the local {o}.",
        "Ask anyone in the valley and they will name {s} as a {o} of some skill.",
    ],
    "employer": [
        "{s} draws a salary from {o}.",
        "{s} is on the payroll of {o} and has been for many seasons.",
        "{o} hired {s} some years ago, after a short trial.",
        "{s} belongs to the staff of {o}.",
    ],
    "mentor": [
        "{s} apprenticed under {o} for several years.",
        "{s} learned the craft from {o}, a demanding master.",
        "Everything {s} knows came from the tutelage of {o_short}.",
        "As a youngster {s} was the pupil of {o}.",
    ],
    "river": [
        "{s} sits on the banks of the {o}.",
        "The waters of the {o} divide {s} into an old and a new quarter.",
        "Barges on the {o} carry goods past the quays of {s}.",
        "Each spring the {o} swells and floods the lower streets of {s}.",
    ],
    "town_founder": [
        "{s} was laid out by {o}, whose plan of streets survives.",
        "The first houses of {s} were raised by {o_short} and a handful of settlers.",
        "{o} set down the first stones of {s}.",
        "Settlers led by {o} cleared the ground where {s} now stands.",
    ],
    "org_founder": [
        "{o} set up {s} in a rented barn.",
        "{s} began as the private venture of {o_short}.",
        "The venture that became {s} was the idea of {o}.",
        "{o} put the savings of a lifetime into opening {s}.",
    ],
    "headquarters": [
        "{s} keeps its main offices in {o}.",
        "The head office of {s} stands on the high street of {o}.",
        "Letters to {s} are addressed to its premises in {o}.",
        "The directors of {s} meet every month at their hall in {o}.",
    ],
    "product": [
        "The workshops of {s} turn out {o}.",
        "{s} is known across the province for its {o}.",
        "Carts leave {s} every morning loaded with {o}.",
        "Merchants come to {s} to buy {o} by the crate.",
    ],
}

# Object-side mentions (grade 1 for each fact listed): {o} the object, {subjects} the subjects.
MENTION_TEMPLATES: dict[str, str] = {
    "born_in": "Among the people raised in {o} are {subjects}.",
    "employer": "The staff of {o} includes {subjects}.",
    "mentor": "Over the years {o} took on {subjects} as pupils.",
    "river": "The {o} passes {subjects} on its way to the sea.",
    "town_founder": "{o} is remembered for laying out {subjects}.",
    "org_founder": "{o} also put money into {subjects}.",
    "headquarters": "Several firms have their offices in {o}, among them {subjects}.",
}

# Profile passages: about an entity, reusing query words, stating no asked fact (grade 0 distractors).
PROFILE_TEMPLATES: dict[str, list[str]] = {
    "person": [
        "{full} was born into a family of modest means. Friends who work alongside {full} describe a "
        "patient, careful person, fond of long walks.",
        "{full} was born in a hard winter, so the story goes. People who have worked with {full} say the "
        "teacher who mattered most was experience.",
        "Little is written about where {full} was born or who taught {first} to read; {full} rarely "
        "speaks of the past and prefers to talk about the work at hand.",
    ],
    "town": [
        "{name} is a quiet town of some {n} inhabitants, with a weekly market and a small chapel.",
        "Visitors to the town of {name} remark on its narrow lanes and its {n} chimneys.",
    ],
    "org": [
        "{name} is a company with a long history; its workers make the short walk from the square each "
        "morning.",
        "{name} employs about {n} people and sells its goods at the autumn fairs.",
    ],
    "river": [
        "The {name} is a slow river, rich in eels, about {n} miles long.",
    ],
}

FILLERS = [
    "The account comes from a chronicle compiled by a local clerk.",
    "Few outsiders ever hear of it.",
    "Visitors remark on the smell of woodsmoke.",
    "The old almanac mentions this only in passing.",
    "It is a detail the gazetteer also records.",
    "Not much else is remembered from that season.",
    "The same story is told in the neighbouring valleys.",
    "The harvest that year was poor.",
    "A faded ledger confirms it.",
    "The winters there are long and grey.",
]

TOWN_KINDS = ["the hamlet of {o}", "the village of {o}", "{o}", "the town of {o}"]


# ---------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Sizes of a synthetic world (``scale`` multiplies the entity counts).

    Args:
        seed: random seed; the same config gives byte-identical files.
        scale: multiplies ``n_people``, ``n_towns``, ``n_orgs`` and ``n_rivers``.
        n_people, n_towns, n_orgs, n_rivers: entity counts at scale 1.
        n_test: test queries (one per held-out fact); capped at a fifth of the facts.
        train_paraphrases: training queries per remaining fact (1 or more, distinct templates).
        surname_share: average number of people per surname (>1 makes surnames ambiguous).
    """

    seed: int = 13
    scale: float = 1.0
    n_people: int = 450
    n_towns: int = 100
    n_orgs: int = 65
    n_rivers: int = 30
    n_test: int = 200
    train_paraphrases: int = 1
    surname_share: float = 2.0

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        for name in ("n_people", "n_towns", "n_orgs", "n_rivers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_test < 0 or self.train_paraphrases < 1:
            raise ValueError("n_test must be >= 0 and train_paraphrases >= 1")
        if not 1.0 <= self.surname_share <= 10.0:
            raise ValueError(f"surname_share must be in [1, 10], got {self.surname_share}")

    def count(self, name: str) -> int:
        base = getattr(self, name)
        # n_people needs >= 3 (mentors), towns/orgs/rivers >= 2 (founders, distractors)
        return max(3 if name == "n_people" else 2, int(round(base * self.scale)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- generation


class _Names:
    """Unique invented names (no clash with the templates' words or with each other)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        words: set[str] = set()
        for group in (QUERY_TEMPLATES, FACT_TEMPLATES, PROFILE_TEMPLATES):
            for ts in group.values():
                for t in ts:
                    words.update(w.strip(".,;'{}").lower() for w in t.split())
        for t in MENTION_TEMPLATES.values():
            words.update(w.strip(".,;'{}").lower() for w in t.split())
        words.update(w.lower() for ws in (OCCUPATIONS, PRODUCTS, ORG_SUFFIXES, FILLERS) for p in ws for w in p.split())
        self.taken = words

    def make(self, syllables: tuple[int, int] = (2, 3)) -> str:
        for _ in range(1000):
            n = self.rng.randint(*syllables)
            parts = []
            for i in range(n):
                coda = self.rng.choice(_CODAS) if i == n - 1 else self.rng.choice(_INNER_CODAS)
                parts.append(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + coda)
            name = "".join(parts)
            if 4 <= len(name) <= 9 and name not in self.taken:
                self.taken.add(name)
                return name.capitalize()
        raise RadcotError("could not invent a unique name after 1000 tries (world too large for the syllables)")

    def many(self, n: int, syllables: tuple[int, int] = (2, 3)) -> list[str]:
        return [self.make(syllables) for _ in range(n)]


def _build(cfg: WorldConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    n_people, n_towns, n_orgs, n_rivers = (cfg.count(k) for k in ("n_people", "n_towns", "n_orgs", "n_rivers"))

    # --- entities ---------------------------------------------------------------------------------
    firsts = names.many(max(2, int(n_people / 2.5)))
    surnames = names.many(max(2, int(n_people / cfg.surname_share)), (1, 2))
    entities: list[dict] = []
    seen_full: set[str] = set()
    people = []
    while len(people) < n_people:
        first, last = rng.choice(firsts), rng.choice(surnames)
        full = f"{first} {last}"
        if full in seen_full:
            continue
        seen_full.add(full)
        people.append({"id": f"P{len(people) + 1:04d}", "type": "person", "name": full, "short": last, "first": first})
    towns = [{"id": f"T{i + 1:04d}", "type": "town", "name": n, "short": n} for i, n in enumerate(names.many(n_towns))]
    rivers = [{"id": f"R{i + 1:04d}", "type": "river", "name": n, "short": n} for i, n in enumerate(names.many(n_rivers))]
    orgs = []
    for i, base in enumerate(names.many(n_orgs)):
        orgs.append({"id": f"O{i + 1:04d}", "type": "org", "name": f"{base} {rng.choice(ORG_SUFFIXES)}", "short": base})
    entities = people + towns + rivers + orgs
    by_id = {e["id"]: e for e in entities}

    # --- facts --------------------------------------------------------------------------------------
    facts: list[dict] = []

    def add(rel: str, subj: dict, obj: dict | str) -> None:
        fact = {"fact_id": f"F{len(facts) + 1:05d}", "relation": rel, "subject": subj["id"]}
        if isinstance(obj, dict):
            fact.update(object=obj["id"], object_name=obj["name"])
        else:
            fact.update(object=None, object_name=obj)
        facts.append(fact)

    for p in people:
        add("born_in", p, rng.choice(towns))
        add("occupation", p, rng.choice(OCCUPATIONS))
        add("employer", p, rng.choice(orgs))
        add("mentor", p, rng.choice([q for q in people if q is not p]) if len(people) > 1 else p)
    for t in towns:
        add("river", t, rng.choice(rivers))
        add("town_founder", t, rng.choice(people))
    for o in orgs:
        add("org_founder", o, rng.choice(people))
        add("headquarters", o, rng.choice(towns))
        add("product", o, rng.choice(PRODUCTS))

    # --- passages -------------------------------------------------------------------------------------
    passages: list[dict] = []  # {"_id", "title", "text"}; "facts" (grade 2) and "mentions" (grade 1) kept aside
    grade2: dict[str, list[str]] = {f["fact_id"]: [] for f in facts}
    grade1: dict[str, list[str]] = {f["fact_id"]: [] for f in facts}

    def new_passage(text: str) -> str:
        if rng.random() < 0.6:
            k = rng.choice([1, 1, 2])
            text = " ".join([text] + rng.sample(FILLERS, k))
        pid = f"D{len(passages) + 1:05d}"
        passages.append({"_id": pid, "title": "", "text": text})
        return pid

    def subject_ref(e: dict) -> str:
        if e["type"] == "person":
            return e["name"] if rng.random() < 0.35 else e["short"]
        return e["name"] if e["type"] != "org" or rng.random() < 0.6 else e["short"]

    def object_ref(f: dict) -> tuple[str, str]:
        if f["object"] is None:
            return f["object_name"], f["object_name"]
        o = by_id[f["object"]]
        if o["type"] == "town":
            return rng.choice(TOWN_KINDS).format(o=o["name"]), o["name"]
        return o["name"], o["short"]

    for f in facts:
        subj = by_id[f["subject"]]
        n = rng.choices([1, 2, 3], weights=[3, 5, 2])[0]
        for template in rng.sample(FACT_TEMPLATES[f["relation"]], n):
            o, o_short = object_ref(f)
            text = template.format(s=subject_ref(subj), o=o, o_short=o_short)
            text = text[0].upper() + text[1:]
            grade2[f["fact_id"]].append(new_passage(text))

    occupation_of = {f["subject"]: f["object_name"] for f in facts if f["relation"] == "occupation"}
    # object-side mentions: group facts by (relation, object), list up to 4 subjects per passage
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in facts:
        if f["relation"] in MENTION_TEMPLATES and f["object"] is not None:
            groups.setdefault((f["relation"], f["object"]), []).append(f)
    for (rel, oid), fs in groups.items():
        if rng.random() < 0.25:
            continue  # not every object lists its subjects
        for i in range(0, len(fs), 4):
            chunk = fs[i:i + 4]
            refs = []
            for f in chunk:
                s = by_id[f["subject"]]
                if s["type"] == "person":
                    occ = occupation_of[s["id"]]
                    refs.append(f"the {occ} {s['short'] if rng.random() < 0.5 else s['name']}")
                else:
                    refs.append(s["name"])
            subjects = refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]
            text = MENTION_TEMPLATES[rel].format(o=by_id[oid]["name"], subjects=subjects)
            pid = new_passage(text[0].upper() + text[1:])
            for f in chunk:
                grade1[f["fact_id"]].append(pid)

    # profiles (distractors): one per entity
    for e in entities:
        t = rng.choice(PROFILE_TEMPLATES[e["type"]])
        new_passage(t.format(full=e["name"], first=e.get("first", e["name"]), name=e["name"],
                             n=rng.randint(12, 900)))

    # shuffle passage order (ids stay), so a fact's passages are not adjacent in the file
    order = list(range(len(passages)))
    rng.shuffle(order)
    passages = [passages[i] for i in order]

    # --- queries and qrels -------------------------------------------------------------------------
    fact_order = list(range(len(facts)))
    rng.shuffle(fact_order)
    n_test = min(cfg.n_test, len(facts) // 5)
    test_facts = sorted(fact_order[:n_test])
    train_facts = sorted(fact_order[n_test:])
    queries: list[dict] = []
    qrels: dict[str, list[tuple[str, str, int]]] = {"train": [], "test": []}

    def add_queries(fact_idx: list[int], split: str, per_fact: int) -> None:
        for i in fact_idx:
            f = facts[i]
            subj = by_id[f["subject"]]
            for template in rng.sample(QUERY_TEMPLATES[f["relation"]], min(per_fact, len(QUERY_TEMPLATES[f["relation"]]))):
                qid = f"{'test' if split == 'test' else 'q'}{len(queries) + 1:05d}"
                queries.append({"_id": qid, "text": template.format(s=subj["name"]),
                                "metadata": {"fact_id": f["fact_id"], "split": split}})
                f.setdefault("splits", [])
                if split not in f["splits"]:
                    f["splits"].append(split)
                for pid in grade2[f["fact_id"]]:
                    qrels[split].append((qid, pid, 2))
                for pid in grade1[f["fact_id"]]:
                    qrels[split].append((qid, pid, 1))

    add_queries(test_facts, "test", 1)
    add_queries(train_facts, "train", cfg.train_paraphrases)

    for f in facts:
        f["passages"] = grade2[f["fact_id"]]
        f["mentions"] = grade1[f["fact_id"]]
        f.setdefault("splits", [])
    return {"entities": entities, "facts": facts, "passages": passages, "queries": queries, "qrels": qrels}


def _jsonl(objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False, sort_keys=False) + "\n" for o in objs)


def make_world(out_dir: str | os.PathLike, seed: int = 13, scale: float = 1.0, overwrite: bool = True,
               **sizes: Any) -> dict[str, Any]:
    """Generate a synthetic world in BEIR layout, deterministically, and return its manifest.

    Writes ``corpus.jsonl``, ``queries.jsonl`` (all queries; ``metadata.split`` says train/test),
    ``qrels/train.tsv``, ``qrels/test.tsv`` (header ``query-id corpus-id score``; grades 2 and 1),
    ``queries.train.tsv`` / ``queries.test.tsv`` (``qid \\t text``), ``kb.jsonl`` (entities and facts) and
    ``MANIFEST.json`` (seed, config, sizes, SHA-256 per file). The directory is written atomically (a temp
    directory renamed into place).

    Args:
        out_dir: the world directory (replaced if it exists and ``overwrite``).
        seed: random seed.
        scale: multiplies the entity counts (0.1 gives a world small enough for unit tests).
        overwrite: replace an existing directory (else raise if it exists).
        **sizes: other :class:`WorldConfig` fields (``n_people``, ``n_test``, ``train_paraphrases``, ...).

    Returns:
        The manifest dict (also written to ``MANIFEST.json``).

    Example:
        >>> m = make_world("/tmp/w", seed=1, scale=0.1)  # doctest: +SKIP
        >>> sorted(m["files"])[:2]  # doctest: +SKIP
        ['corpus.jsonl', 'kb.jsonl']
    """
    from radcot.utils import atomic_dir, sha256_file

    cfg = WorldConfig(seed=seed, scale=scale, **sizes)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise RadcotError(f"{out_dir} exists; pass overwrite=True (--force) to replace it")
    world = _build(cfg)
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a data directory should be readable by all
        (tmp / "qrels").mkdir()
        files: dict[str, str] = {
            "corpus.jsonl": _jsonl(world["passages"]),
            "queries.jsonl": _jsonl(world["queries"]),
            "kb.jsonl": _jsonl([{"kind": "entity", **e} for e in world["entities"]]
                               + [{"kind": "fact", **f} for f in world["facts"]]),
        }
        for split in ("train", "test"):
            files[f"qrels/{split}.tsv"] = "query-id\tcorpus-id\tscore\n" + "".join(
                f"{q}\t{d}\t{r}\n" for q, d, r in world["qrels"][split])
            files[f"queries.{split}.tsv"] = "".join(
                f"{q['_id']}\t{q['text']}\n" for q in world["queries"] if q["metadata"]["split"] == split)
        for name, text in files.items():
            (tmp / name).write_bytes(text.encode("utf-8"))
        sizes_out = {
            "passages": len(world["passages"]),
            "entities": len(world["entities"]),
            "facts": len(world["facts"]),
            "queries_train": sum(q["metadata"]["split"] == "train" for q in world["queries"]),
            "queries_test": sum(q["metadata"]["split"] == "test" for q in world["queries"]),
            "qrels_train": len(world["qrels"]["train"]),
            "qrels_test": len(world["qrels"]["test"]),
        }
        manifest = {
            "generator": "radcot.demo.world.make_world",
            "format_version": WORLD_FORMAT_VERSION,
            "seed": seed,
            "config": cfg.to_dict(),
            "sizes": sizes_out,
            "files": {name: sha256_file(tmp / name) for name in WORLD_FILES},
            "note": ("Synthetic world of invented entities for the offline demo. Queries ask for facts in words "
                     "that differ from the passages stating them (vocabulary mismatch); qrels grade 2 = passage "
                     "stating the fact about its subject, 1 = passage mentioning it from the object's side."),
        }
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("world written to %s: %s", out_dir, sizes_out)
    return manifest


# --------------------------------------------------------------------------------------------- reading


@dataclasses.dataclass
class KnowledgeBase:
    """The entities and facts of a world (``kb.jsonl``), indexed for look-ups.

    Example:
        >>> kb = KnowledgeBase.load("data/demo")  # doctest: +SKIP
        >>> kb.facts_of(kb.entities["P0001"]["id"])[0]["relation"]  # doctest: +SKIP
        'born_in'
    """

    entities: dict[str, dict]
    facts: list[dict]

    @classmethod
    def load(cls, world: str | os.PathLike) -> "KnowledgeBase":
        """Read ``kb.jsonl`` of a world directory (or the file itself)."""
        from radcot.records import DataFormatError
        from radcot.utils import read_jsonl

        path = Path(world)
        if path.is_dir():
            path = path / "kb.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"knowledge base {path} not found: generate a world with "
                                    f"`radcot make-world --out {path.parent}`")
        entities: dict[str, dict] = {}
        facts: list[dict] = []
        for i, obj in enumerate(read_jsonl(path), 1):
            kind = obj.get("kind")
            if kind == "entity" and "id" in obj and "name" in obj:
                entities[obj["id"]] = obj
            elif kind == "fact" and "relation" in obj and "subject" in obj:
                facts.append(obj)
            else:
                raise DataFormatError(path, i, 'an entity ({"kind": "entity", "id", "name", ...}) or a fact '
                                      '({"kind": "fact", "relation", "subject", ...})', f"fields {sorted(obj)}")
        for f in facts:
            if f["subject"] not in entities:
                raise DataFormatError(path, None, "facts whose subject is a known entity",
                                      f"fact {f.get('fact_id')} with unknown subject {f['subject']!r}")
        kb = cls(entities, facts)
        kb._index()
        return kb

    def _index(self) -> None:
        self._by_subject: dict[str, list[dict]] = {}
        for f in self.facts:
            self._by_subject.setdefault(f["subject"], []).append(f)

    def facts_of(self, entity_id: str) -> list[dict]:
        """The facts whose subject is ``entity_id``, in file order."""
        if not hasattr(self, "_by_subject"):
            self._index()
        return self._by_subject.get(entity_id, [])

    def fact(self, entity_id: str, relation: str) -> dict | None:
        """The fact ``relation`` of ``entity_id`` (None if the entity has none)."""
        return next((f for f in self.facts_of(entity_id) if f["relation"] == relation), None)


__all__ = ["KnowledgeBase", "WorldConfig", "make_world", "RELATIONS", "QUERY_TEMPLATES", "FACT_TEMPLATES",
           "WORLD_FORMAT_VERSION"]
