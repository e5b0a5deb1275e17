"""Named student presets: the settings of a known-good student in one place, for ``radcot train --preset``.

The ``demo`` preset is the student of ``pipelines/demo.yaml`` (its RADCoT row): the demo's tiny pointer T5
(a demo architecture, not the paper's flan-t5; see :mod:`radcot.demo`), its training schedule and its
decoding. It was chosen on a dev world and on held-out training queries, never on test queries
(``eval/demo-ablations.md``). ``tests/test_demo_preset.py`` checks that the pipeline file says the same.

Example:
    >>> p = get_preset("demo")
    >>> p.model.startswith("tiny-t5:") and p.train["max_steps"]
    1500
    >>> p.generate["no_repeat_ngram_size"]
    3
"""
from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any, Mapping

from radcot.records import RadcotError


@dataclasses.dataclass(frozen=True)
class StudentPreset:
    """A student's settings.

    Args:
        name: the preset's name (``radcot train --preset NAME``).
        model: the model (a builder spec such as ``tiny-t5:...``, a hub name or a directory).
        n_context: passages per query (build the distillation data with ``--k`` this).
        context_retriever: where its passages come from (``bm25``, ``dense`` or ``fused``; the index given to
            ``radcot build-data``/``generate``).
        train: :class:`~radcot.student.train.TrainConfig` fields (besides ``data``, ``model``, ``out``).
        generate: :func:`~radcot.student.generate.generate_cots` keyword arguments (decoding and batch size); its
            decoding fields are also recorded in the profile of a student trained with the preset
            (:meth:`train_fields`), so ``radcot serve``/``Expander`` answer as ``generate --preset`` evaluated.
        seed: the seed of the data split and of training (the pipeline's top-level ``seed``).
        about: one line for ``--help``.
    """

    name: str
    model: str
    n_context: int
    context_retriever: str
    train: Mapping[str, Any]
    generate: Mapping[str, Any]
    seed: int
    about: str

    def decoding(self) -> dict[str, Any]:
        """The :class:`~radcot.student.profile.Decoding` fields of :attr:`generate` (the preset's decoding)."""
        from radcot.student.profile import Decoding

        fields = {f.name for f in dataclasses.fields(Decoding)}
        return {k: v for k, v in self.generate.items() if k in fields}

    def train_fields(self) -> dict[str, Any]:
        """The TrainConfig fields this preset sets (``model``, ``n_context``, ``seed``, :attr:`train`, and
        ``decoding``: the decoding of :attr:`generate`, recorded in the trained student's profile)."""
        return {"model": self.model, "n_context": self.n_context, "seed": self.seed, **copy.deepcopy(dict(self.train)),
                "decoding": self.decoding()}


DEMO = StudentPreset(
    name="demo",
    model="tiny-t5:d_model=128,layers=2,heads=4,d_ff=512,vocab_size=4000,dropout=0,pointer=1,context_frequency=1",
    n_context=5,
    context_retriever="dense",
    train=types.MappingProxyType({
        "max_steps": 1500, "batch_size": 8, "lr": 3.0e-3, "weight_decay": 0.1, "clip": 1.0, "scheduler": "linear",
        "warmup_steps": 10, "eval_every": 500, "save_every": 500, "eval_max_new_tokens": 48,
        "eval_max_examples": 200, "eval_batch_size": 32, "text_maxlength": 64, "target_maxlength": 64,
        "template": "question: {query} context: {passage}", "augment": "copy", "augment_args": {"p": 0.5},
        "select_by": "retrieval"}),
    generate=types.MappingProxyType({"max_new_tokens": 64, "batch_size": 32, "no_repeat_ngram_size": 3}),
    seed=13,
    about="the demo's tiny pointer T5 from scratch (pipelines/demo.yaml's RADCoT row): 1,500 steps, copy "
          "augmentation, best checkpoint by nDCG@10 on held-out training queries",
)

#: preset name -> preset
PRESETS: Mapping[str, StudentPreset] = types.MappingProxyType({DEMO.name: DEMO})


def get_preset(name: str) -> StudentPreset:
    """The preset ``name``.

    Raises:
        RadcotError: no such preset (the message lists them).
    """
    if name not in PRESETS:
        raise RadcotError(f"unknown student preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
