"""Copy augmentation: teach a small student to copy names from its inputs instead of memorising them.

A student trained from scratch on a few thousand examples learns the teacher's *language* long before it
learns to *read*: it writes fluent CoTs about whichever names it saw most in training, whatever the query
(measured on the demo world: after 1,000 steps, 2.5% of its CoTs shared a name with the query). Copy
augmentation takes that shortcut away. For a share ``p`` of the training examples, every rare word that the
teacher's CoT shares with the example's own input (query or passages) is swapped, consistently in the
query, the passages and the target, for another rare word of the training data (of the same case). The
swapped names cannot be remembered, only copied; the rest of the CoT (words not in the input, frequent
words) is left as the teacher wrote it.

Rare: in at most ``max_df`` of the training targets and not a stopword. Names, places and trades are
rare; the teacher's template words ("Rationale", "Answer", "born", "employed") are not. The swap is
seeded per step and example, so a resumed run sees the same examples.

Example:
    >>> aug = CopyAugmenter(["Rationale: Ann was born in Oslo. Answer: Oslo."] * 3 + ["Bob lives in Rome."] * 97,
    ...                     p=1.0, max_df=0.05)
    >>> ex = {"query": "where was Bob born", "passages": [{"title": "", "text": "Bob was born in Rome."}],
    ...       "target": "Bob lives in Rome."}
    >>> out = aug(ex, seed="s")
    >>> out["target"] == ex["target"]  # Bob and Rome are in 97% of targets: frequent, kept
    True
"""
from __future__ import annotations

import collections
import random
import re
from typing import Any, Iterable, Mapping

from radcot.demo.answers import STOPWORDS

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text or ""))


def _passage_texts(example: Mapping[str, Any]) -> list[str]:
    return [f"{p.get('title') or ''} {p.get('text') or ''}" for p in example.get("passages") or []]


class CopyAugmenter:
    """Swap the rare words a target shares with its input, for a share ``p`` of the examples.

    Args:
        targets: the training targets (teacher CoTs); word document frequencies are counted on them.
        p: probability that an example is augmented (0 = never, 1 = always).
        max_df: a word is rare when it occurs in at most this share of the targets (and is no stopword).
    """

    def __init__(self, targets: Iterable[str], p: float = 0.5, max_df: float = 0.05):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"copy augmentation probability must be in [0, 1], got {p}")
        if not 0.0 < max_df <= 1.0:
            raise ValueError(f"copy augmentation max_df must be in (0, 1], got {max_df}")
        df: collections.Counter = collections.Counter()
        n = 0
        for t in targets:
            df.update(_words(t))
            n += 1
        self.p = p
        self.rare = frozenset(w for w, c in df.items() if n and c / n <= max_df and w.lower() not in STOPWORDS)
        self._pool = {upper: sorted(w for w in self.rare if w[:1].isupper() == upper) for upper in (True, False)}

    def __call__(self, example: Mapping[str, Any], seed: Any) -> dict:
        """``example`` (``query``, ``passages``, ``target``) with its shared rare words swapped, or unchanged."""
        rng = random.Random(str(seed))
        if self.p <= 0 or rng.random() >= self.p:
            return dict(example)
        texts = [str(example["query"])] + _passage_texts(example)
        seen = set().union(*(_words(t) for t in texts))
        shared = sorted(w for w in _words(str(example.get("target") or "")) & seen if w in self.rare)
        mapping = self._mapping(shared, seen | _words(str(example.get("target") or "")), rng)
        if not mapping:
            return dict(example)
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True))) + r")\b")

        def swap(text):
            return pattern.sub(lambda m: mapping[m.group(1)], text) if text else text

        out = dict(example, query=swap(str(example["query"])), target=swap(example.get("target")))
        out["passages"] = [dict(p, title=swap(p.get("title") or ""), text=swap(p.get("text") or ""))
                           for p in example.get("passages") or []]
        return out

    def _mapping(self, shared: list[str], taken: set[str], rng: random.Random) -> dict[str, str]:
        """An injective map from each shared word to an unused rare word of the same case."""
        mapping: dict[str, str] = {}
        used = set(taken)
        for w in shared:
            pool = self._pool[w[:1].isupper()]
            for _ in range(20):  # rejection sampling: pools are large, collisions rare
                cand = pool[rng.randrange(len(pool))] if pool else w
                if cand not in used:
                    mapping[w] = cand
                    used.add(cand)
                    break
        return mapping
